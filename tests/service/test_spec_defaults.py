"""GET /api/v1/spec/defaults answers core.spec's choices and defaults; a stored job shows the
resolved spec (every default filled, as `core.spec.resolve_spec` makes it)."""

from __future__ import annotations

import json
from typing import Any

from flask import Flask
from flask.testing import FlaskClient

from core import preprocessing, spec
from service.schemas import SpecDefaultsSchema
from service.tables import Job
from tests.service.helpers import assert_error, post_dataset
from tests.service.test_response_shapes import check

URL = "/api/v1"


def test_defaults_are_core_specs(client: FlaskClient) -> None:
    r = client.get(f"{URL}/spec/defaults")
    assert r.status_code == 200
    body = r.get_json()
    check(SpecDefaultsSchema(), body)
    assert body == json.loads(json.dumps(spec.defaults()))
    assert body["choices"]["optimizer"] == list(spec.OPTIMIZER_REGISTRY)
    assert body["choices"]["loss"] == list(spec.LOSS_REGISTRY)
    assert body["choices"]["activation"] == list(spec.ACTIVATION_REGISTRY)
    assert body["choices"]["lr_schedule"] == list(spec.LR_SCHEDULE_REGISTRY)
    assert body["model"]["activation"] == spec.MODEL_DEFAULTS["activation"]
    assert body["training"]["dtype"] == spec.TRAINING_DEFAULTS["dtype"]
    assert body["learning_rate"] == spec.DEFAULT_LEARNING_RATE
    assert body["early_stopping_split"] == spec.EARLY_STOPPING_SPLIT
    assert body["training"]["preprocessing"] == preprocessing.DEFAULTS


def test_defaults_need_a_key_and_are_documented(app: Flask, anonymous: FlaskClient) -> None:
    assert_error(anonymous.get(f"{URL}/spec/defaults"), 401)
    doc = anonymous.get(f"{URL}/openapi.json").get_json()
    op = doc["paths"][f"{URL}/spec/defaults"]["get"]
    assert "200" in op["responses"]


def submit(client: FlaskClient, body: dict[str, Any]) -> dict[str, Any]:
    r = client.post(f"{URL}/jobs", json={"dataset_id": post_dataset(client), **body})
    assert r.status_code == 202, r.get_json()
    return r.get_json()


def test_a_stored_job_shows_the_resolved_spec(app: Flask, client: FlaskClient) -> None:
    job = submit(
        client,
        {
            "model": {"layers": [4, 1]},
            "training": {
                "optimizer": "adam",
                "lr_schedule": {"type": "step"},
                "early_stopping": {"patience": 3},
            },
        },
    )
    defaults = spec.defaults()
    assert job["model"] == {"layers": [4, 1], **defaults["model"]}
    training = job["training"]
    assert set(training) == set(spec.TRAINING_KEYS)
    assert training["learning_rate"] == spec.DEFAULT_LEARNING_RATE["adam"]
    assert training["lr_schedule"] == {"type": "step", **spec.LR_SCHEDULE_DEFAULTS["step"]}
    assert training["early_stopping"] == {**spec.EARLY_STOPPING_DEFAULTS, "patience": 3}
    assert training["validation_split"] == spec.EARLY_STOPPING_SPLIT
    assert training["loss"] is not None  # picked from the targets
    for key in ("momentum", "weight_decay", "epochs", "batch_size", "seed", "dtype"):
        assert training[key] == spec.TRAINING_DEFAULTS[key], key
    with app.extensions["db_sessionmaker"]() as session:
        stored = session.get(Job, job["id"])
        assert stored.model_spec == job["model"] and stored.training_spec == training
    # what the worker trains with is what is stored: resolving again changes nothing
    model, resolved = spec.resolve_spec(job["model"], training, "labels", 1, None)
    assert dict(model) == job["model"] and dict(resolved) == training
