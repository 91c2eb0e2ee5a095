"""The audit log: every mutating request (successful or not) is one row, named by its route;
`GET /api/v1/audit` shows an owner its own rows only; nothing updates or deletes a row but the
retention sweep."""

from __future__ import annotations

import ast
import dataclasses
from datetime import timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from celery import Celery
from flask import Flask
from flask.testing import FlaskClient

from service import audit, audit_log
from service.celery import celery_config
from service.config import Settings
from service.db import utcnow
from service.tables import AuditEntry
from tests.service.helpers import assert_error, binary_dataset, post_dataset
from tests.service.test_uploads import CSV, create, patch, store_url  # noqa: F401
from tests.support import ROOT
from workers.maintenance import sweep


def entries(client: FlaskClient, **query: Any) -> list[dict[str, Any]]:
    r = client.get("/api/v1/audit", query_string=query)
    assert r.status_code == 200, r.get_json()
    return r.get_json()["items"]


def job_spec(dataset_id: str) -> dict[str, Any]:
    return {
        "dataset_id": dataset_id,
        "model": {"layers": [4, 1], "activation": "relu"},
        "training": {"loss": "binary_cross_entropy", "epochs": 1, "batch_size": 4},
    }


def test_mutating_requests_are_logged_with_their_outcome(client: FlaskClient, app: Flask) -> None:
    dataset_id = post_dataset(client)
    job = client.post(
        "/api/v1/jobs", json=job_spec(dataset_id), headers={"X-Request-Id": "req-42"}
    ).get_json()
    assert client.patch(f"/api/v1/jobs/{job['id']}", json={"name": "first"}).status_code == 200
    assert client.post(f"/api/v1/jobs/{job['id']}/cancel").status_code == 200
    assert client.post(f"/api/v1/jobs/{job['id']}/cancel").status_code == 409  # failed: logged
    assert client.post("/api/v1/datasets", json={"name": "x"}).status_code == 422
    client.get("/api/v1/jobs")  # reads are not logged
    got = entries(client)
    assert [(e["action"], e["status_code"]) for e in got] == [
        ("dataset.create", 422),
        ("job.cancel", 409),
        ("job.cancel", 200),
        ("job.update", 200),
        ("job.create", 202),
        ("dataset.create", 201),
    ]
    create_job = got[4]
    assert create_job["method"] == "POST" and create_job["route"] == "/api/v1/jobs"
    assert create_job["resource_ids"] == {"id": job["id"]}
    assert create_job["request_id"] == "req-42" and create_job["owner"] == "alice"
    assert got[5]["resource_ids"] == {"id": dataset_id}
    cancel = got[2]
    assert cancel["route"] == "/api/v1/jobs/<job_id>/cancel"
    assert cancel["resource_ids"] == {"job_id": job["id"]} and cancel["request_id"] is None
    with app.extensions["db_sessionmaker"]() as session:
        key_ids = set(session.scalars(sa.select(AuditEntry.key_id)))
    assert len(key_ids) == 1 and None not in key_ids
    assert got[0]["key_id"] in key_ids
    assert got[0]["at"] >= got[-1]["at"]


def test_predict_and_unauthenticated_requests_are_not_logged(
    client: FlaskClient, anonymous: FlaskClient
) -> None:
    assert anonymous.post("/api/v1/datasets", json=binary_dataset()).status_code == 401
    assert client.post(f"/api/v1/models/{'a' * 32}/predict", json={"features": [[1]]}).status_code
    assert client.post("/api/v1/nope").status_code == 404  # no route: nothing to name
    assert entries(client) == []


def test_owners_see_only_their_own_entries(client: FlaskClient, bob: FlaskClient) -> None:
    post_dataset(client)
    post_dataset(bob)
    post_dataset(bob)
    mine = entries(client)
    assert len(mine) == 1 and mine[0]["owner"] == "alice"
    assert {e["owner"] for e in entries(bob)} == {"bob"} and len(entries(bob)) == 2
    # another owner's key id filters to nothing
    assert entries(client, key_id=entries(bob)[0]["key_id"]) == []


def test_filters_and_pages(client: FlaskClient, app: Flask) -> None:
    dataset_id = post_dataset(client)
    for _ in range(3):
        client.post("/api/v1/jobs", json=job_spec(dataset_id))
    assert len(entries(client, action="job.create")) == 3
    assert len(entries(client, action="job")) == 3 and len(entries(client, action="job.*")) == 3
    assert [e["action"] for e in entries(client, action="dataset")] == ["dataset.create"]
    first = client.get("/api/v1/audit", query_string={"page_size": 3}).get_json()
    assert first["pagination"] == {"page": 1, "page_size": 3, "total": 4, "pages": 2}
    second = entries(client, page=2, page_size=3)
    assert [e["action"] for e in second] == ["dataset.create"]
    key_id = second[0]["key_id"]
    assert len(entries(client, key_id=key_id)) == 4
    # a time range: move the oldest entry a day back
    with app.extensions["db_sessionmaker"]() as session, session.begin():
        oldest = session.scalars(sa.select(AuditEntry).order_by(AuditEntry.id)).first()
        session.execute(
            sa.update(AuditEntry)
            .where(AuditEntry.id == oldest.id)
            .values(at=utcnow() - timedelta(days=1))
        )
    since = (utcnow() - timedelta(hours=1)).isoformat()
    assert [e["action"] for e in entries(client, since=since)] == ["job.create"] * 3
    assert [e["action"] for e in entries(client, until=since)] == ["dataset.create"]
    assert_error(client.get("/api/v1/audit?since=yesterday"), 422, "since")


