"""workers.predicting against real databases (SQLite file and PostgreSQL) and the test session's
file store: a predict job's attempt, run in this process as its Celery task runs it (through
`workers.tasks.run_job`): predictions equal the model's answer row for row, progress, cancel,
failure and take-over free the parts they must."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from core.model import Model, weights_from_npz
from core.table import Table
from core.training import as_table
from service import lifecycle, predictions
from service.config import Settings
from service.dataset_store import PREDICTIONS, DatasetStore, StoreError, store_for
from service.db import session_scope, utcnow
from service.tables import Job, TrainedModel
from tests.support import STORE_URL, store_dataset
from tests.workers.datasets import moons, regression
from tests.workers.test_tasks import add_job, job_row
from workers import predicting
from workers.tasks import run_job

SETTINGS = dataclasses.replace(
    Settings(), max_attempts=3, stale_after=30.0, heartbeat_interval=0.5, store_url=STORE_URL
)
STORE = store_for(STORE_URL)


def run(factory: sessionmaker[Session], job_id: str) -> str:
    return run_job(
        factory,
        job_id,
        SETTINGS,
        lambda f, claim, limit: predicting.run_predict(f, claim, limit, SETTINGS),
    )


def trained_model(factory: sessionmaker[Session], **job: Any) -> str:
    """A model trained by a real attempt (moons, two features x0, x1)."""
    job_id = add_job(factory, **job)
    assert run_job(factory, job_id, SETTINGS) == "succeeded"
    with session_scope(factory) as session:
        return session.scalars(
            sa.select(TrainedModel.id).where(TrainedModel.job_id == job_id)
        ).one()


def add_predict_job(factory: sessionmaker[Session], model_id: str, x: np.ndarray, y: Any) -> str:
    with session_scope(factory) as session:
        dataset = store_dataset(
            session, x, y, name="to score", target_kind="labels", classes=[0, 1]
        )
        return lifecycle.submit_predict(
            session,
            owner="local",
            model_id=model_id,
            dataset_id=dataset.id,
            rows_total=len(x),
        ).id


def stored_model(factory: sessionmaker[Session], model_id: str) -> Model:
    with session_scope(factory) as session:
        row = session.execute(
            sa.select(TrainedModel.architecture, TrainedModel.weights).where(
                TrainedModel.id == model_id
            )
        ).one()
        return Model(row.architecture, weights_from_npz(row.weights))


def output_of(job: Job) -> pa.Table:
    assert job.output_location is not None
    store, key = DatasetStore.at(job.output_location, PREDICTIONS)
    return pa.Table.from_batches(list(store.read_batches(key, prefix=PREDICTIONS)))


def parts_of(job_id: str) -> list[str]:
    return [p for a in (1, 2, 3) for p in STORE.parts(f"{job_id}/{a}", PREDICTIONS)]


def test_predictions_equal_the_models_answer_row_for_row(factory: sessionmaker[Session]) -> None:
    model_id = trained_model(factory)
    x, y = moons(150_000, seed=4)  # three row groups
    job_id = add_predict_job(factory, model_id, x, y)
    assert run(factory, job_id) == "succeeded"
    job = job_row(factory, job_id)
    assert (job.kind, job.status, job.attempts, job.error) == ("predict", "succeeded", 1, None)
    assert job.rows_done == job.rows_total == 150_000
    assert job.output_location == STORE.location(f"{job_id}/1", PREDICTIONS)
    assert job.output_bytes == STORE.size(f"{job_id}/1", PREDICTIONS) > 0
    out = output_of(job)
    assert out.column_names == ["prediction", "p_0", "p_1"]
    expected = stored_model(factory, model_id).predict(as_table(x))
    assert out.column("prediction").to_pylist() == [str(v) for v in expected["predictions"]]
    probabilities = np.column_stack([out.column("p_0").to_numpy(), out.column("p_1").to_numpy()])
    np.testing.assert_array_equal(probabilities, np.asarray(expected["probabilities"]))


def test_regression_with_two_outputs_writes_one_column_per_output(
    factory: sessionmaker[Session],
) -> None:
    xr, yr = regression(80)
    two = np.column_stack([yr[:, 0], -yr[:, 0]])
    with session_scope(factory) as session:
        train_set = store_dataset(session, xr, two, name="two outputs")
        job = Job(
            dataset_id=train_set.id,
            model_spec={"layers": [8, 2], "activation": "tanh", "output_activation": None},
            training_spec={"loss": "mse", "optimizer": "adam", "learning_rate": 0.01,
                           "epochs": 3, "batch_size": 16, "seed": 0},
            epochs=3,
        )  # fmt: skip
        session.add(job)
        session.flush()
        train_id = job.id
    assert run_job(factory, train_id, SETTINGS) == "succeeded"
    with session_scope(factory) as session:
        model_id = session.scalars(
            sa.select(TrainedModel.id).where(TrainedModel.job_id == train_id)
        ).one()
        dataset = store_dataset(session, xr, two, name="score me")
        job_id = lifecycle.submit_predict(
            session, owner="local", model_id=model_id, dataset_id=dataset.id, rows_total=80
        ).id
    assert run(factory, job_id) == "succeeded"
    out = output_of(job_row(factory, job_id))
    assert out.column_names == ["prediction_0", "prediction_1"]
    expected = np.asarray(stored_model(factory, model_id).predict(as_table(xr))["predictions"])
    np.testing.assert_array_equal(
        np.column_stack([out.column(0).to_numpy(), out.column(1).to_numpy()]), expected
    )


def _interrupted(
    monkeypatch: pytest.MonkeyPatch, after_first: Any
) -> None:  # read_input, with `after_first()` between its first and second chunk
    real = predictions.read_input

    def read_input(source: predictions.PredictInput) -> Iterator[Table]:
        for i, table in enumerate(real(source)):
            if i == 1:
                after_first()
            yield table

    monkeypatch.setattr(predictions, "read_input", read_input)


def test_a_cancel_stops_between_chunks_and_frees_the_parts(
    factory: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    model_id = trained_model(factory, epochs=1)
    x, y = moons(200_000, seed=5)
    job_id = add_predict_job(factory, model_id, x, y)
    seen: list[list[str]] = []

    def cancel() -> None:
        seen.append(parts_of(job_id))  # the first row group is in the store by now
        with session_scope(factory) as session:
            assert lifecycle.cancel(session, job_id, "local").done

    _interrupted(monkeypatch, cancel)
    monkeypatch.setattr(predicting, "PROGRESS_EVERY_S", 0.0)
    assert run(factory, job_id) == "cancelled"
    job = job_row(factory, job_id)
    assert job.status == "cancelled" and job.output_location is None
    assert seen[0] and parts_of(job_id) == []
    assert 65_536 <= (job.rows_done or 0) < 200_000


def test_a_failed_attempt_frees_its_parts(
    factory: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    model_id = trained_model(factory, epochs=1)
    x, y = moons(140_000, seed=6)
    job_id = add_predict_job(factory, model_id, x, y)
    seen: list[list[str]] = []

    def store_down() -> None:
        seen.append(parts_of(job_id))
        raise StoreError("the dataset store is unavailable: connection refused")

    _interrupted(monkeypatch, store_down)
    assert run(factory, job_id) == "failed"
    job = job_row(factory, job_id)
    assert job.status == "failed" and "connection refused" in (job.error or "")
    assert seen[0] and parts_of(job_id) == []


def test_a_lost_workers_job_is_taken_over_from_its_first_row(
    factory: sessionmaker[Session],
) -> None:
    model_id = trained_model(factory, epochs=1)
    x, y = moons(1000, seed=7)
    job_id = add_predict_job(factory, model_id, x, y)
    with session_scope(factory) as session:  # attempt 1's worker died half way
        session.execute(
            sa.update(Job)
            .where(Job.id == job_id)
            .values(status="running", attempts=1, rows_done=500,
                    heartbeat_at=utcnow() - timedelta(minutes=10))
        )  # fmt: skip
    with STORE.writer(f"{job_id}/1", PREDICTIONS) as left:
        left.write(pa.table({"label": [0] * 10}))
        left.commit()
    assert parts_of(job_id)
    assert run(factory, job_id) == "succeeded"
    job = job_row(factory, job_id)
    assert (job.status, job.attempts, job.rows_done) == ("succeeded", 2, 1000)
    assert STORE.parts(f"{job_id}/1", PREDICTIONS) == []
    assert output_of(job).num_rows == 1000


def test_unsuccessful_jobs_predictions_are_deleted_by_the_maintenance(
    factory: sessionmaker[Session],
) -> None:
    model_id = trained_model(factory, epochs=1)
    x, y = moons(100, seed=8)
    done, lost = (add_predict_job(factory, model_id, x, y) for _ in range(2))
    assert run(factory, done) == "succeeded"
    with session_scope(factory) as session:
        session.execute(sa.update(Job).where(Job.id == lost).values(status="failed"))
    with STORE.writer(f"{lost}/1", PREDICTIONS) as left:
        left.write(pa.table({"label": [0] * 10}))
        left.commit()
    output = job_row(factory, done).output_location
    with STORE.writer(f"{done}/7", PREDICTIONS) as late:  # a lost attempt that went on writing
        late.write(pa.table({"label": [0] * 10}))
        late.commit()
    cleaned = predictions.delete_unused(factory, STORE_URL, older_than_s=0.0)
    assert lost in cleaned and done not in cleaned and f"{done}/7" in cleaned
    assert parts_of(lost) == [] and parts_of(done)
    assert STORE.parts(f"{done}/7", PREDICTIONS) == []
    assert output_of(job_row(factory, done)).num_rows == 100 and output.endswith(f"{done}/1")
