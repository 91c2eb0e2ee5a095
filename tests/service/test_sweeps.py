"""POST/GET /api/v1/sweeps, cancel, PATCH, and the job list's new filters, on SQLite and
PostgreSQL: expansion (grid, random), validation of every trial before anything is stored,
max_parallel and the owner's caps at submit, best selection, ownership."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient

from service.config import Limits
from service.sweeps import is_spec_path
from service.tables import Job, Sweep
from tests.service.helpers import assert_error, binary_dataset, count_rows, post_dataset

URL = "/api/v1/sweeps"
BASE = {
    "model": {"layers": [4, 1], "activation": "tanh"},
    "training": {"loss": "binary_cross_entropy", "epochs": 5, "validation_split": 0.25},
}
GRID = {
    "training.learning_rate": {"values": [0.003, 0.01, 0.03]},
    "model.layers": {"values": [[8, 1], [4, 4, 1]]},
}


def sweep_body(dataset_id: str, **extra: Any) -> dict[str, Any]:
    return {"dataset_id": dataset_id, "base": BASE, "parameters": GRID, **extra}


@pytest.fixture
def dataset_id(client: FlaskClient) -> str:
    return post_dataset(client, binary_dataset(40))


def rows(app: Flask, sweep_id: str) -> list[Job]:
    with app.extensions["db_sessionmaker"]() as session:
        return list(
            session.scalars(
                sa.select(Job).where(Job.sweep_id == sweep_id).order_by(Job.trial_index)
            )
        )


def test_a_grid_is_stored_as_held_trials_and_max_parallel_are_queued(
    app: Flask, client: FlaskClient, dataset_id: str, queued_messages: Callable[[], int]
) -> None:
    body = sweep_body(dataset_id, name="width and lr", tags={"project": "x"}, max_parallel=2)
    # as sent (the test client's `json=` would sort the keys): the grid follows their order
    r = client.post(URL, data=json.dumps(body), content_type="application/json")
    assert r.status_code == 202, r.get_json()
    sweep = r.get_json()
    assert r.headers["Location"] == f"{URL}/{sweep['id']}"
    assert sweep["status"] == "queued" and sweep["name"] == "width and lr"
    assert sweep["tags"] == {"project": "x"}
    assert sweep["method"] == "grid" and sweep["max_parallel"] == 2
    assert sweep["metric"] == {"name": "val_loss", "goal": "minimize"}
    assert sweep["progress"] == {
        "trials": 6, "queued": 6, "running": 0, "succeeded": 0, "failed": 0, "cancelled": 0,
    }  # fmt: skip
    assert sweep["best"] is None and sweep["finished_at"] is None
    # the last parameter varies fastest; every trial is a job with its values
    assert [t["params"] for t in sweep["trials"]] == [
        {"training.learning_rate": lr, "model.layers": layers}
        for lr in (0.003, 0.01, 0.03)
        for layers in ([8, 1], [4, 4, 1])
    ]
    assert [t["index"] for t in sweep["trials"]] == list(range(6))
    # only max_parallel trials were published; the rest wait held in the store
    assert queued_messages() == 2
    stored = rows(app, sweep["id"])
    assert [j.held for j in stored] == [False, False, True, True, True, True]
    assert all(j.published_at is not None for j in stored[:2])
    assert all(j.published_at is None for j in stored[2:])
    jobs = client.get(f"/api/v1/jobs?sweep_id={sweep['id']}&page_size=100").get_json()
    assert [j["id"] for j in jobs["items"]] == [t["job_id"] for t in sweep["trials"]]
    first = jobs["items"][1]
    assert first["sweep_id"] == sweep["id"] and first["tags"] == {"project": "x"}
    assert first["params"] == {"training.learning_rate": 0.003, "model.layers": [4, 4, 1]}
    assert first["training"]["learning_rate"] == 0.003
    assert first["model"]["layers"] == [4, 4, 1]
    assert first["training"]["validation_split"] == 0.25
    assert client.get(r.headers["Location"]).get_json() == sweep


def test_default_max_parallel_queues_every_trial(
    client: FlaskClient, dataset_id: str, queued_messages: Callable[[], int]
) -> None:
    r = client.post(URL, json=sweep_body(dataset_id, max_trials=4))
    assert r.status_code == 202, r.get_json()
    assert r.get_json()["progress"]["trials"] == 4  # max_trials caps a grid
    assert queued_messages() == 4


@pytest.mark.app_config({"LIMITS": Limits(max_active_jobs=3)})
def test_trials_count_against_the_active_jobs_cap(
    client: FlaskClient, dataset_id: str, queued_messages: Callable[[], int]
) -> None:
    r = client.post(URL, json=sweep_body(dataset_id))
    assert r.status_code == 202, r.get_json()
    assert queued_messages() == 3  # the other 3 wait until some end
    error = assert_error(client.post(URL, json=sweep_body(dataset_id)), 429)
    assert error["code"] == "too_many_active_jobs"


def test_random_draws_are_seeded(client: FlaskClient, dataset_id: str) -> None:
    parameters = {
        "training.learning_rate": {"min": 1e-4, "max": 1e-1, "log": True},
        "training.batch_size": {"min": 2, "max": 9, "int": True},
        "training.momentum": {"min": 0.0, "max": 0.9},
        "model.activation": {"values": ["tanh", "relu"]},
    }
    body = sweep_body(dataset_id, method="random", parameters=parameters, max_trials=12, seed=7)
    first = client.post(URL, json=body).get_json()
    second = client.post(URL, json=body).get_json()
    draws = [t["params"] for t in first["trials"]]
    assert draws == [t["params"] for t in second["trials"]] and len(draws) == 12
    assert first["seed"] == 7
    for p in draws:
        assert 1e-4 <= p["training.learning_rate"] <= 1e-1
        assert isinstance(p["training.batch_size"], int) and 2 <= p["training.batch_size"] <= 9
        assert 0.0 <= p["training.momentum"] <= 0.9
        assert p["model.activation"] in ("tanh", "relu")
    logs = [math.log10(p["training.learning_rate"]) for p in draws]
    assert min(logs) < -2.5 and max(logs) > -2.5  # spread over the decades
    unseeded = client.post(URL, json={**body, "seed": None}).get_json()
    assert isinstance(unseeded["seed"], int)


def test_spec_paths() -> None:
    for path in (
        "model.layers",
        "model.activation",
        "training.learning_rate",
        "training.early_stopping.patience",
        "training.preprocessing.numeric",
        "training.lr_schedule",
    ):
        assert is_spec_path(path), path
    for path in ("model", "training.lr", "model.layers.0", "dataset_id", "training.epochs.x"):
        assert not is_spec_path(path), path


BAD = [
    ({"parameters": {"training.lr": {"values": [1]}}}, "parameters.training.lr"),
    ({"parameters": {"model.layers.0": {"values": [1]}}}, "parameters.model.layers.0"),
    ({"parameters": {}}, "parameters"),
    ({"parameters": {"training.seed": [1, 2]}}, "parameters.training.seed"),
    ({"parameters": {"training.seed": {"values": []}}}, "parameters.training.seed.values"),
    # a value POST /jobs refuses, in one trial: nothing is stored
    (
        {"parameters": {"training.learning_rate": {"values": [0.1, -1.0]}}},
        "parameters.training.learning_rate",
    ),
    (
        {"parameters": {"model.activation": {"values": ["tanh", "gelu"]}}},
        "parameters.model.activation",
    ),
    # a spec that does not fit the dataset (binary_cross_entropy with 3 outputs)
    ({"parameters": {"model.layers": {"values": [[4, 1], [4, 3]]}}}, "parameters.model.layers"),
    ({"base": {**BASE, "training": {**BASE["training"], "epochs": 0}}}, "base.training.epochs"),
    ({"base": {**BASE, "dataset_id": "x"}}, "base.dataset_id"),
    (
        {"base": {"training": BASE["training"]},
         "parameters": {"training.learning_rate": {"values": [0.1]}}},
        "base.model",
    ),
    (
        {"parameters": {f"training.{k}": {"values": list(range(1, 12))} for k in ("seed", "epochs")}
         | {"training.batch_size": {"values": list(range(1, 12))}}},
        "parameters",
    ),  # 1331 trials
    ({"method": "random", "parameters": {"training.seed": {"values": [1]}}}, "max_trials"),
    ({"method": "random", "max_trials": 1001}, "max_trials"),
    ({"parameters": {"training.momentum": {"min": 0, "max": 0.5}}}, "parameters.training.momentum"),
    (
        {"method": "random", "max_trials": 2,
         "parameters": {"training.learning_rate": {"min": 0, "max": 1, "log": True}}},
        "parameters.training.learning_rate.min",
    ),
    ({"metric": {"name": "val_f1"}}, "metric.name"),
    ({"metric": {"name": "test.accuracy"}}, "metric.name"),  # no test split
    ({"metric": {"name": "validation.r2"}}, "metric.name"),  # a classifier reports no r2
    ({"metric": {"name": "val_loss", "goal": "up"}}, "metric.goal"),
    ({"max_parallel": 0}, "max_parallel"),
    ({"early_termination": {"type": "hyperband"}}, "early_termination.type"),
    ({"tags": {"a:b": "c"}}, "tags"),
]  # fmt: skip


@pytest.mark.parametrize(("change", "field"), BAD)
def test_bad_sweeps_are_422_naming_the_field(
    app: Flask,
    client: FlaskClient,
    dataset_id: str,
    queued_messages: Callable[[], int],
    change: dict[str, Any],
    field: str,
) -> None:
    before = count_rows(app, Job)
    error = assert_error(client.post(URL, json={**sweep_body(dataset_id), **change}), 422)
    assert any(f == field or f.startswith(field + ".") for f in error["fields"]), error
    assert count_rows(app, Job) == before and count_rows(app, Sweep) == 0
    assert queued_messages() == 0


def test_a_bad_trial_is_named_in_the_message(client: FlaskClient, dataset_id: str) -> None:
    change = {"parameters": {"training.learning_rate": {"values": [0.1, -1.0]}}}
    error = assert_error(client.post(URL, json={**sweep_body(dataset_id), **change}), 422)
    text = error["fields"]["parameters.training.learning_rate"]
    assert "trial 2 of 2" in text and "-1.0" in text


def test_missing_dataset_is_404(client: FlaskClient, bob: FlaskClient, dataset_id: str) -> None:
    assert_error(bob.post(URL, json=sweep_body(dataset_id)), 404, "dataset_id")
    assert_error(client.post(URL, json=sweep_body("0" * 32)), 404, "dataset_id")


def test_metrics_from_the_evaluation(client: FlaskClient, dataset_id: str) -> None:
    base = {**BASE, "training": {**BASE["training"], "test_split": 0.25}}
    for name, goal in (
        ("validation.accuracy", "maximize"),
        ("test.accuracy", "maximize"),
        ("test.f1.macro", "maximize"),
        ("val_accuracy", "maximize"),
        ("loss", "minimize"),
        ("test.log_loss", "minimize"),
    ):
        body = sweep_body(dataset_id, base=base, metric={"name": name}, max_trials=1)
        r = client.post(URL, json=body)
        assert r.status_code == 202, r.get_json()
        assert r.get_json()["metric"] == {"name": name, "goal": goal}
    no_split = {**BASE, "training": {"loss": "binary_cross_entropy", "epochs": 3}}
    r = client.post(URL, json=sweep_body(dataset_id, base=no_split, max_trials=1))
    assert r.get_json()["metric"] == {"name": "loss", "goal": "minimize"}
    r = client.post(
        URL, json=sweep_body(dataset_id, metric={"name": "loss", "goal": "maximize"}, max_trials=1)
    )
    assert r.get_json()["metric"] == {"name": "loss", "goal": "maximize"}


def test_best_through_the_api(app: Flask, client: FlaskClient, dataset_id: str) -> None:
    """Trials finished by hand (as the worker would): `best` follows their metrics."""
    sweep = client.post(URL, json=sweep_body(dataset_id, max_trials=3)).get_json()
    ids = [t["job_id"] for t in sweep["trials"]]
    values = {ids[0]: ("succeeded", 0.4), ids[1]: ("failed", None), ids[2]: ("succeeded", 0.3)}
    with app.extensions["db_sessionmaker"]() as session:
        for job_id, (status, value) in values.items():
            metrics = {"loss": 0.1, "val_loss": value} if value is not None else None
            session.execute(
                sa.update(Job).where(Job.id == job_id).values(status=status, metrics=metrics)
            )
        session.commit()
    got = client.get(f"{URL}/{sweep['id']}").get_json()
    assert got["best"] == {
        "job_id": ids[2], "model_id": None, "params": got["trials"][2]["params"],
        "metric_value": 0.3,
    }  # fmt: skip
    assert [t["metric_value"] for t in got["trials"]] == [0.4, None, 0.3]
    assert got["progress"]["succeeded"] == 2 and got["progress"]["failed"] == 1
    listed = client.get(URL).get_json()["items"][0]
    assert listed["best"] == got["best"] and "trials" not in listed


def test_cancel_a_queued_sweep(
    app: Flask, client: FlaskClient, bob: FlaskClient, dataset_id: str
) -> None:
    sweep = client.post(URL, json=sweep_body(dataset_id, max_parallel=2)).get_json()
    assert_error(bob.post(f"{URL}/{sweep['id']}/cancel"), 404)
    r = client.post(f"{URL}/{sweep['id']}/cancel")
    assert r.status_code == 200, r.get_json()
    got = r.get_json()
    assert got["status"] == "cancelled" and got["cancel_requested"] is True
    assert got["finished_at"] is not None
    assert got["progress"]["cancelled"] == 6
    assert all(j.status == "cancelled" for j in rows(app, sweep["id"]))
    assert_error(client.post(f"{URL}/{sweep['id']}/cancel"), 409)
    assert_error(client.post(f"{URL}/{'0' * 32}/cancel"), 404)
    assert_error(client.post(f"{URL}/nope/cancel"), 404)


def test_cancel_a_running_sweep_flags_its_running_trials(
    app: Flask, client: FlaskClient, dataset_id: str
) -> None:
    sweep = client.post(URL, json=sweep_body(dataset_id, max_parallel=2)).get_json()
    running = sweep["trials"][0]["job_id"]
    with app.extensions["db_sessionmaker"]() as session:
        session.execute(sa.update(Job).where(Job.id == running).values(status="running"))
        session.execute(sa.update(Sweep).where(Sweep.id == sweep["id"]).values(status="running"))
        session.commit()
    got = client.post(f"{URL}/{sweep['id']}/cancel").get_json()
    # it stays running until its running trial stops (the worker sees the flag)
    assert got["status"] == "running" and got["cancel_requested"] is True
    assert got["progress"]["running"] == 1 and got["progress"]["cancelled"] == 5
    job = client.get(f"/api/v1/jobs/{running}").get_json()
    assert job["status"] == "running" and job["cancel_requested"] is True


def test_owners_do_not_see_each_others_sweeps(
    client: FlaskClient, bob: FlaskClient, dataset_id: str
) -> None:
    sweep = client.post(URL, json=sweep_body(dataset_id)).get_json()
    assert_error(bob.get(f"{URL}/{sweep['id']}"), 404)
    assert_error(bob.patch(f"{URL}/{sweep['id']}", json={"name": "mine"}), 404)
    assert bob.get(URL).get_json()["pagination"]["total"] == 0
    assert bob.get(f"/api/v1/jobs?sweep_id={sweep['id']}").get_json()["items"] == []
    assert_error(bob.get(f"/api/v1/jobs/{sweep['trials'][0]['job_id']}"), 404)
    assert client.get(URL).get_json()["pagination"]["total"] == 1


def test_names_tags_and_filters(client: FlaskClient, dataset_id: str) -> None:
    other = post_dataset(client, binary_dataset(20))
    spec = {"model": {"layers": [4, 1]}, "training": {"loss": "binary_cross_entropy"}}
    a = client.post(
        "/api/v1/jobs", json={"dataset_id": dataset_id, **spec, "name": "a", "tags": {"k": "1"}}
    ).get_json()
    b = client.post("/api/v1/jobs", json={"dataset_id": other, **spec}).get_json()
    assert (a["name"], a["tags"], a["sweep_id"], a["params"]) == ("a", {"k": "1"}, None, None)
    assert (b["name"], b["tags"]) == (None, {})

    def ids(query: str) -> list[str]:
        r = client.get(f"/api/v1/jobs?{query}")
        assert r.status_code == 200, r.get_json()
        return [j["id"] for j in r.get_json()["items"]]

    assert ids("tag=k:1") == [a["id"]]
    assert ids("tag=k:2") == [] and ids("tag=x:1") == []
    assert ids(f"dataset_id={other}") == [b["id"]]
    r = client.patch(f"/api/v1/jobs/{b['id']}", json={"name": "b", "tags": {"k": "1", "z": "y"}})
    assert r.status_code == 200, r.get_json()
    assert (r.get_json()["name"], r.get_json()["tags"]) == ("b", {"k": "1", "z": "y"})
    assert set(ids("tag=k:1")) == {a["id"], b["id"]}
    assert ids("tag=k:1&tag=z:y") == [b["id"]]
    assert client.patch(f"/api/v1/jobs/{b['id']}", json={"tags": None}).get_json()["tags"] == {}
    assert client.get(f"/api/v1/jobs/{b['id']}").get_json()["name"] == "b"  # name kept
    assert_error(client.patch(f"/api/v1/jobs/{b['id']}", json={}), 422)
    assert_error(client.patch(f"/api/v1/jobs/{b['id']}", json={"tags": {"a": 1}}), 422)
    assert_error(client.patch(f"/api/v1/jobs/{'0' * 32}", json={"name": "x"}), 404)
    assert "tag.0" in assert_error(client.get("/api/v1/jobs?tag=nocolon"), 422)["fields"]

    sweep = client.post(URL, json=sweep_body(dataset_id, tags={"k": "2"}, max_trials=2))
    sweep_id = sweep.get_json()["id"]
    assert len(ids("tag=k:2")) == 2  # trials carry their sweep's tags
    r = client.patch(f"{URL}/{sweep_id}", json={"name": "renamed", "tags": {"stage": "final"}})
    assert r.status_code == 200 and r.get_json()["name"] == "renamed"
    listed = client.get(f"{URL}?tag=stage:final").get_json()["items"]
    assert [s["id"] for s in listed] == [sweep_id]
    assert client.get(f"{URL}?tag=stage:draft").get_json()["items"] == []
    assert client.get(f"{URL}?status=queued").get_json()["pagination"]["total"] == 1


def test_the_sweep_api_is_in_the_openapi_document(client: FlaskClient) -> None:
    spec = client.get("/api/v1/openapi.json").get_json()
    assert {"get", "post"} <= set(spec["paths"]["/api/v1/sweeps"])
    assert {"get", "patch"} <= set(spec["paths"]["/api/v1/sweeps/{sweep_id}"])
    assert "post" in spec["paths"]["/api/v1/sweeps/{sweep_id}/cancel"]
    assert "get" in spec["paths"]["/api/v1/sweeps/{sweep_id}/events"]
    assert "patch" in spec["paths"]["/api/v1/jobs/{job_id}"]
    schemas = spec["components"]["schemas"]
    assert {"base", "parameters", "metric", "max_parallel"} <= set(schemas["SweepIn"]["properties"])
    assert {"sweep_id", "params", "name", "tags"} <= set(schemas["Job"]["properties"])
