"""A sweep's trials under the faults of the Reliability section, with real `celery worker`
processes: a worker SIGKILLed mid-trial, and Redis restarting (losing a started trial's
message). The sweep still ends `succeeded` with every trial succeeded exactly once (one model,
a contiguous history), and never more than `max_parallel` trials ran at once.
"""

from __future__ import annotations

import time

import pytest
import sqlalchemy as sa

from service import sweeps
from service.config import Limits
from service.db import session_scope
from service.schemas import SweepInSchema
from service.tables import Job, Sweep
from tests.faults.test_broker import cluster_on_own_redis  # noqa: F401 (a fixture)
from tests.support import STEADY, Cluster, RedisServer, kill_group

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]


def submit(cluster: Cluster, epochs: int, n_trials: int, max_parallel: int) -> str:
    """A sweep made as the API makes it (validated, trials held), then advanced."""
    dataset_id = cluster.add_dataset(STEADY["n"])
    body = {
        "dataset_id": dataset_id,
        "base": {
            "model": {"layers": STEADY["layers"], "activation": "tanh"},
            "training": {"loss": "mse", "optimizer": "sgd", "learning_rate": 0.01,
                         "epochs": epochs, "batch_size": STEADY["batch_size"]},
        },
        "parameters": {"training.seed": {"values": list(range(n_trials))}},
        "max_parallel": max_parallel,
    }  # fmt: skip
    with session_scope(cluster.factory) as session:
        owner = session.scalar(sa.text("SELECT owner FROM datasets WHERE id = :id"),
                               {"id": dataset_id})  # fmt: skip
        sweep = sweeps.create_sweep(session, SweepInSchema().load(body), Limits(), owner)
        sweep_id = sweep.id
    sweeps.advance(cluster.factory, cluster.celery, sweep_id, Limits())
    return sweep_id


def trials(cluster: Cluster, sweep_id: str) -> list[Job]:
    with session_scope(cluster.factory) as session:
        return list(
            session.scalars(
                sa.select(Job).where(Job.sweep_id == sweep_id).order_by(Job.trial_index)
            )
        )


def sweep_status(cluster: Cluster, sweep_id: str) -> str:
    with session_scope(cluster.factory) as session:
        return str(session.scalar(sa.select(Sweep.status).where(Sweep.id == sweep_id)))


def wait_sweep(cluster: Cluster, sweep_id: str, timeout: float) -> list[Job]:
    """Wait for the sweep to end; meanwhile check max_parallel (running trials)."""
    deadline = time.monotonic() + timeout
    most = 0
    while time.monotonic() < deadline:
        rows = trials(cluster, sweep_id)
        most = max(most, sum(j.status == "running" for j in rows))
        if sweep_status(cluster, sweep_id) in ("succeeded", "failed", "cancelled"):
            return rows
        time.sleep(0.05)
    raise AssertionError(
        f"sweep still {sweep_status(cluster, sweep_id)}: "
        f"{[(j.status, j.attempts) for j in trials(cluster, sweep_id)]}\n{cluster.logs()}"
    )


def assert_every_trial_once(cluster: Cluster, rows: list[Job]) -> None:
    for job in rows:
        assert job.status == "succeeded", (job.id, job.status, job.error)
        assert cluster.models(job.id) == 1
        assert cluster.epochs(job.id) == list(range(1, job.epochs + 1))


def running_trials(
    cluster: Cluster, sweep_id: str, n: int, min_epoch: int, timeout: float
) -> list[Job]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        running = [
            j for j in trials(cluster, sweep_id) if j.status == "running" and j.epoch >= min_epoch
        ]
        if len(running) >= n:
            return running
        time.sleep(0.05)
    raise AssertionError(f"not {n} trials running\n{cluster.logs()}")


def test_a_worker_killed_mid_trial(cluster: Cluster) -> None:
    """Fault 2 for a trial: the worker and its pool die together. The other worker's reaper
    hands the trial back, the reconciler publishes it, and the sweep goes on to its end."""
    doomed = cluster.worker("doomed")
    cluster.worker("survivor")
    sweep_id = submit(cluster, epochs=30, n_trials=4, max_parallel=2)
    # each worker trains one trial (prefetch one): killing one kills a running trial
    running_trials(cluster, sweep_id, n=2, min_epoch=2, timeout=60)
    kill_group(doomed)
    rows = wait_sweep(cluster, sweep_id, timeout=180)
    assert sweep_status(cluster, sweep_id) == "succeeded"
    assert_every_trial_once(cluster, rows)
    assert sorted(j.attempts for j in rows) == [1, 1, 1, 2]


def test_a_redis_restart_loses_a_started_trials_message(
    cluster_on_own_redis: Cluster,  # noqa: F811
    redis_server: RedisServer,
) -> None:
    """Fault 4 for a sweep: one worker, max_parallel 2: one trial trains, the second waits in
    Redis. Redis restarts with nothing; the reconciler publishes the second again, and the
    held trials (in SQL only) start as the others end."""
    cluster = cluster_on_own_redis
    worker = cluster.worker("w1", TRAINYARD_REPUBLISH_AFTER="4")
    sweep_id = submit(cluster, epochs=60, n_trials=4, max_parallel=2)  # outlasts the restart
    running_trials(cluster, sweep_id, n=1, min_epoch=2, timeout=60)
    redis_server.stop()
    time.sleep(1.0)
    redis_server.start()
    rows = wait_sweep(cluster, sweep_id, timeout=180)
    assert sweep_status(cluster, sweep_id) == "succeeded"
    assert_every_trial_once(cluster, rows)
    assert all(j.attempts == 1 for j in rows)
    assert "reconciler: published job" in worker.text()
