"""A job with `register_as`, trained by the task function (as a worker runs it), on SQLite and
PostgreSQL: its model becomes the name's next version in the transaction of its success; a job
that fails registers nothing."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from service.db import session_scope
from service.tables import ModelVersion, RegisteredModel, TrainedModel
from tests.workers.test_tasks import SETTINGS, add_job
from workers.tasks import run_job


def versions(factory: sessionmaker[Session], name: str) -> list[tuple[int, str]]:
    with session_scope(factory) as session:
        return [
            (v.version, v.model_id)
            for v in session.scalars(
                sa.select(ModelVersion)
                .join(RegisteredModel, RegisteredModel.id == ModelVersion.registered_model_id)
                .where(RegisteredModel.name == name)
                .order_by(ModelVersion.version)
            )
        ]


def model_of(factory: sessionmaker[Session], job_id: str) -> str:
    with session_scope(factory) as session:
        return str(session.scalar(sa.select(TrainedModel.id).where(TrainedModel.job_id == job_id)))


def test_a_trained_job_registers_its_model(factory: sessionmaker[Session]) -> None:
    first = add_job(factory, epochs=2, register_as="moons")
    second = add_job(factory, epochs=2, register_as="moons")
    failing = add_job(factory, loss="mse", learning_rate=1e8, epochs=200, register_as="never")
    assert run_job(factory, first, SETTINGS) == "succeeded"
    assert versions(factory, "moons") == [(1, model_of(factory, first))]
    assert run_job(factory, second, SETTINGS) == "succeeded"
    assert run_job(factory, first, SETTINGS) != "succeeded"  # a second delivery: nothing new
    assert versions(factory, "moons") == [
        (1, model_of(factory, first)),
        (2, model_of(factory, second)),
    ]
    assert run_job(factory, failing, SETTINGS) == "failed"
    assert versions(factory, "never") == []