def test_every_mutating_route_yields_an_action(app: Flask) -> None:
    """A new route is covered without editing a list: every mutating route of the url_map
    has a name `<resource>.<verb>`, and names differ between routes."""
    seen: dict[str, str] = {}
    mutating = 0
    for rule in app.url_map.iter_rules():
        for method in sorted(rule.methods or ()):
            if not audit.is_mutating(app, rule.endpoint, rule.rule, method):
                continue
            mutating += 1
            action = audit.action_for(app, rule.endpoint, method)
            resource, _, verb = action.rpartition(".")
            assert resource and verb and action == action.lower(), action
            assert seen.setdefault(action, f"{method} {rule.rule}") == f"{method} {rule.rule}"
    assert mutating >= 15
    assert {"dataset.create", "job.cancel", "job.update", "key.rotate", "webhook.delete"} <= set(
        seen
    )
    # predict and evaluate compute answers: neither logged nor refused to a read key; a batch
    # prediction is a job, and is; a model's delete and its expiry's PATCH change it
    assert {a for a in seen if a.startswith("model.")} == {
        "model.predict_dataset",
        "model.delete",
        "model.update",
    }
    assert {"dataset.delete", "job.delete", "sweep.delete", "dataset.update"} <= set(seen)


def test_a_failure_to_log_never_breaks_the_request(client: FlaskClient, app: Flask) -> None:
    with app.extensions["db_engine"].begin() as conn:
        conn.execute(sa.text("ALTER TABLE audit_log RENAME TO audit_log_away"))
    try:
        assert client.post("/api/v1/datasets", json=binary_dataset()).status_code == 201
    finally:
        with app.extensions["db_engine"].begin() as conn:
            conn.execute(sa.text("ALTER TABLE audit_log_away RENAME TO audit_log"))
    assert entries(client) == []


def test_a_resumable_upload_logs_creation_completion_and_termination_not_its_chunks(
    client: FlaskClient,
    store_url: str,  # noqa: F811
) -> None:
    location = create(client, len(CSV), name="colours", target="y", filename="c.csv")
    for start, end in [(0, 1000), (1000, 2000), (2000, len(CSV))]:
        assert patch(client, location, start, CSV[start:end]).status_code == 204
    other = create(client, 100, filename="c.csv")
    assert patch(client, other, 0, CSV[:10]).status_code == 204
    assert client.delete(other, headers={"Tus-Resumable": "1.0.0"}).status_code == 204
    upload_id = location.rsplit("/", 1)[1]
    assert [(e["action"], e["status_code"]) for e in entries(client)] == [
        ("upload.delete", 204),
        ("upload.create", 201),
        ("upload.complete", 204),
        ("upload.create", 201),
    ]
    assert entries(client, action="upload.complete")[0]["resource_ids"] == {"upload_id": upload_id}


def test_retention_sweep_deletes_old_entries_only_when_set(
    client: FlaskClient, app: Flask, tmp_path: Path
) -> None:
    post_dataset(client)
    post_dataset(client)
    with app.extensions["db_sessionmaker"]() as session, session.begin():
        first = session.scalars(sa.select(AuditEntry.id).order_by(AuditEntry.id)).first()
        session.execute(
            sa.update(AuditEntry)
            .where(AuditEntry.id == first)
            .values(at=utcnow() - timedelta(days=40))
        )
    assert Settings().audit_retention_days == 0  # off by default: kept forever
    with app.extensions["db_sessionmaker"]() as session, session.begin():
        assert audit_log.purge_expired(session, 0) == 0
    settings = dataclasses.replace(
        Settings(),
        database_url=app.config["DATABASE_URL"],
        store_url=(tmp_path / "store").as_uri(),
        audit_retention_days=30,
    )
    celery = Celery("t")
    broker = f"filesystem://{(tmp_path / 'sweep-broker').as_posix()}"
    celery.config_from_object(celery_config(dataclasses.replace(settings, broker_url=broker)))
    sweep(app.extensions["db_sessionmaker"], celery, settings)  # the workers' maintenance pass
    assert len(entries(client)) == 1


WRITES = ("update", "delete")


def test_the_audit_log_is_append_only() -> None:
    """No module updates an audit row; only `service.audit_log.purge_expired` (the retention
    sweep) deletes, and no route reaches it."""
    found = []
    for path in [*(ROOT / "service").rglob("*.py"), *(ROOT / "workers").rglob("*.py")]:
        tree = ast.parse(path.read_text(), filename=str(path))
        for fn in ast.walk(tree):
            if not isinstance(fn, ast.FunctionDef):
                continue
            for node in ast.walk(fn):
                if (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Attribute)
                    and node.func.attr in WRITES
                    and node.args
                    and isinstance(node.args[0], ast.Name)
                    and node.args[0].id == "AuditEntry"
                ):
                    found.append((str(path.relative_to(ROOT)), fn.name, node.func.attr))
    assert found == [("service/audit_log.py", "purge_expired", "delete")]
    api = "\n".join(p.read_text() for p in (ROOT / "service" / "api").rglob("*.py"))
    assert "purge_expired" not in api and "AuditEntry" not in api


def test_the_openapi_document_lists_the_audit_and_keys_routes(anonymous: FlaskClient) -> None:
    paths = anonymous.get("/api/v1/openapi.json").get_json()["paths"]
    assert {"/api/v1/audit", "/api/v1/keys", "/api/v1/keys/{key_id}/rotate"} <= set(paths)
    assert "action" in {p["name"] for p in paths["/api/v1/audit"]["get"]["parameters"]}
