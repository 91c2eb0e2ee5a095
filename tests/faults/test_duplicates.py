"""Fault 3: the same message delivered twice. Redis hands an unacknowledged message to another
worker once the visibility timeout (3 s here) has passed, while the first worker still trains
the job: one execution (one attempt, one contiguous history), one model.
"""

from __future__ import annotations

import time

import pytest

from tests.support import Cluster

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]


def test_message_delivered_twice_runs_once(cluster: Cluster) -> None:
    short = {"TRAINYARD_VISIBILITY_TIMEOUT": "3", "TRAINYARD_STALE_AFTER": "5"}
    workers = [cluster.worker(name, **short) for name in ("w1", "w2")]
    # long enough to outlast the visibility timeout and Redis' restore of the unacknowledged
    # message however fast the machine (2,000 epochs of the tiny job took 3.9 s on an idle one:
    # too short): about 10 s of training on an idle 2-core machine, in 250 epochs of 128
    # minibatches rather than 8,000 tiny epochs, whose commits took 54 s on a busy one
    job_id = cluster.add_job(epochs=250, n=2048, layers=[32, 32, 1], batch_size=16)
    cluster.wait(job_id, ("running",), timeout=60)
    started = cluster.job(job_id).started_at

    def deliveries() -> int:
        return sum(w.text().count("received") for w in workers)

    deadline = time.monotonic() + 30
    while deliveries() < 2:
        assert time.monotonic() < deadline, cluster.logs()
        time.sleep(0.2)
    job = cluster.wait(job_id, timeout=120)
    assert job.started_at == started
    cluster.assert_succeeded_once(job_id, attempts=1)
    # the second delivery saw the live attempt (or the finished job) and did not train it
    logs = "".join(w.text() for w in workers)
    assert f"job {job_id} is running elsewhere" in logs or f"job {job_id}: duplicate" in logs
