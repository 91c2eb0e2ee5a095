"""Domain functions build the JSON of every answer and the response schemas only document it
(`service.api.Blueprint.response`): each answer holds exactly the documented fields, nested
objects included, and its times are ISO 8601 strings with an offset."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from marshmallow import Schema, fields

from service.api.webhooks import WebhookCreatedSchema
from service.db import utcnow
from service.schemas import DatasetSchema, JobSchema
from service.tables import JobEpoch
from tests.service.helpers import post_dataset
from tests.service.test_jobs import SPEC, set_job

URL = "/api/v1"


def check(schema: Schema, body: Any, where: str = "") -> None:
    """`body` has exactly `schema`'s fields (by their JSON names), recursively."""
    assert isinstance(body, dict), (where, body)
    declared = {f.data_key or name: f for name, f in schema.fields.items() if not f.load_only}
    assert set(body) == set(declared), (where, set(body) ^ set(declared))
    for key, field in declared.items():
        value, at = body[key], f"{where}.{key}"
        if value is None:
            assert field.allow_none, at
        elif isinstance(field, fields.DateTime):
            assert isinstance(value, str) and datetime.fromisoformat(value).tzinfo, (at, value)
        elif isinstance(field, fields.Nested) and isinstance(field.schema, Schema):
            for item in value if field.many else [value]:
                check(field.schema, item, at)


@pytest.mark.app_config({"WEBHOOKS_ALLOW_PRIVATE": "true"})
def test_a_job_a_dataset_and_a_webhook_hold_their_documented_fields(
    app: Flask, client: FlaskClient
) -> None:
    dataset_id = post_dataset(client)
    check(DatasetSchema(), client.get(f"{URL}/datasets/{dataset_id}").get_json(), "dataset")
    job = client.post(f"{URL}/jobs", json={"dataset_id": dataset_id, **SPEC}).get_json()
    check(JobSchema(), job, "submitted job")
    set_job(app, job["id"], status="running", started_at=utcnow(), attempts=1, epoch=1)
    with app.extensions["db_sessionmaker"]() as session:
        session.add(JobEpoch(job_id=job["id"], epoch=1, loss=0.5, val_loss=None))
        session.commit()
    polled = client.get(f"{URL}/jobs/{job['id']}").get_json()
    check(JobSchema(), polled, "polled job")
    assert polled["loss_history"] == [0.5] and polled["started_at"].endswith("+00:00")
    listed = client.get(f"{URL}/jobs?include=history").get_json()["items"]
    check(JobSchema(), listed[0], "listed job")
    hook = client.post(
        f"{URL}/webhooks",
        json={"url": "http://127.0.0.1:9/h", "events": ["job.failed"], "secret": "s" * 16},
    )
    check(WebhookCreatedSchema(), hook.get_json(), "webhook")
