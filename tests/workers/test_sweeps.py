"""A sweep's trials through the task (called in this process, as in test_tasks) against real
databases and a real broker (the filesystem transport): each trial's end starts the next within
max_parallel, the sweep ends with its best trial, failed trials, cancel at each stage, the
median rule, concurrent advances, and the maintenance sweep taking a step a lost worker left.
"""

from __future__ import annotations

import dataclasses
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from celery import Celery
from sqlalchemy.orm import Session, sessionmaker

from service import lifecycle, sweeps
from service.config import Limits, Settings
from service.datasets import new_dataset
from service.db import session_scope
from service.ingest import parse_json_dataset
from service.problems import ApiError
from service.schemas import SweepInSchema
from service.tables import Job, Sweep
from tests.support import STORE_URL
from tests.workers.datasets import moons
from tests.workers.test_maintenance import broker, messages
from workers.maintenance import sweep as maintenance_sweep
from workers.tasks import after_trial, run_job

SETTINGS = dataclasses.replace(Settings(), max_attempts=3, stale_after=30.0, heartbeat_interval=5)
BASE = {
    "model": {"layers": [8, 1], "activation": "tanh"},
    "training": {
        "loss": "binary_cross_entropy",
        "optimizer": "adam",
        "epochs": 6,
        "batch_size": 16,
        "validation_split": 0.25,
    },
}


@pytest.fixture
def celery(tmp_path: Path) -> Celery:
    return broker(f"filesystem://{(tmp_path / 'broker').as_posix()}")


def add_sweep(factory: sessionmaker[Session], limits: Limits | None = None, **body: Any) -> str:
    """A sweep of an owner of its own (the PostgreSQL database is shared between tests, and
    the owner's active jobs count)."""
    owner = f"alice-{uuid.uuid4().hex[:8]}"
    x, y = moons(80)
    limits = limits or Limits()
    request = {
        "dataset_id": "",
        "base": BASE,
        "parameters": {"training.learning_rate": {"values": [0.001, 0.01, 0.05, 0.1]}},
        **body,
    }
    with session_scope(factory) as session:
        parsed = parse_json_dataset(
            {"name": "moons", "features": x.tolist(), "targets": y.tolist()}, limits
        )
        dataset = new_dataset(session, parsed, owner, STORE_URL)
        request["dataset_id"] = dataset.id
        sweep = sweeps.create_sweep(session, SweepInSchema().load(request), limits, owner)
        return sweep.id


def view(factory: sessionmaker[Session], sweep_id: str) -> dict[str, Any]:
    with session_scope(factory) as session:
        sweep = session.get(Sweep, sweep_id)
        assert sweep is not None
        return sweeps.serialize_sweep(session, sweep)


def owner_of(factory: sessionmaker[Session], sweep_id: str) -> str:
    with session_scope(factory) as session:
        return str(session.scalar(sa.select(Sweep.owner).where(Sweep.id == sweep_id)))


def trial_ids(factory: sessionmaker[Session], sweep_id: str) -> list[str]:
    return [t["job_id"] for t in view(factory, sweep_id)["trials"]]


def run_trial(factory: sessionmaker[Session], celery: Celery, job_id: str) -> str:
    """What the task does with a delivery: run it, then advance its sweep."""
    outcome = run_job(factory, job_id, SETTINGS)
    after_trial(factory, celery, job_id, SETTINGS)
    return outcome


def released(factory: sessionmaker[Session], sweep_id: str) -> list[str]:
    """Trials started and not yet run (queued, not held), in trial order."""
    with session_scope(factory) as session:
        return list(
            session.scalars(
                sa.select(Job.id)
                .where(Job.sweep_id == sweep_id, Job.status == "queued", Job.held.is_(False))
                .order_by(Job.trial_index)
            )
        )


