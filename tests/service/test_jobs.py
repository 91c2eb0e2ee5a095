"""POST/GET /api/v1/jobs and cancellation: validation before storing, publishing, polling."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient

from service.config import Limits
from service.db import utcnow
from service.tables import Job, JobEpoch
from tests.service.helpers import assert_error, binary_dataset, counts, post_dataset

URL = "/api/v1/jobs"
SPEC = {
    "model": {"layers": [4, 1], "activation": "relu"},
    "training": {"loss": "binary_cross_entropy", "epochs": 7, "batch_size": 4},
}


def set_job(app: Flask, job_id: str, **values: Any) -> None:
    with app.extensions["db_sessionmaker"]() as session:
        session.execute(sa.update(Job).where(Job.id == job_id).values(**values))
        session.commit()


def test_submit_with_dataset_id(
    app: Flask, client: FlaskClient, queued_messages: Callable[[], int]
) -> None:
    dataset_id = post_dataset(client)
    r = client.post(URL, json={"dataset_id": dataset_id, **SPEC})
    assert r.status_code == 202, r.get_json()
    job = r.get_json()
    assert r.headers["Location"] == f"{URL}/{job['id']}"
    assert job["status"] == "queued"
    assert job["dataset_id"] == dataset_id
    assert job["model"] == {
        "layers": [4, 1], "activation": "relu", "output_activation": None, "dropout": 0.0
    }  # fmt: skip
    assert job["training"] == {
        "loss": "binary_cross_entropy",
        "optimizer": "sgd",
        "learning_rate": 0.05,
        "momentum": 0.0,
        "weight_decay": 0.0,
        "epochs": 7,
        "batch_size": 4,
        "seed": 0,
        "validation_split": 0.0,
        "test_split": 0.0,
        "early_stopping": None,
        "lr_schedule": {"type": "constant"},
        "class_weight": None,
        "dtype": "float32",
        "preprocessing": {
            "numeric": "standardize",
            "categorical": "onehot",
            "missing": "impute",
            "target": "standardize",
        },
    }
    assert job["evaluation"] is None
    assert job["best_epoch"] is None and job["stopped_epoch"] is None
    assert job["stop_reason"] is None
    assert job["progress"] == {"epoch": 0, "epochs": 7, "loss": None}
    assert job["loss_history"] == [] and job["val_loss_history"] == []
    assert job["metrics"] == {} and job["error"] is None and job["model_id"] is None
    assert job["attempts"] == 0 and job["started_at"] is None and job["finished_at"] is None
    assert queued_messages() == 1
    assert client.get(r.headers["Location"]).get_json() == job
    with app.extensions["db_sessionmaker"]() as session:
        stored = session.get(Job, job["id"])
        assert stored.status == "queued"
        assert stored.training_spec == job["training"]
        assert stored.epochs == 7
        assert stored.published_at is not None


def test_submit_defaults_and_inline_dataset(
    app: Flask, client: FlaskClient, queued_messages: Callable[[], int]
) -> None:
    body = {
        "dataset": {"name": "inline", "features": [[1.0], [2.0], [3.0]], "targets": [1, 2, 3.5]},
        "model": {"layers": [1]},
        "training": {"optimizer": "adam", "batch_size": None},
    }
    r = client.post(URL, json=body)
    assert r.status_code == 202, r.get_json()
    job = r.get_json()
    assert job["model"] == {
        "layers": [1], "activation": "tanh", "output_activation": None, "dropout": 0.0
    }  # fmt: skip
    training = job["training"]
    assert training["loss"] == "mse"
    assert training["learning_rate"] == 0.01  # adam's default
    assert training["batch_size"] is None
    assert training["epochs"] == 100
    dataset = client.get(f"/api/v1/datasets/{job['dataset_id']}").get_json()
    assert dataset["name"] == "inline" and dataset["n_samples"] == 3
    assert queued_messages() == 1
    # no training object at all: every default
    r = client.post(URL, json={"dataset_id": job["dataset_id"], "model": {"layers": [2, 1]}})
    assert r.status_code == 202
    assert r.get_json()["training"]["optimizer"] == "sgd"
    assert r.get_json()["training"]["learning_rate"] == 0.05


def test_cross_entropy_on_string_labels(client: FlaskClient) -> None:
    body = {"name": "abc", "features": [[0], [1], [2]], "targets": ["a", "b", "c"]}
    dataset_id = post_dataset(client, body)
    spec = {"model": {"layers": [8, 3]}, "training": {"loss": "cross_entropy"}}
    assert client.post(URL, json={"dataset_id": dataset_id, **spec}).status_code == 202


INVALID = [
    # (model, training, dataset override, field)
    ({"layers": [4, 2]}, {"loss": "binary_cross_entropy"}, None, "model.layers"),
    ({"layers": [4, 1]}, {"loss": "cross_entropy"}, None, "model.layers"),
    ({"layers": [4, 2]}, {"loss": "mse"}, None, "model.layers"),
    ({"layers": [4, 1]}, {"loss": "hinge"}, None, "training.loss"),
    ({"layers": [4, 1]}, {"optimizer": "lbfgs"}, None, "training.optimizer"),
    ({"layers": [4, 1], "activation": "gelu"}, {}, None, "model.activation"),
    ({"layers": [4, 1], "output_activation": "x"}, {}, None, "model.output_activation"),
    ({"layers": [0, 1]}, {}, None, "model.layers.0"),
    ({"layers": [-3, 1]}, {}, None, "model.layers.0"),
    ({"layers": []}, {}, None, "model.layers"),
    ({"layers": [4.5, 1]}, {}, None, "model.layers.0"),
    ({"layers": "4,1"}, {}, None, "model.layers"),
    ({}, {}, None, "model.layers"),
    ({"layers": [4, 1]}, {"epochs": 0}, None, "training.epochs"),
    ({"layers": [4, 1]}, {"epochs": 2.5}, None, "training.epochs"),
    ({"layers": [4, 1]}, {"batch_size": 0}, None, "training.batch_size"),
    ({"layers": [4, 1]}, {"learning_rate": 0}, None, "training.learning_rate"),
    ({"layers": [4, 1]}, {"learning_rate": -0.1}, None, "training.learning_rate"),
    ({"layers": [4, 1]}, {"learning_rate": "fast"}, None, "training.learning_rate"),
    ({"layers": [4, 1]}, {"momentum": 1.5}, None, "training.momentum"),
    ({"layers": [4, 1]}, {"weight_decay": -1}, None, "training.weight_decay"),
    ({"layers": [4, 1]}, {"seed": -1}, None, "training.seed"),
    ({"layers": [4, 1]}, {"validation_split": 1.0}, None, "training.validation_split"),
    # a non-zero split holds at least one row, so 0.01 of 10 rows is fine; of 1 row it is not
    (
        {"layers": [4, 1]},
        {"loss": "mse", "validation_split": 0.01},
        {"dataset_id": "__drop__", "dataset": {"name": "x", "features": [[1]], "targets": [0]}},
        "training.validation_split",
    ),
    ({"layers": [4, 1]}, {"test_split": 1.0}, None, "training.test_split"),
    ({"layers": [4, 1]}, {"test_split": 0.5, "validation_split": 0.5}, None, "training.test_split"),
    # early stopping validates on 0.1 of the rows by default: one row leaves none to train on
    (
        {"layers": [4, 1]},
        {"loss": "mse", "early_stopping": {}},
        {"dataset_id": "__drop__", "dataset": {"name": "x", "features": [[1]], "targets": [0]}},
        "training.early_stopping",
    ),
    (
        {"layers": [4, 1]},
        {"early_stopping": {"patience": 0}},
        None,
        "training.early_stopping.patience",
    ),
    (
        {"layers": [4, 1], "output_activation": "sigmoid"},
        {"loss": "binary_cross_entropy"},
        None,
        "model.output_activation",
    ),
    ({"layers": [4, 1]}, {"class_weight": {"7": 1.0}}, None, "training.class_weight"),
    ({"layers": [4, 1]}, {"class_weight": "even"}, None, "training.class_weight"),
    ({"layers": [4, 1]}, {"dtype": "float16"}, None, "training.dtype"),
    ({"layers": [4, 1]}, {"lr_schedule": {"type": "exp"}}, None, "training.lr_schedule.type"),
    (
        {"layers": [4, 1]},
        {"preprocessing": {"numeric": "log"}},
        None,
        "training.preprocessing.numeric",
    ),
    ({"layers": [4, 1]}, {"epochs": 10_001}, None, "training.epochs"),
    ({"layers": [4, 1]}, {"unknown": 1}, None, "training.unknown"),
    ({"layers": [4, 1]}, {}, {"dataset_id": None}, "dataset_id"),
    ({"layers": [4, 1]}, {}, {"dataset": binary_dataset()}, "dataset_id"),  # both
    ({"layers": [4, 1]}, {}, {"dataset_id": "__drop__"}, "dataset_id"),  # neither
    (
        {"layers": [4, 1]},
        {},
        {"dataset_id": "__drop__", "dataset": {"name": "x", "features": [[1, 2], [3]]}},
        "dataset.targets",
    ),
    (
        {"layers": [4, 1]},
        {},
        {
            "dataset_id": "__drop__",
            "dataset": {"name": "x", "features": [[1], [2, 3]], "targets": [0, 1]},
        },
        "dataset.features",
    ),
    (
        {"layers": [4, 1]},
        {"loss": "mse"},
        {
            "dataset_id": "__drop__",
            "dataset": {"name": "x", "features": [[1], [2]], "targets": ["a", "b"]},
        },
        "training.loss",
    ),
    (
        {"layers": [4, 1]},
        {"loss": "binary_cross_entropy"},
        {
            "dataset_id": "__drop__",
            "dataset": {"name": "x", "features": [[1], [2], [3]], "targets": [0, 1, 2]},
        },
        "training.loss",
    ),
]


@pytest.mark.parametrize(("model", "training", "override", "field"), INVALID)
def test_invalid_job_stores_and_queues_nothing(
    app: Flask,
    client: FlaskClient,
    queued_messages: Callable[[], int],
    model: dict[str, Any],
    training: dict[str, Any],
    override: dict[str, Any] | None,
    field: str,
) -> None:
    body: dict[str, Any] = {
        "dataset_id": post_dataset(client),
        "model": model,
        "training": training,
    }
    body.update(override or {})
    if body["dataset_id"] == "__drop__":
        del body["dataset_id"]
    before = counts(app)
    error = assert_error(client.post(URL, json=body), 422, field)
    assert error["code"] == "validation_error"
    assert counts(app) == before
    assert queued_messages() == 0


@pytest.mark.app_config(
    {"LIMITS": Limits(max_layers=2, max_width=8, max_parameters=40, max_epochs=5)}
)
@pytest.mark.parametrize(
    ("layers", "epochs", "field"),
    [
        ([2, 2, 1], 1, "model.layers"),  # too many layers
        ([9, 1], 1, "model.layers"),  # too wide
        ([8, 1], 1, "model.layers"),  # (2+1)*8 + (8+1)*1 = 33 parameters: fine...
        ([8, 8], 1, "model.layers"),  # ...but 24 + 72 = 96 is too many (and the width is wrong)
        ([4, 1], 6, "training.epochs"),
    ],
)
def test_configured_limits(
    app: Flask, client: FlaskClient, layers: list[int], epochs: int, field: str
) -> None:
    body = {
        "dataset_id": post_dataset(client),
        "model": {"layers": layers},
        "training": {"loss": "binary_cross_entropy", "epochs": epochs},
    }
    r = client.post(URL, json=body)
    if layers == [8, 1]:
        assert r.status_code == 202
        return
    error = assert_error(r, 422, field)
    assert "limit" in error["fields"][field]


def test_malformed_json_and_content_type(
    app: Flask, client: FlaskClient, queued_messages: Callable[[], int]
) -> None:
    r = client.post(URL, data='{"model": ', content_type="application/json")
    assert assert_error(r, 400)["code"] == "malformed_json"
    r = client.post(URL, data='{"model": {}}', content_type="text/plain")
    assert assert_error(r, 415)["code"] == "unsupported_media_type"
    r = client.post(URL, data={"model": "x"}, content_type="multipart/form-data")
    assert_error(r, 415)
    assert assert_error(client.post(URL, json=[1, 2]), 422)["code"] == "validation_error"
    assert counts(app) == (0, 0)
    assert queued_messages() == 0


def test_unknown_dataset_id(app: Flask, client: FlaskClient) -> None:
    error = assert_error(client.post(URL, json={"dataset_id": "nope", **SPEC}), 404, "dataset_id")
    assert error["code"] == "not_found"
    assert counts(app) == (0, 0)


def test_unknown_job(client: FlaskClient) -> None:
    assert assert_error(client.get(f"{URL}/nope"), 404)["code"] == "not_found"
    assert_error(client.post(f"{URL}/nope/cancel"), 404)


def submit(client: FlaskClient, dataset_id: str, **training: Any) -> dict[str, Any]:
    spec = {"model": SPEC["model"], "training": {**SPEC["training"], **training}}
    r = client.post(URL, json={"dataset_id": dataset_id, **spec})
    assert r.status_code == 202, r.get_json()
    return r.get_json()


def test_poll_shows_history_progress_and_metrics(app: Flask, client: FlaskClient) -> None:
    job = submit(client, post_dataset(client), validation_split=0.2)
    set_job(app, job["id"], status="running", started_at=utcnow(), attempts=1, epoch=3)
    with app.extensions["db_sessionmaker"]() as session:
        # inserted out of order: the API orders by epoch
        for epoch, loss in [(2, 0.5), (1, 0.9), (3, 0.25)]:
            session.add(JobEpoch(job_id=job["id"], epoch=epoch, loss=loss, val_loss=loss + 0.1))
        session.commit()
    polled = client.get(f"{URL}/{job['id']}").get_json()
    assert polled["status"] == "running"
    assert polled["loss_history"] == [0.9, 0.5, 0.25]
    assert polled["val_loss_history"] == pytest.approx([1.0, 0.6, 0.35])
    assert polled["progress"] == {"epoch": 3, "epochs": 7, "loss": 0.25}
    assert polled["attempts"] == 1
    assert polled["started_at"].endswith("+00:00")
    set_job(app, job["id"], status="failed", error="loss became nan", finished_at=utcnow())
    failed = client.get(f"{URL}/{job['id']}").get_json()
    assert failed["status"] == "failed" and failed["error"] == "loss became nan"
    assert failed["finished_at"] is not None


def test_list_filter_and_pagination(app: Flask, client: FlaskClient) -> None:
    dataset_id = post_dataset(client)
    ids = [submit(client, dataset_id)["id"] for _ in range(5)]
    # make the order unambiguous whatever the clock's resolution
    for i, job_id in enumerate(ids):
        set_job(app, job_id, created_at=utcnow() - timedelta(minutes=10 - i))
    set_job(app, ids[1], status="running")
    set_job(app, ids[3], status="running")
    body = client.get(f"{URL}?page_size=2").get_json()
    assert body["pagination"] == {"page": 1, "page_size": 2, "total": 5, "pages": 3}
    assert [j["id"] for j in body["items"]] == [ids[4], ids[3]]
    # items leave out the histories unless asked for
    assert "loss_history" not in body["items"][0] and "val_loss_history" not in body["items"][0]
    with_history = client.get(f"{URL}?page_size=2&include=history").get_json()
    assert with_history["items"][0]["loss_history"] == []
    assert_error(client.get(f"{URL}?include=everything"), 422, "include.0")
    page2 = client.get(f"{URL}?page_size=2&page=2").get_json()
    assert [j["id"] for j in page2["items"]] == [ids[2], ids[1]]
    running = client.get(f"{URL}?status=running").get_json()
    assert [j["id"] for j in running["items"]] == [ids[3], ids[1]]
    assert running["pagination"]["total"] == 2
    assert client.get(f"{URL}?status=succeeded").get_json()["items"] == []
    assert_error(client.get(f"{URL}?status=done"), 422, "status")


def test_cancel_queued_job(app: Flask, client: FlaskClient) -> None:
    job = submit(client, post_dataset(client))
    r = client.post(f"{URL}/{job['id']}/cancel")
    assert r.status_code == 200
    assert r.get_json()["status"] == "cancelled"
    assert r.get_json()["finished_at"] is not None
    # the worker's claim is conditional on `queued`: a late message finds nothing to do
    with app.extensions["db_sessionmaker"]() as session:
        claimed = session.execute(
            sa.update(Job)
            .where(Job.id == job["id"], Job.status == "queued")
            .values(status="running")
        )
        session.commit()
        assert claimed.rowcount == 0
    assert client.get(f"{URL}/{job['id']}").get_json()["status"] == "cancelled"
    error = assert_error(client.post(f"{URL}/{job['id']}/cancel"), 409)
    assert error["code"] == "conflict"


def test_cancel_running_job_requests_stop(app: Flask, client: FlaskClient) -> None:
    job = submit(client, post_dataset(client))
    set_job(app, job["id"], status="running", started_at=utcnow())
    r = client.post(f"{URL}/{job['id']}/cancel")
    assert r.status_code == 200
    body = r.get_json()
    assert body["status"] == "running"
    assert body["cancel_requested"] is True
    assert body["finished_at"] is None
    # asking twice is harmless
    assert client.post(f"{URL}/{job['id']}/cancel").status_code == 200


@pytest.mark.parametrize("status", ["succeeded", "failed", "cancelled"])
def test_cancel_finished_job_conflicts(app: Flask, client: FlaskClient, status: str) -> None:
    job = submit(client, post_dataset(client))
    set_job(app, job["id"], status=status, finished_at=utcnow())
    assert_error(client.post(f"{URL}/{job['id']}/cancel"), 409)
    assert client.get(f"{URL}/{job['id']}").get_json()["status"] == status


def test_cancel_racing_the_claim_leaves_one_state(app: Flask, client: FlaskClient) -> None:
    dataset_id = post_dataset(client)
    for _ in range(5):
        job_id = submit(client, dataset_id)["id"]
        claimed: list[int] = []

        def claim(job_id: str = job_id, claimed: list[int] = claimed) -> None:
            with app.extensions["db_sessionmaker"]() as session:
                result = session.execute(
                    sa.update(Job)
                    .where(Job.id == job_id, Job.status == "queued")
                    .values(status="running", started_at=utcnow())
                )
                session.commit()
                claimed.append(result.rowcount)

        worker = threading.Thread(target=claim)
        worker.start()
        r = client.post(f"{URL}/{job_id}/cancel")
        worker.join()
        final = client.get(f"{URL}/{job_id}").get_json()
        assert r.status_code == 200
        if claimed == [1]:
            assert final["status"] == "running" and final["cancel_requested"] is True
        else:
            assert claimed == [0]
            assert final["status"] == "cancelled"


@pytest.mark.app_config({"CELERY_BROKER_URL": "redis://127.0.0.1:1/0"})
def test_broker_down_still_answers_and_keeps_job_queued(app: Flask, client: FlaskClient) -> None:
    dataset_id = post_dataset(client)
    started = time.monotonic()
    r = client.post(URL, json={"dataset_id": dataset_id, **SPEC})
    elapsed = time.monotonic() - started
    assert r.status_code == 202
    assert elapsed < 5, elapsed
    assert client.get(f"{URL}/{r.get_json()['id']}").get_json()["status"] == "queued"
    with app.extensions["db_sessionmaker"]() as session:
        assert session.get(Job, r.get_json()["id"]).published_at is None


def test_an_input_error_message_names_its_field(client: FlaskClient) -> None:
    body = {"dataset_id": post_dataset(client), "model": {"layers": [4, 1]},
            "training": {"epochs": 100000}}  # fmt: skip
    error = assert_error(client.post(URL, json=body), 422, "training.epochs")
    assert error["message"].startswith("training.epochs: is 100000; the limit is ")
