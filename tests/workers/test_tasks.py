"""workers.tasks against real databases (SQLite file and PostgreSQL): claim, re-delivery,
cancellation, failure and the final save. The task function is called directly, in this process.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from core.model import predict, weights_from_npz
from engine.nn import MLP
from service.config import Settings
from service.db import make_engine, make_sessionmaker, session_scope, utcnow
from service.lifecycle import Claim
from service.tables import Job, JobEpoch, TrainedModel
from tests.support import ROOT, base_env, spoil_rows, store_dataset
from tests.workers.datasets import moons
from workers.tasks import _Busy, claim_job, run_job

SETTINGS = dataclasses.replace(Settings(), max_attempts=3, stale_after=30.0, heartbeat_interval=0.5)


def add_job(
    factory: sessionmaker[Session],
    *,
    n: int = 60,
    epochs: int = 5,
    learning_rate: float = 0.05,
    loss: str = "binary_cross_entropy",
    early_stopping: dict[str, Any] | None = None,
    **job_fields: Any,
) -> str:
    x, y = moons(n)
    with session_scope(factory) as session:
        dataset = store_dataset(session, x, y, name="moons", classes=[0, 1])
        job = Job(
            dataset_id=dataset.id,
            model_spec={"layers": [8, 1], "activation": "tanh", "output_activation": None},
            training_spec={
                "loss": loss,
                "optimizer": "sgd",
                "learning_rate": learning_rate,
                "momentum": 0.9,
                "weight_decay": 0.0,
                "epochs": epochs,
                "batch_size": 16,
                "seed": 0,
                "validation_split": 0.2,
                **({} if early_stopping is None else {"early_stopping": early_stopping}),
            },
            epochs=epochs,
            **job_fields,
        )
        session.add(job)
        session.flush()
        return job.id


def job_row(factory: sessionmaker[Session], job_id: str) -> Job:
    with session_scope(factory) as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job


def epochs_of(factory: sessionmaker[Session], job_id: str) -> list[int]:
    with session_scope(factory) as session:
        return list(
            session.scalars(
                sa.select(JobEpoch.epoch).where(JobEpoch.job_id == job_id).order_by(JobEpoch.epoch)
            )
        )


def test_job_succeeds_and_saves_everything(factory: sessionmaker[Session]) -> None:
    job_id = add_job(factory)
    assert run_job(factory, job_id, SETTINGS) == "succeeded"
    job = job_row(factory, job_id)
    assert (job.status, job.attempts, job.epoch, job.error) == ("succeeded", 1, 5, None)
    assert job.started_at is not None and job.finished_at is not None
    assert {"loss", "accuracy", "val_loss", "val_accuracy"} <= set(job.metrics or {})
    assert epochs_of(factory, job_id) == [1, 2, 3, 4, 5]
    with session_scope(factory) as session:
        model = session.scalars(
            sa.select(TrainedModel)
            .where(TrainedModel.job_id == job_id)
            .options(sa.orm.undefer(TrainedModel.weights), sa.orm.undefer(TrainedModel.graph_svg))
        ).one()
        arch, weights, svg = model.architecture, model.weights, model.graph_svg
        assert model.metrics == job.metrics
    assert {"nin", "layers", "activation", "output_activation", "loss", "classes"} <= set(arch)
    assert arch["nin"] == 2 and arch["layers"] == [8, 1] and arch["classes"] == [0, 1]
    assert "<svg" in svg
    state = weights_from_npz(weights)
    mlp = MLP(2, [8, 1], activation="tanh", dtype=np.dtype(arch["dtype"]))
    mlp.load_state_dict(state)
    x, _ = moons(10, seed=3)
    # the stored preprocessing (standardized with the training rows' statistics) comes first
    steps = arch["preprocessing"]["steps"]
    scaled = (x - [s["center"] for s in steps]) / [s["scale"] for s in steps]
    logits = mlp(scaled).numpy().reshape(-1).astype(np.float64)
    probabilities = np.asarray(predict(arch, state, x)["probabilities"])
    np.testing.assert_allclose(probabilities[:, 1], 1 / (1 + np.exp(-logits)), rtol=1e-5)
    assert job.stop_reason == "completed" and job.stopped_epoch == 5
    assert set(job.evaluation or {}) == {"train", "validation"}


def test_second_delivery_does_nothing(factory: sessionmaker[Session]) -> None:
    job_id = add_job(factory, epochs=2)
    assert run_job(factory, job_id, SETTINGS) == "succeeded"
    assert run_job(factory, job_id, SETTINGS) == "duplicate"
    job = job_row(factory, job_id)
    assert (job.status, job.attempts) == ("succeeded", 1)


def test_claim_is_atomic_between_two_deliveries(factory: sessionmaker[Session]) -> None:
    job_id = add_job(factory)
    first = claim_job(factory, job_id, SETTINGS)
    assert first == Claim(job_id, 1)
    # the same message again while the first attempt is alive: not run, looked at later
    with pytest.raises(_Busy):
        claim_job(factory, job_id, SETTINGS)
    assert job_row(factory, job_id).attempts == 1


def test_cancel_requested_while_queued_never_starts(factory: sessionmaker[Session]) -> None:
    job_id = add_job(factory, cancel_requested=True)
    assert run_job(factory, job_id, SETTINGS) == "cancelled"
    job = job_row(factory, job_id)
    assert (job.status, job.attempts, job.started_at) == ("cancelled", 0, None)


def test_cancel_while_running_stops_at_an_epoch_boundary(
    factory: sessionmaker[Session],
) -> None:
    job_id = add_job(factory, epochs=5000)

    def cancel_after_two_epochs() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if job_row(factory, job_id).epoch >= 2:
                with session_scope(factory) as session:
                    session.execute(
                        sa.update(Job).where(Job.id == job_id).values(cancel_requested=True)
                    )
                return
            time.sleep(0.05)

    canceller = threading.Thread(target=cancel_after_two_epochs)
    canceller.start()
    assert run_job(factory, job_id, SETTINGS) == "cancelled"
    canceller.join()
    job = job_row(factory, job_id)
    assert job.status == "cancelled" and job.finished_at is not None
    assert 2 <= job.epoch < 5000
    assert epochs_of(factory, job_id) == list(range(1, job.epoch + 1))
    with session_scope(factory) as session:
        assert (
            session.scalars(sa.select(TrainedModel).where(TrainedModel.job_id == job_id)).all()
            == []
        )


def test_redelivery_after_lost_worker_takes_over(factory: sessionmaker[Session]) -> None:
    stale = utcnow() - timedelta(minutes=10)
    job_id = add_job(factory, status="running", attempts=1, heartbeat_at=stale, epoch=2)
    with session_scope(factory) as session:  # history of the dead attempt
        session.add_all([JobEpoch(job_id=job_id, epoch=e, loss=9.0) for e in (1, 2)])
    assert run_job(factory, job_id, SETTINGS) == "succeeded"
    job = job_row(factory, job_id)
    assert (job.status, job.attempts) == ("succeeded", 2)
    assert epochs_of(factory, job_id) == [1, 2, 3, 4, 5]
    with session_scope(factory) as session:
        losses = session.scalars(sa.select(JobEpoch.loss).where(JobEpoch.job_id == job_id))
        assert 9.0 not in list(losses)


def test_lost_too_often_fails_with_reason(factory: sessionmaker[Session]) -> None:
    stale = utcnow() - timedelta(minutes=10)
    job_id = add_job(factory, status="running", attempts=3, heartbeat_at=stale)
    assert run_job(factory, job_id, SETTINGS) == "failed"
    job = job_row(factory, job_id)
    assert job.status == "failed" and "lost 3 times" in (job.error or "")


def test_taken_over_attempt_cannot_write(factory: sessionmaker[Session]) -> None:
    stale = utcnow() - timedelta(minutes=10)
    job_id = add_job(factory, status="running", attempts=1, heartbeat_at=stale)
    old = Claim(job_id, 1)
    new = claim_job(factory, job_id, SETTINGS)
    assert new == Claim(job_id, 2)
    from workers.tasks import _fail

    _fail(factory, old, "late failure of the old attempt")
    assert job_row(factory, job_id).status == "running"


def test_diverging_mse_job_fails(factory: sessionmaker[Session]) -> None:
    job_id = add_job(factory, loss="mse", learning_rate=1e8, epochs=200)
    assert run_job(factory, job_id, SETTINGS) == "failed"
    job = job_row(factory, job_id)
    assert job.status == "failed"
    assert "NaN" in (job.error or "") or "inf" in (job.error or "")
    assert epochs_of(factory, job_id) == list(range(1, job.epoch + 1))


def test_bad_data_fails_the_job_not_the_worker(factory: sessionmaker[Session]) -> None:
    job_id = add_job(factory)
    with session_scope(factory) as session:
        job = session.get(Job, job_id)
        assert job is not None
        spoil_rows(session, job.dataset_id)
    assert run_job(factory, job_id, SETTINGS) == "failed"
    assert job_row(factory, job_id).error


def test_a_stopping_pool_process_fails_nothing(
    factory: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An error met while the process is being stopped (a cold shutdown) leaves the job to the
    next delivery: the attempt exits, the job stays `running` and is not marked failed."""
    job_id = add_job(factory)
    with session_scope(factory) as session:
        spoil_rows(session, job_row(factory, job_id).dataset_id)
    monkeypatch.setattr("workers.tasks.stopping", lambda: True)
    with pytest.raises(SystemExit):
        run_job(factory, job_id, SETTINGS)
    job = job_row(factory, job_id)
    assert (job.status, job.error, job.attempts) == ("running", None, 1)


