"""API keys' scope, expiry and last use, and `/api/v1/keys`: list, create, rotate, revoke."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import event

from service.auth import create_api_key
from service.db import utcnow
from service.tables import ApiKey
from tests.service.helpers import assert_error, binary_dataset, keyed_client, post_dataset

URL = "/api/v1/keys"


def make_key(app: Flask, owner: str = "alice", **kwargs: Any) -> str:
    with app.extensions["db_sessionmaker"]() as session:
        key = create_api_key(session, owner, "test", **kwargs)
        session.commit()
    return key


def key_row(app: Flask, key_id: str) -> ApiKey:
    with app.extensions["db_sessionmaker"]() as session:
        return session.get(ApiKey, key_id)


def test_a_read_key_reads_and_predicts_but_gets_403_on_mutations(
    app: Flask, client: FlaskClient
) -> None:
    dataset_id = post_dataset(client)
    reader = keyed_client(app, make_key(app, scope="read"))
    assert reader.get(f"/api/v1/datasets/{dataset_id}").status_code == 200
    # predict changes nothing: a 404 for a missing model, not a 403
    missing = f"/api/v1/models/{'a' * 32}/predict"
    assert reader.post(missing, json={"features": [[1, 2]]}).status_code == 404
    for method, path in [
        ("POST", "/api/v1/datasets"),
        ("PATCH", f"/api/v1/jobs/{'a' * 32}"),
        ("DELETE", f"/api/v1/webhooks/{'a' * 32}"),
        ("POST", URL),
    ]:
        error = assert_error(reader.open(path, method=method, json=binary_dataset()), 403)
        assert error["code"] == "forbidden" and "`read`" in error["message"]
        assert "`write`" in error["message"]
    # refusals are logged too
    actions = [e["action"] for e in client.get("/api/v1/audit").get_json()["items"]]
    assert actions[:4] == ["key.create", "webhook.delete", "job.update", "dataset.create"]


def test_existing_keys_are_write_keys(app: Flask, client: FlaskClient) -> None:
    keys = client.get(URL).get_json()["items"]
    assert [k["scope"] for k in keys] == ["write"]


def test_an_expired_key_is_a_401_saying_it_expired(app: Flask) -> None:
    soon = keyed_client(app, make_key(app, expires_at=utcnow() + timedelta(hours=1)))
    assert soon.get("/api/v1/datasets").status_code == 200
    expired = keyed_client(app, make_key(app, expires_at=utcnow() - timedelta(seconds=1)))
    error = assert_error(expired.get("/api/v1/datasets"), 401)
    assert "expired" in error["message"]


def count_key_updates(app: Flask) -> list[str]:
    seen: list[str] = []

    def listen(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if statement.lstrip().upper().startswith("UPDATE API_KEYS"):
            seen.append(statement)

    event.listen(app.extensions["db_engine"], "before_cursor_execute", listen)
    return seen


def test_last_used_at_is_written_at_most_once_a_minute(app: Flask, api_key: str) -> None:
    client = keyed_client(app, api_key)
    updates = count_key_updates(app)
    started = time.perf_counter()
    for _ in range(50):
        assert client.get("/api/v1/datasets").status_code == 200
    elapsed = time.perf_counter() - started
    assert len(updates) == 1  # the first request; the other 49 write nothing
    key = client.get(URL).get_json()["items"][0]
    used = datetime.fromisoformat(key["last_used_at"])
    assert abs((used - utcnow()).total_seconds()) < 60
    # a minute later, one more write
    with app.extensions["db_sessionmaker"]() as session, session.begin():
        session.execute(sa.update(ApiKey).values(last_used_at=utcnow() - timedelta(minutes=2)))
    updates.clear()
    for _ in range(5):
        client.get("/api/v1/datasets")
    assert len(updates) == 1
    assert elapsed / 50 < 0.25  # requests stay fast (measured: a few ms each)


def test_create_list_rotate_revoke(app: Flask, client: FlaskClient) -> None:
    created = client.post(URL, json={"name": "ci", "scope": "read"})
    assert created.status_code == 201, created.get_json()
    body = created.get_json()
    assert body["key"].startswith("ty_") and body["scope"] == "read" and body["name"] == "ci"
    assert body["prefix"] == body["key"][:11] and body["expires_at"] is None
    reader = keyed_client(app, body["key"])
    assert reader.get("/api/v1/datasets").status_code == 200

    listed = client.get(URL).get_json()
    assert listed["pagination"]["total"] == 2
    assert all("key" not in k and "key_hash" not in k for k in listed["items"])
    assert body["key"] not in str(listed)
    assert {k["id"] for k in listed["items"]} >= {body["id"]}

    rotated = client.post(f"{URL}/{body['id']}/rotate")
    assert rotated.status_code == 201
    new = rotated.get_json()
    assert new["id"] != body["id"] and new["name"] == "ci" and new["scope"] == "read"
    assert_error(reader.get("/api/v1/datasets"), 401)  # the old secret is revoked
    assert keyed_client(app, new["key"]).get("/api/v1/datasets").status_code == 200
    assert key_row(app, body["id"]).revoked_at is not None
    assert_error(client.post(f"{URL}/{body['id']}/rotate"), 409)
    expired = make_key(app, expires_at=utcnow() - timedelta(seconds=1))
    expired_id = next(
        k["id"] for k in client.get(URL).get_json()["items"] if k["prefix"] == expired[:11]
    )
    assert "expired" in assert_error(client.post(f"{URL}/{expired_id}/rotate"), 409)["message"]

    assert client.delete(f"{URL}/{new['id']}").status_code == 204
    first_revoked = key_row(app, new["id"]).revoked_at
    assert client.delete(f"{URL}/{new['id']}").status_code == 204  # idempotent
    assert key_row(app, new["id"]).revoked_at == first_revoked
    assert_error(keyed_client(app, new["key"]).get("/api/v1/datasets"), 401)
    actions = [e["action"] for e in client.get("/api/v1/audit").get_json()["items"]]
    assert actions == [
        "key.revoke", "key.revoke", "key.rotate", "key.rotate", "key.rotate", "key.create",
    ]  # fmt: skip


def test_other_owners_keys_are_404(client: FlaskClient, bob: FlaskClient) -> None:
    bobs = bob.get(URL).get_json()["items"][0]["id"]
    assert_error(client.delete(f"{URL}/{bobs}"), 404)
    assert_error(client.post(f"{URL}/{bobs}/rotate"), 404)
    assert_error(client.delete(f"{URL}/not-an-id"), 404)
    assert bobs not in {k["id"] for k in client.get(URL).get_json()["items"]}


def test_a_key_never_makes_a_key_with_more_than_it_has(app: Flask) -> None:
    limit = utcnow() + timedelta(days=1)
    client = keyed_client(app, make_key(app, expires_at=limit))
    inherited = client.post(URL, json={}).get_json()
    assert datetime.fromisoformat(inherited["expires_at"]) == limit
    later = (limit + timedelta(days=1)).isoformat()
    assert_error(client.post(URL, json={"expires_at": later}), 422, "expires_at")
    past = (utcnow() - timedelta(days=1)).isoformat()
    assert_error(client.post(URL, json={"expires_at": past}), 422, "expires_at")
    assert_error(client.post(URL, json={"scope": "admin"}), 422, "scope")
    reader = keyed_client(app, make_key(app, scope="read"))
    assert_error(reader.post(URL, json={"scope": "read"}), 403)


def test_keys_made_or_rotated_from_a_key_keep_its_quotas(app: Flask) -> None:
    """A key with its own quotas cannot make itself a way around them: a key it creates, and
    its rotated successor, carry the same quotas."""
    client = keyed_client(app, make_key(app, quota_bytes=10_000, max_active_jobs=2))
    made = client.post(URL, json={"name": "child"}).get_json()
    row = key_row(app, made["id"])
    assert (row.quota_bytes, row.max_active_jobs) == (10_000, 2)
    rotated = client.post(f"{URL}/{made['id']}/rotate").get_json()
    row = key_row(app, rotated["id"])
    assert (row.quota_bytes, row.max_active_jobs) == (10_000, 2)


def test_cli_create_with_scope_and_expiry(app: Flask) -> None:
    runner = app.test_cli_runner()
    made = runner.invoke(
        args=["keys", "create", "--owner", "fay", "--scope", "read", "--expires", "30d"]
    )
    assert made.exit_code == 0, made.output
    key = made.stdout.strip().splitlines()[0]
    with app.extensions["db_sessionmaker"]() as session:
        row = session.scalars(sa.select(ApiKey).where(ApiKey.owner == "fay")).one()
    expires = row.expires_at if row.expires_at.tzinfo else row.expires_at.replace(tzinfo=UTC)
    assert row.scope == "read" and timedelta(days=29) < expires - utcnow() <= timedelta(days=30)
    assert_error(keyed_client(app, key).post("/api/v1/datasets", json=binary_dataset()), 403)
    dated = runner.invoke(args=["keys", "create", "--owner", "fay", "--expires", "2030-01-01"])
    assert dated.exit_code == 0
    bad = runner.invoke(args=["keys", "create", "--owner", "fay", "--expires", "soon"])
    assert bad.exit_code != 0 and "--expires" in bad.output
    listed = runner.invoke(args=["keys", "list", "--owner", "fay"])
    assert " read " in listed.output and " write " in listed.output
