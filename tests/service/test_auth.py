"""API keys: every /api/v1 route needs a live bearer key (401 otherwise); keys are stored as
hashes and managed with `flask keys create|list|revoke`; the OpenAPI document says so."""

from __future__ import annotations

import hashlib
import re

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient

from service.auth import create_api_key, revoke_api_key
from service.tables import ApiKey
from tests.service.helpers import assert_error, binary_dataset, keyed_client, new_key, post_dataset

# every /api/v1 route of the app, with a method it answers
API_ROUTES = [
    ("GET", "/api/v1/datasets"),
    ("POST", "/api/v1/datasets"),
    ("GET", "/api/v1/datasets/x"),
    ("GET", "/api/v1/datasets/x/data"),
    ("GET", "/api/v1/jobs"),
    ("POST", "/api/v1/jobs"),
    ("GET", "/api/v1/jobs/x"),
    ("POST", "/api/v1/jobs/x/cancel"),
    ("PATCH", "/api/v1/jobs/x"),
    ("GET", "/api/v1/jobs/x/events"),
    ("GET", "/api/v1/jobs/x/history"),
    ("GET", "/api/v1/webhooks"),
    ("POST", "/api/v1/webhooks"),
    ("GET", "/api/v1/webhooks/x"),
    ("DELETE", "/api/v1/webhooks/x"),
    ("GET", "/api/v1/webhooks/x/deliveries"),
    ("GET", "/api/v1/sweeps"),
    ("POST", "/api/v1/sweeps"),
    ("GET", "/api/v1/sweeps/x"),
    ("PATCH", "/api/v1/sweeps/x"),
    ("POST", "/api/v1/sweeps/x/cancel"),
    ("GET", "/api/v1/sweeps/x/events"),
    ("GET", "/api/v1/models"),
    ("GET", "/api/v1/models/x"),
    ("GET", "/api/v1/models/x/weights"),
    ("GET", "/api/v1/models/x/graph.svg"),
    ("POST", "/api/v1/models/x/predict"),
    ("GET", "/api/v1/models/x/bundle"),
    ("GET", "/api/v1/models/x/export"),
    ("POST", "/api/v1/models/x/evaluate"),
    ("POST", "/api/v1/models/x/predictions"),
    ("GET", "/api/v1/predictions/x/data"),
    ("GET", "/api/v1/spec/defaults"),
    ("POST", "/api/v1/uploads"),  # OPTIONS alone answers without a key (tus capabilities)
    ("GET", "/api/v1/uploads/x"),
    ("PATCH", "/api/v1/uploads/x"),
    ("DELETE", "/api/v1/uploads/x"),
    ("DELETE", "/api/v1/datasets/x"),
    ("PATCH", "/api/v1/datasets/x"),
    ("DELETE", "/api/v1/jobs/x"),
    ("DELETE", "/api/v1/models/x"),
    ("PATCH", "/api/v1/models/x"),
    ("DELETE", "/api/v1/sweeps/x"),
    ("GET", "/api/v1/usage"),
    ("GET", "/api/v1/keys"),
    ("POST", "/api/v1/keys"),
    ("DELETE", "/api/v1/keys/x"),
    ("POST", "/api/v1/keys/x/rotate"),
    ("GET", "/api/v1/audit"),
    ("GET", "/api/v1/registry"),
    ("GET", "/api/v1/registry/x"),
    ("POST", "/api/v1/registry/x/versions"),
    ("PUT", "/api/v1/registry/x/aliases/x"),
    ("DELETE", "/api/v1/registry/x/aliases/x"),
    ("GET", "/api/v1/nope"),  # unknown routes too: nothing below /api/v1 answers without a key
]


def assert_unauthorized(response: object) -> dict[str, str]:
    error = assert_error(response, 401)
    assert error["code"] == "unauthorized"
    assert response.headers["WWW-Authenticate"].startswith("Bearer")  # type: ignore[attr-defined]
    return error


def test_the_route_list_covers_the_app(app: Flask) -> None:
    rules = {
        re.sub(r"<[^>]+>", "x", r.rule)
        for r in app.url_map.iter_rules()
        if r.rule.startswith("/api/v1/") and not r.rule.startswith(("/api/v1/docs", "/api/v1/op"))
    }
    assert rules == {path for _, path in API_ROUTES if path != "/api/v1/nope"}


@pytest.mark.parametrize(("method", "path"), API_ROUTES)
def test_every_api_route_needs_a_key(anonymous: FlaskClient, method: str, path: str) -> None:
    error = assert_unauthorized(anonymous.open(path, method=method, json={}))
    assert "Bearer" in error["message"]