def test_stopping_is_billiards_terminate_signal() -> None:
    """`runtime.stopping` turns true once billiard's terminate handler ran in this process."""
    code = textwrap.dedent("""
        import os, signal
        from billiard.common import reset_signals
        from workers.runtime import stopping
        before = stopping()
        reset_signals()
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            signal.pause()
        except SystemExit:
            print(before, stopping())
    """)
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert out.stdout.split() == ["False", "True"], out


def test_missing_job_is_ignored(factory: sessionmaker[Session]) -> None:
    assert run_job(factory, "0" * 32, SETTINGS) == "missing"


def early_stopped_then_refit(
    factory: sessionmaker[Session], n: int, learning_rate: float
) -> tuple[Job, str]:
    """A job trained with early stopping and no refit (its row: what the refit job will stop
    at), and the same job with a refit, not run yet (its id)."""
    stopping = {"patience": 3, "min_delta": 0.0}
    spec = {"n": n, "epochs": 400, "learning_rate": learning_rate}
    plain = add_job(factory, **spec, early_stopping={**stopping, "refit": False})
    assert run_job(factory, plain, SETTINGS) == "succeeded"
    selected = job_row(factory, plain)
    assert selected.stop_reason == "early_stopping"
    return selected, add_job(factory, **spec, early_stopping={**stopping, "refit": True})


