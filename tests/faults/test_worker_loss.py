"""Faults 1, 2 and 9: a worker's pool process or the whole worker dies, or is shut down, while it
trains a job. The job ends `succeeded` exactly once (one model, a contiguous history) on a
second attempt, or (too many lost attempts) `failed` with the reason; never `running` for ever.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from tests.support import STEADY, Cluster, Processes, kill_group, pool_children

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]


def test_sigkill_of_the_pool_process_mid_epoch(cluster: Cluster) -> None:
    """Fault 1: the message comes back (reject_on_worker_lost), waits for the dead attempt's
    heartbeat to go stale, and a second attempt runs the job to the end."""
    worker = cluster.worker("w1")
    job_id = cluster.add_job(epochs=75, **STEADY)
    cluster.wait(job_id, ("running",), min_epoch=3, timeout=60)
    children = pool_children(worker)
    assert len(children) == 1
    os.kill(children[0], signal.SIGKILL)
    cluster.wait(job_id, timeout=120)
    cluster.assert_succeeded_once(job_id, attempts=2)


@pytest.mark.parametrize("mode", ["redis", "filesystem"])
def test_kill_9_of_the_whole_worker_then_a_fresh_one(
    mode: str, pg_url: str, redis_url: str, procs: Processes, tmp_path: Path
) -> None:
    """Fault 2: the worker and its pool die together. With Redis the message would come back
    only after the (long, default) visibility timeout; with the filesystem broker of the
    embedded mode it never comes back. The reaper of the fresh worker hands the job back
    (stale heartbeat), the reconciler publishes it, the fresh worker finishes it."""
    if mode == "redis":
        cluster = Cluster(pg_url, redis_url, procs)
    else:
        db = f"sqlite:///{tmp_path / 'embedded.sqlite3'}"
        from tests.support import migrate

        migrate(db)
        cluster = Cluster(db, f"filesystem://{(tmp_path / 'broker').as_posix()}", procs)
    try:
        first = cluster.worker("doomed")
        job_id = cluster.add_job(epochs=40, **STEADY)
        cluster.wait(job_id, ("running",), min_epoch=3, timeout=60)
        kill_group(first)
        assert cluster.job(job_id).status == "running"
        cluster.worker("fresh")
        cluster.wait(job_id, timeout=120)
        cluster.assert_succeeded_once(job_id, attempts=2)
    finally:
        procs.stop_all()
        cluster.engine.dispose()


def test_sigterm_mid_job_waits_for_the_job(cluster: Cluster) -> None:
    """Fault 9 (warm shutdown): SIGTERM lets the running job finish, then the worker exits."""
    worker = cluster.worker("w1")
    job_id = cluster.add_job(epochs=15, **STEADY)
    cluster.wait(job_id, ("running",), min_epoch=2, timeout=60)
    worker.popen.send_signal(signal.SIGTERM)
    assert worker.popen.wait(timeout=90) == 0
    cluster.assert_succeeded_once(job_id, attempts=1)


def test_cold_shutdown_mid_job_hands_the_job_back(cluster: Cluster) -> None:
    """Fault 9 (cold shutdown: SIGTERM, then SIGQUIT, as `workers.embedded` does after its
    grace period): the pool process is stopped mid-job; the job is not left `running`: the
    next worker runs it to the end as a second attempt."""
    worker = cluster.worker("w1")
    job_id = cluster.add_job(epochs=150, **STEADY)
    cluster.wait(job_id, ("running",), min_epoch=2, timeout=60)
    worker.popen.send_signal(signal.SIGTERM)
    time.sleep(1.0)
    worker.popen.send_signal(signal.SIGQUIT)
    worker.popen.wait(timeout=60)
    job = cluster.job(job_id)
    assert job.status in ("running", "queued"), (job.status, job.error, worker.text()[-3000:])
    cluster.worker("w2")
    cluster.wait(job_id, timeout=150)
    cluster.assert_succeeded_once(job_id, attempts=2)