@pytest.mark.parametrize(
    "header",
    [
        "Bearer ty_not-a-key",
        "Bearer ",
        "Basic dXNlcjpwYXNz",
        "ty_only-the-key",
        "Bearer " + "x" * 5000,
    ],
)
def test_bad_keys_are_401(app: Flask, api_key: str, header: str) -> None:
    client = app.test_client()
    assert_unauthorized(client.get("/api/v1/datasets", headers={"Authorization": header}))


def test_a_key_of_another_scheme_or_case(app: Flask, api_key: str) -> None:
    client = app.test_client()
    r = client.get("/api/v1/datasets", headers={"Authorization": f"bearer {api_key}"})
    assert r.status_code == 200  # the scheme name is case-insensitive (RFC 9110)
    r = client.get("/api/v1/datasets", headers={"Authorization": f"Bearer {api_key.upper()}"})
    assert_unauthorized(r)


def test_revoked_key_is_401_and_other_keys_keep_working(app: Flask, client: FlaskClient) -> None:
    dataset_id = post_dataset(client)
    second = keyed_client(app, new_key(app, "alice"))
    with app.extensions["db_sessionmaker"]() as session:
        key_id = session.scalars(sa.select(ApiKey.id).where(ApiKey.owner == "alice")).first()
        revoke_api_key(session, key_id)
        session.commit()
    assert_unauthorized(client.get("/api/v1/datasets"))
    # the owner's data stays reachable with the owner's other key
    assert second.get(f"/api/v1/datasets/{dataset_id}").status_code == 200


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/api/v1/openapi.json", "/api/v1/docs"])
def test_public_routes_need_no_key(anonymous: FlaskClient, path: str) -> None:
    r = anonymous.get(path)
    assert r.status_code == 200, r.data[:300]


def test_docs_static_files_and_dashboard_shell_need_no_key(anonymous: FlaskClient) -> None:
    assert anonymous.get("/api/v1/docs/static/swagger-ui.css").status_code == 200
    r = anonymous.get("/")
    assert r.status_code != 401


def test_keys_are_stored_hashed(app: Flask) -> None:
    with app.extensions["db_sessionmaker"]() as session:
        key = create_api_key(session, "carol", "laptop")
        session.commit()
        row = session.scalars(sa.select(ApiKey).where(ApiKey.owner == "carol")).one()
    assert key.startswith("ty_") and len(key) >= 40
    assert row.key_hash == hashlib.sha256(key.encode()).hexdigest()
    assert row.prefix == key[:11] and row.name == "laptop" and row.revoked_at is None
    with app.extensions["db_engine"].connect() as conn:
        dump = " ".join(str(v) for r in conn.execute(sa.text("SELECT * FROM api_keys")) for v in r)
    assert key not in dump and key[11:] not in dump


def test_create_api_key_does_not_commit(app: Flask) -> None:
    with app.extensions["db_sessionmaker"]() as session:
        create_api_key(session, "dave")
        session.rollback()
        assert session.scalar(sa.select(sa.func.count()).where(ApiKey.owner == "dave")) == 0


def test_keys_cli_create_list_revoke(app: Flask) -> None:
    runner = app.test_cli_runner()
    created = runner.invoke(args=["keys", "create", "--owner", "erin", "--name", "laptop"])
    assert created.exit_code == 0, created.output
    key = created.stdout.strip().splitlines()[0]
    assert key.startswith("ty_")
    client = keyed_client(app, key)
    assert client.get("/api/v1/datasets").status_code == 200

    listed = runner.invoke(args=["keys", "list"])
    assert listed.exit_code == 0
    line = next(line for line in listed.output.splitlines() if "erin" in line)
    assert key[:11] in line and "laptop" in line and key not in listed.output
    assert line.rstrip().endswith("/ -")  # not revoked

    revoked = runner.invoke(args=["keys", "revoke", key[:11]])
    assert revoked.exit_code == 0, revoked.output
    assert_unauthorized(client.get("/api/v1/datasets"))
    listed = runner.invoke(args=["keys", "list", "--owner", "erin"])
    assert not listed.output.rstrip().endswith("/ -")

    missing = runner.invoke(args=["keys", "revoke", "ty_nosuchkey"])
    assert missing.exit_code != 0 and "no API key" in missing.output


def test_openapi_documents_the_bearer_scheme(anonymous: FlaskClient) -> None:
    spec = anonymous.get("/api/v1/openapi.json").get_json()
    assert spec["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    assert spec["security"] == [{"bearerAuth": []}]
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            if method == "parameters":
                continue
            if path.startswith("/api/v1/uploads") and method == "options":
                assert operation["security"] == []  # tus capabilities, for preflights too
            elif path.startswith("/api/v1"):
                assert "security" not in operation  # the global requirement applies
                assert {"401", "429"} <= set(operation["responses"])
            else:
                assert operation["security"] == []


def test_request_with_key_is_served(client: FlaskClient) -> None:
    r = client.post("/api/v1/datasets", json=binary_dataset())
    assert r.status_code == 201