def once_the_refit_runs(
    factory: sessionmaker[Session], job_id: str, stopped_epoch: int, action: Callable[[], None]
) -> threading.Thread:
    """A started thread that calls `action` as soon as the job's last training epoch is
    recorded (the refit that follows records none)."""

    def watch() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if job_row(factory, job_id).epoch == stopped_epoch:
                action()
                return
            time.sleep(0.005)

    thread = threading.Thread(target=watch)
    thread.start()
    return thread


def model_weights(factory: sessionmaker[Session], job_id: str) -> list[Any]:
    with session_scope(factory) as session:
        rows = session.scalars(sa.select(TrainedModel.weights).where(TrainedModel.job_id == job_id))
        return [weights_from_npz(w) for w in rows]


def test_the_soft_time_limit_during_a_refit_keeps_the_selected_model(
    factory: sessionmaker[Session],
) -> None:
    """Early stopping ended the training; the refit on all the rows is under way when Celery's
    soft time limit comes (SIGUSR1, as billiard sends it): the refit stops and the job succeeds
    with the model early stopping selected, the very weights a run without refit saves."""
    selected, refit = early_stopped_then_refit(factory, n=2000, learning_rate=0.02)
    # about 75 epochs: the refit lasts long enough for the signal to come during it
    assert selected.best_epoch >= 20
    timer = once_the_refit_runs(
        factory, refit, selected.stopped_epoch, lambda: os.kill(os.getpid(), signal.SIGUSR1)
    )
    assert run_job(factory, refit, SETTINGS) == "succeeded"
    timer.join()
    job = job_row(factory, refit)
    assert (job.stop_reason, job.best_epoch, job.stopped_epoch) == (
        "early_stopping", selected.best_epoch, selected.stopped_epoch,
    )  # fmt: skip
    (saved,), (expected,) = model_weights(factory, refit), model_weights(factory, selected.id)
    for name, value in expected.items():
        np.testing.assert_array_equal(saved[name], value)


