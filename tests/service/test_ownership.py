"""Every dataset, job and model belongs to the owner of the key that made it: another owner gets
404 for it (whatever the route) and never sees it in a list."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient

from service.tables import Dataset, Job, TrainedModel
from tests.service.helpers import assert_error, binary_dataset, post_dataset
from tests.service.test_models import add_model

JOB = {"model": {"layers": [4, 1]}, "training": {"loss": "binary_cross_entropy", "epochs": 3}}


def owners(app: Flask, model: type) -> list[str]:
    with app.extensions["db_sessionmaker"]() as session:
        return sorted(session.scalars(sa.select(model.owner)))  # type: ignore[attr-defined]


def alice_data(app: Flask, client: FlaskClient) -> dict[str, Any]:
    dataset_id = post_dataset(client)
    r = client.post("/api/v1/jobs", json={"dataset_id": dataset_id, **JOB})
    assert r.status_code == 202, r.get_json()
    model_id, _, _ = add_model(app, [3, 1], "binary_cross_entropy", [0, 1])
    return {"dataset": dataset_id, "job": r.get_json()["id"], "model": model_id}


def test_rows_carry_the_owner_of_the_key(app: Flask, client: FlaskClient) -> None:
    alice_data(app, client)
    r = client.post("/api/v1/jobs", json={"dataset": binary_dataset(), **JOB})  # inline dataset
    assert r.status_code == 202
    assert set(owners(app, Dataset)) == {"alice"} and len(owners(app, Dataset)) == 3
    assert owners(app, Job) == ["alice"] * 3
    assert owners(app, TrainedModel) == ["alice"]


def test_another_owner_gets_404_everywhere(
    app: Flask, client: FlaskClient, bob: FlaskClient
) -> None:
    ids = alice_data(app, client)
    d, j, m = ids["dataset"], ids["job"], ids["model"]
    for method, path, body in [
        ("GET", f"/api/v1/datasets/{d}", None),
        ("GET", f"/api/v1/datasets/{d}/data", None),
        ("GET", f"/api/v1/jobs/{j}", None),
        ("POST", f"/api/v1/jobs/{j}/cancel", None),
        ("GET", f"/api/v1/models/{m}", None),
        ("GET", f"/api/v1/models/{m}/weights", None),
        ("GET", f"/api/v1/models/{m}/graph.svg", None),
        ("POST", f"/api/v1/models/{m}/predict", {"features": [[0.0, 1.0]]}),
    ]:
        r = bob.open(path, method=method, json=body)
        error = assert_error(r, 404)
        assert error["code"] == "not_found", (path, error)
        # the owner still reaches it
        assert client.open(path, method=method, json=body).status_code == 200, path


def test_another_owners_cancel_changes_nothing(
    app: Flask, client: FlaskClient, bob: FlaskClient
) -> None:
    dataset_id = post_dataset(client)
    job_id = client.post("/api/v1/jobs", json={"dataset_id": dataset_id, **JOB}).get_json()["id"]
    assert_error(bob.post(f"/api/v1/jobs/{job_id}/cancel"), 404)
    job = client.get(f"/api/v1/jobs/{job_id}").get_json()
    assert job["status"] == "queued" and job["cancel_requested"] is False


def test_another_owner_sees_empty_lists(app: Flask, client: FlaskClient, bob: FlaskClient) -> None:
    alice_data(app, client)
    for what in ("datasets", "jobs", "models", "jobs?status=queued"):
        mine = client.get(f"/api/v1/{what}").get_json()
        theirs = bob.get(f"/api/v1/{what}").get_json()
        assert mine["pagination"]["total"] >= 1 and mine["items"], what
        assert theirs == {
            "items": [],
            "pagination": {"page": 1, "page_size": 20, "total": 0, "pages": 0},
        }, what


def test_lists_hold_only_the_owners_rows(app: Flask, client: FlaskClient, bob: FlaskClient) -> None:
    alice_data(app, client)
    bobs = post_dataset(bob)
    bobs_job = bob.post("/api/v1/jobs", json={"dataset_id": bobs, **JOB}).get_json()["id"]
    assert [d["id"] for d in bob.get("/api/v1/datasets").get_json()["items"]] == [bobs]
    assert [j["id"] for j in bob.get("/api/v1/jobs").get_json()["items"]] == [bobs_job]
    alices = client.get("/api/v1/datasets").get_json()["items"]
    assert bobs not in {d["id"] for d in alices} and len(alices) == 2


def test_a_job_only_uses_its_owners_dataset(
    app: Flask, client: FlaskClient, bob: FlaskClient
) -> None:
    dataset_id = post_dataset(client)
    r = bob.post("/api/v1/jobs", json={"dataset_id": dataset_id, **JOB})
    error = assert_error(r, 404, "dataset_id")
    assert dataset_id in error["fields"]["dataset_id"]
    assert owners(app, Job) == []