def test_trials_run_within_max_parallel_and_the_best_wins(
    factory: sessionmaker[Session], celery: Celery, tmp_path: Path
) -> None:
    sweep_id = add_sweep(factory, max_parallel=2)
    assert sweeps.advance(factory, celery, sweep_id, Limits()) == trial_ids(factory, sweep_id)[:2]
    assert messages(tmp_path / "broker") == 2
    assert sweeps.advance(factory, celery, sweep_id, Limits()) == []  # no room: nothing more
    ran = []
    while ready := released(factory, sweep_id):
        assert len(ready) <= 2
        ran.append(ready[0])
        assert run_trial(factory, celery, ready[0]) == "succeeded"
        got = view(factory, sweep_id)
        assert got["progress"]["queued"] + got["progress"]["running"] <= 4 - len(ran)
        if len(ran) < 4:
            assert got["status"] == "running" and got["finished_at"] is None
    assert ran == trial_ids(factory, sweep_id)  # in trial order, each once
    assert messages(tmp_path / "broker") == 4
    got = view(factory, sweep_id)
    assert got["status"] == "succeeded" and got["finished_at"] is not None
    assert got["progress"]["succeeded"] == 4
    values = {t["job_id"]: t["metric_value"] for t in got["trials"]}
    assert all(isinstance(v, float) for v in values.values())
    best = min(values, key=lambda k: values[k])
    assert got["best"]["job_id"] == best and got["best"]["metric_value"] == values[best]
    assert got["best"]["model_id"] is not None
    with session_scope(factory) as session:
        job = session.get(Job, best)
        assert job is not None and job.metrics is not None
        assert job.metrics["val_loss"] == values[best]
    # a second delivery of a finished trial changes nothing
    assert run_trial(factory, celery, ran[0]) == "duplicate"
    assert view(factory, sweep_id)["status"] == "succeeded"


def test_maximize_on_an_evaluation_metric(factory: sessionmaker[Session], celery: Celery) -> None:
    sweep_id = add_sweep(factory, metric={"name": "validation.accuracy"})
    sweeps.advance(factory, celery, sweep_id, Limits())
    for job_id in released(factory, sweep_id):
        run_trial(factory, celery, job_id)
    got = view(factory, sweep_id)
    assert got["metric"] == {"name": "validation.accuracy", "goal": "maximize"}
    best_value = max(t["metric_value"] for t in got["trials"])
    first_best = next(t for t in got["trials"] if t["metric_value"] == best_value)
    assert got["best"]["job_id"] == first_best["job_id"]  # ties: the first trial


def fail_trial(factory: sessionmaker[Session], celery: Celery, job_id: str) -> None:
    """A delivery whose training raised: the task fails the job, then advances its sweep."""
    claim = lifecycle.claim(factory, job_id, SETTINGS)
    assert isinstance(claim, lifecycle.Claim)
    lifecycle.fail(factory, claim, "DivergedError: loss became NaN")
    after_trial(factory, celery, job_id, SETTINGS)


def test_failed_trials_are_never_best_and_a_sweep_of_failures_fails(
    factory: sessionmaker[Session], celery: Celery
) -> None:
    sweep_id = add_sweep(factory)
    sweeps.advance(factory, celery, sweep_id, Limits())
    first, *others = released(factory, sweep_id)
    fail_trial(factory, celery, first)
    for job_id in others:
        assert run_trial(factory, celery, job_id) == "succeeded"
    got = view(factory, sweep_id)
    assert got["status"] == "succeeded" and got["best"]["job_id"] != first
    assert got["trials"][0]["stop_reason"] == "failed"
    assert got["trials"][0]["metric_value"] is None

    failing = add_sweep(factory, parameters={"training.seed": {"values": [1, 2]}})
    sweeps.advance(factory, celery, failing, Limits())
    for job_id in released(factory, failing):
        fail_trial(factory, celery, job_id)
    got = view(factory, failing)
    assert (got["status"], got["best"]) == ("failed", None)
    assert got["finished_at"] is not None