def test_a_cancel_during_a_refit_ends_the_job_cancelled(factory: sessionmaker[Session]) -> None:
    """The refit records no epoch, and it lasts as long as the training did: a cancel asked for
    meanwhile is seen within `REFIT_LOOK_S` (not after the refit, with the job `succeeded`)."""
    from workers.tasks import REFIT_LOOK_S

    selected, refit = early_stopped_then_refit(factory, n=4000, learning_rate=0.005)
    assert selected.best_epoch >= 50
    asked: list[float] = []

    def cancel() -> None:
        with session_scope(factory) as session:
            session.execute(sa.update(Job).where(Job.id == refit).values(cancel_requested=True))
        asked.append(time.monotonic())

    canceller = once_the_refit_runs(factory, refit, selected.stopped_epoch, cancel)
    assert run_job(factory, refit, SETTINGS) == "cancelled"
    ended = time.monotonic()
    canceller.join()
    assert asked and ended - asked[0] < REFIT_LOOK_S + 5
    job = job_row(factory, refit)
    assert job.status == "cancelled" and job.epoch == selected.stopped_epoch
    assert model_weights(factory, refit) == []


def test_an_attempt_whose_stop_was_swallowed_exits_at_its_next_epoch(
    factory: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pool process told to stop whose `SystemExit` a library swallowed (pyarrow's lazy
    import of pandas did: `workers.runtime.preload`) is still `stopping()`: the attempt exits
    at its next epoch, and the job stays its running attempt, neither finished nor failed."""
    job_id = add_job(factory, epochs=50)
    looks = 0

    def stopping() -> bool:  # told to stop during the third epoch
        nonlocal looks
        looks += 1
        return looks > 2

    monkeypatch.setattr("workers.tasks.stopping", stopping)
    with pytest.raises(SystemExit):
        run_job(factory, job_id, SETTINGS)
    job = job_row(factory, job_id)
    assert (job.status, job.attempts, job.error, job.epoch) == ("running", 1, None, 2)
    assert epochs_of(factory, job_id) == [1, 2]
    assert model_weights(factory, job_id) == []


def in_a_worker_process(database_url: str, tmp_path: Path, code: str) -> str:
    """Run `code` in a fresh interpreter that first imports `workers.app`, as a worker's main
    process does before its pool forks (its settings: `database_url`, a broker of its own);
    the last line it printed."""
    env = base_env(
        DATABASE_URL=database_url,
        CELERY_BROKER_URL=f"filesystem://{(tmp_path / 'broker').as_posix()}",
        TRAINYARD_VAR_DIR=str(tmp_path / "var"),
    )
    program = "import workers.app as app\n" + textwrap.dedent(code)
    out = subprocess.run(
        [sys.executable, "-c", program],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout.strip().splitlines()[-1]


def test_a_task_imports_nothing_in_a_worker_process(
    sqlite_database_url: str, tmp_path: Path
) -> None:
    """`workers.app` preloads, in the worker's main process, what a pool process's first task
    would import while it runs (`workers.runtime.preload`): a whole job imports no module."""
    factory = make_sessionmaker(make_engine(sqlite_database_url))
    job_id = add_job(factory)
    printed = in_a_worker_process(
        sqlite_database_url,
        tmp_path,
        f"""
        import sys
        from workers.tasks import run_job
        before = set(sys.modules)
        outcome = run_job(app.context.factory, {job_id!r}, app.context.settings)
        print(outcome, sorted(set(sys.modules) - before))
        """,
    )
    assert printed == "succeeded []"


def test_a_stop_swallowed_in_a_pool_process_ends_the_attempt(
    sqlite_database_url: str, tmp_path: Path
) -> None:
    """Billiard's own terminate handler, its `SystemExit` swallowed as pyarrow's import of
    pandas swallowed it: the attempt exits at its next epoch, the job stays `running`."""
    factory = make_sessionmaker(make_engine(sqlite_database_url))
    job_id = add_job(factory, epochs=50)
    printed = in_a_worker_process(
        sqlite_database_url,
        tmp_path,
        f"""
        import os, signal
        from billiard.common import reset_signals
        from workers.tasks import run_job
        reset_signals()  # as in a pool process
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            signal.pause()
        except SystemExit:
            pass  # a library that swallows it
        try:
            run_job(app.context.factory, {job_id!r}, app.context.settings)
            print("ran")
        except SystemExit:
            print("exited")
        """,
    )
    assert printed == "exited"
    job = job_row(factory, job_id)
    assert (job.status, job.attempts, job.error, job.epoch) == ("running", 1, None, 0)
