"""Fault 6: PostgreSQL cuts the worker's connections (`pg_terminate_backend`) while a job trains.
Connections are pinged on checkout and every store write of a job is retried, so the job still
ends `succeeded`, once, with its whole history.
"""

from __future__ import annotations

import time

import pytest
import sqlalchemy as sa

from tests.support import STEADY, Cluster

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]


def terminate_backends(cluster: Cluster) -> int:
    name = cluster.database_url.rsplit("/", 1)[1]
    with cluster.engine.connect() as conn:
        killed = conn.execute(
            sa.text(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = :name AND pid <> pg_backend_pid()"
            ),
            {"name": name},
        ).scalar_one()
    return int(killed)


def test_connections_cut_while_a_job_trains(cluster: Cluster) -> None:
    worker = cluster.worker("w1")
    # long enough to outlast the 2 s of cuts below however fast the machine (about 8 s idle)
    job_id = cluster.add_job(epochs=200, **STEADY)
    cluster.wait(job_id, ("running",), min_epoch=3, timeout=60)
    killed = 0
    for _ in range(8):
        killed += terminate_backends(cluster)
        time.sleep(0.25)
    assert killed >= 4  # the worker's pool process (epochs, heartbeat) and its main process
    assert cluster.job(job_id).status == "running"
    cluster.wait(job_id, timeout=120)
    cluster.assert_succeeded_once(job_id, attempts=1)
    assert "Traceback" not in worker.text() or "retrying" in worker.text()