def test_cancel_while_trials_run_and_wait(factory: sessionmaker[Session], celery: Celery) -> None:
    sweep_id = add_sweep(factory, max_parallel=2)
    first, second, *_ = sweeps.advance(factory, celery, sweep_id, Limits())
    claim = lifecycle.claim(factory, first, SETTINGS)
    assert isinstance(claim, lifecycle.Claim)
    sweeps.mark_running(factory, sweep_id)
    with session_scope(factory) as session:
        got = sweeps.serialize_sweep(
            session, sweeps.cancel_sweep(session, sweep_id, owner_of(factory, sweep_id))
        )
    assert (got["status"], got["cancel_requested"]) == ("running", True)
    assert got["progress"] == {
        "trials": 4, "queued": 0, "running": 1, "succeeded": 0, "failed": 0, "cancelled": 3,
    }  # fmt: skip
    # the released-but-unclaimed trial and the held ones never start
    assert run_trial(factory, celery, second) == "duplicate"
    for job_id in trial_ids(factory, sweep_id)[2:]:
        assert lifecycle.claim(factory, job_id, SETTINGS) == "duplicate"
    # the running one sees its flag at the next epoch, ends cancelled; the sweep with it
    assert lifecycle.record_epoch(factory, claim, 1, 0.5, 0.5) is True
    lifecycle.cancel_attempt(factory, claim)
    after_trial(factory, celery, first, SETTINGS)
    got = view(factory, sweep_id)
    assert got["status"] == "cancelled" and got["finished_at"] is not None
    assert got["progress"]["cancelled"] == 4


def test_cancel_after_some_trials_ended(factory: sessionmaker[Session], celery: Celery) -> None:
    sweep_id = add_sweep(factory, max_parallel=1)
    (first,) = sweeps.advance(factory, celery, sweep_id, Limits())
    assert run_trial(factory, celery, first) == "succeeded"
    with session_scope(factory) as session:
        got = sweeps.serialize_sweep(
            session, sweeps.cancel_sweep(session, sweep_id, owner_of(factory, sweep_id))
        )
    assert got["status"] == "cancelled"
    assert got["progress"]["succeeded"] == 1 and got["progress"]["cancelled"] == 3
    assert got["best"]["job_id"] == first  # the best of what ran


def test_the_median_rule_stops_a_bad_trial(factory: sessionmaker[Session], celery: Celery) -> None:
    """Three good trials ran to the end; a fourth with a learning rate 1000 times smaller is
    behind their median from `min_epochs` on: it ends cancelled at that epoch."""
    parameters = {"training.learning_rate": {"values": [0.05, 0.06, 0.07, 0.00005]}}
    rule = {"type": "median", "min_epochs": 3, "min_trials": 3}
    sweep_id = add_sweep(factory, parameters=parameters, max_parallel=1, early_termination=rule)
    sweeps.advance(factory, celery, sweep_id, Limits())
    outcomes = []
    while ready := released(factory, sweep_id):
        outcomes.append(run_trial(factory, celery, ready[0]))
    assert outcomes == ["succeeded", "succeeded", "succeeded", "cancelled"]
    got = view(factory, sweep_id)
    bad = got["trials"][3]
    assert (bad["status"], bad["stop_reason"], bad["epoch"]) == (
        "cancelled", "early_termination", 3,
    )  # fmt: skip
    with session_scope(factory) as session:
        job = session.get(Job, bad["job_id"])
        assert job is not None and job.stopped_epoch == 3
    assert got["status"] == "succeeded"
    # the rule by itself: not before min_epochs, not with fewer than min_trials others
    assert sweeps.should_terminate(factory, bad["job_id"], sweep_id, 3, rule) is not None
    assert sweeps.should_terminate(factory, bad["job_id"], sweep_id, 2, rule) is None
    fewer = {**rule, "min_trials": 4}
    assert sweeps.should_terminate(factory, bad["job_id"], sweep_id, 3, fewer) is None


