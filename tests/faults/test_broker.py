"""Faults 4 and 5: Redis restarts and loses its memory, or is down or hung when a job is
submitted. The SQL store knows every queued job; the reconciler publishes again what the broker
lost or never got, so every accepted job still runs, once.

Each test runs its own Redis server (the flags of `.ci/run`, a free port) and stops it with
`redis-cli shutdown nosave`, then starts it again on the same port: the shared server on 6379,
which other test runs on this machine may be using, is never touched.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
import redis
import requests
import sqlalchemy as sa

from service.db import session_scope
from service.tables import Job
from tests.support import STEADY, Api, Cluster, Processes, RedisServer

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]


@pytest.fixture
def cluster_on_own_redis(
    pg_url: str, redis_server: RedisServer, procs: Processes
) -> Iterator[Cluster]:
    c = Cluster(pg_url, redis_server.url, procs)
    try:
        yield c
    finally:
        procs.stop_all()
        c.engine.dispose()


def test_redis_restart_loses_queued_messages_and_the_reconciler_publishes_them(
    cluster_on_own_redis: Cluster, redis_server: RedisServer
) -> None:
    """Fault 4: `redis-cli shutdown nosave` while one job trains and two wait in the queue."""
    cluster = cluster_on_own_redis
    worker = cluster.worker("w1", TRAINYARD_REPUBLISH_AFTER="4")
    running = cluster.add_job(epochs=120, **STEADY)  # still training when Redis goes
    waiting = [cluster.add_job(epochs=30), cluster.add_job(epochs=30)]
    cluster.wait(running, ("running",), min_epoch=2, timeout=60)
    broker = redis.Redis.from_url(cluster.broker_url)
    assert broker.llen("celery") == 2
    redis_server.stop()
    time.sleep(1.0)
    redis_server.start()
    assert broker.llen("celery") == 0  # the queued messages are gone with Redis's memory
    for job_id in [running, *waiting]:
        cluster.wait(job_id, timeout=90)
        job = cluster.job(job_id)
        assert job.status == "succeeded" and cluster.models(job_id) == 1
        assert cluster.epochs(job_id) == list(range(1, job.epochs + 1))
    for job_id in waiting:
        assert cluster.job(job_id).attempts == 1
    assert "reconciler: published job" in worker.text()
    broker.close()


def submit(
    cluster: Cluster, api_url: str, headers: dict[str, str], dataset_id: str
) -> tuple[requests.Response, float]:
    body = {
        "dataset_id": dataset_id,
        "model": {"layers": [4, 1]},
        "training": {"loss": "mse", "epochs": 20, "batch_size": None},
    }
    t0 = time.monotonic()
    r = requests.post(f"{api_url}/api/v1/jobs", json=body, headers=headers, timeout=60)
    return r, time.monotonic() - t0


def check_accepted_or_refused(
    cluster: Cluster, r: requests.Response, elapsed: float, seen_ids: set[str]
) -> None:
    assert elapsed < 10.0, f"the API took {elapsed:.1f}s"
    assert r.status_code in (202, 503), r.text
    assert r.headers["Content-Type"].startswith("application/json")
    if r.status_code == 202:
        job_id = r.json()["id"]
        assert cluster.job(job_id).status == "queued"
        seen_ids.add(job_id)


@pytest.fixture
def api_cluster(cluster_on_own_redis: Cluster) -> tuple[Cluster, Api]:
    cluster = cluster_on_own_redis
    cluster.worker("w1")
    return cluster, cluster.api()


def no_orphans(cluster: Cluster, accepted: set[str]) -> None:
    """Every job in the store was answered 202 and ends succeeded (nothing left queued)."""
    with session_scope(cluster.factory) as session:
        stored = set(session.scalars(sa.select(Job.id)))
    assert stored == accepted
    for job_id in accepted:
        cluster.wait(job_id, timeout=60)
        cluster.assert_succeeded_once(job_id, attempts=1)


def test_redis_down_at_submit(api_cluster: tuple[Cluster, Api], redis_server: RedisServer) -> None:
    """Fault 5 (down): the API answers at once; the job is published when Redis is back."""
    cluster, api = api_cluster
    dataset_id = cluster.add_dataset()
    accepted: set[str] = set()
    redis_server.stop()
    try:
        for _ in range(2):
            r, elapsed = submit(cluster, api.base, dict(api.http.headers), dataset_id)
            check_accepted_or_refused(cluster, r, elapsed, accepted)
        assert api.http.get(f"{api.base}/readyz", timeout=10).status_code == 503
    finally:
        redis_server.start()
    no_orphans(cluster, accepted)


def test_redis_hung_at_submit(api_cluster: tuple[Cluster, Api]) -> None:
    """Fault 5 (hung): `CLIENT PAUSE 6000 ALL` holds every command; the publish times out
    (TRAINYARD_BROKER_SOCKET_TIMEOUT) instead of hanging the request."""
    cluster, api = api_cluster
    dataset_id = cluster.add_dataset()
    accepted: set[str] = set()
    control = redis.Redis.from_url(cluster.broker_url)
    control.execute_command("CLIENT", "PAUSE", "6000", "ALL")
    results: list[tuple[requests.Response, float]] = []
    headers = dict(api.http.headers)
    threads = [
        threading.Thread(target=lambda: results.append(submit(cluster, api.base, headers,
                                                              dataset_id)))
        for _ in range(3)
    ]  # fmt: skip
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(results) == 3
    for r, elapsed in results:
        check_accepted_or_refused(cluster, r, elapsed, accepted)
    time.sleep(max(0.0, 6.5 - max(e for _, e in results)))  # the pause is over
    control.close()
    no_orphans(cluster, accepted)