def test_concurrent_advances_never_exceed_max_parallel(
    factory: sessionmaker[Session], celery: Celery
) -> None:
    sweep_id = add_sweep(
        factory,
        parameters={"training.seed": {"values": list(range(12))}},
        max_parallel=3,
    )
    started: list[str] = []
    barrier = threading.Barrier(8)

    def advance() -> None:
        barrier.wait()
        started.extend(sweeps.advance(factory, celery, sweep_id, Limits()))

    threads = [threading.Thread(target=advance) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(started) == len(set(started)) == 3
    assert released(factory, sweep_id) == sorted(started, key=trial_ids(factory, sweep_id).index)


def test_held_trials_are_never_claimed_or_republished(
    factory: sessionmaker[Session], celery: Celery, tmp_path: Path
) -> None:
    sweep_id = add_sweep(factory, max_parallel=1)
    ids = trial_ids(factory, sweep_id)
    assert lifecycle.claim(factory, ids[0], SETTINGS) == "held"
    assert lifecycle.reconcile(factory, celery, SETTINGS) == []
    with session_scope(factory) as session:
        assert session.get(Job, ids[0]).status == "queued"  # type: ignore[union-attr]
    assert messages(tmp_path / "broker") == 0


def test_the_maintenance_sweep_takes_the_step_a_lost_worker_left(
    factory: sessionmaker[Session], celery: Celery, tmp_path: Path
) -> None:
    sweep_id = add_sweep(factory, max_parallel=1)
    (first,) = sweeps.advance(factory, celery, sweep_id, Limits())
    # the trial ends, and its worker dies before it could start the next
    assert run_job(factory, first, SETTINGS) == "succeeded"
    assert released(factory, sweep_id) == []
    maintenance_sweep(factory, celery, SETTINGS)
    assert released(factory, sweep_id) == trial_ids(factory, sweep_id)[1:2]
    with session_scope(factory) as session:
        assert session.get(Job, trial_ids(factory, sweep_id)[1]).published_at is not None  # type: ignore[union-attr]
    for job_id in trial_ids(factory, sweep_id)[1:]:
        run_job(factory, job_id, SETTINGS)  # every worker lost its step ...
        maintenance_sweep(factory, celery, SETTINGS)  # ... and maintenance took it
    assert view(factory, sweep_id)["status"] == "succeeded"


def test_a_broker_down_leaves_started_trials_to_the_reconciler(
    factory: sessionmaker[Session], tmp_path: Path
) -> None:
    down = broker("redis://127.0.0.1:1/0")
    sweep_id = add_sweep(factory, max_parallel=2)
    started = sweeps.advance(factory, down, sweep_id, Limits())
    assert len(started) == 2
    with session_scope(factory) as session:
        rows = session.scalars(sa.select(Job).where(Job.id.in_(started))).all()
        assert all(j.published_at is None and not j.held for j in rows)
    up = broker(f"filesystem://{(tmp_path / 'up').as_posix()}")
    later = dataclasses.replace(SETTINGS, republish_after=60.0)
    import datetime

    now = lifecycle.utcnow() + datetime.timedelta(seconds=10)
    assert sorted(lifecycle.reconcile(factory, up, later, now=now)) == sorted(started)


def test_the_owner_cap_holds_trials_back(factory: sessionmaker[Session], celery: Celery) -> None:
    limits = Limits(max_active_jobs=2)
    sweep_id = add_sweep(factory, limits=limits)
    assert len(sweeps.advance(factory, celery, sweep_id, limits)) == 2
    assert sweeps.advance(factory, celery, sweep_id, limits) == []


def test_sweep_rows_are_only_the_owners(factory: sessionmaker[Session]) -> None:
    sweep_id = add_sweep(factory)
    with session_scope(factory) as session:
        with pytest.raises(ApiError) as info:
            sweeps.get_sweep(session, sweep_id, "bob")
        assert getattr(info.value, "status", None) == 404
        assert session.get(Sweep, sweep_id) is not None
