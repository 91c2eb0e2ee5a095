"""Security against the real server: gunicorn (several worker processes, several threads each)
on PostgreSQL and Redis. Twenty concurrent posts with one Idempotency-Key make one job; the rate
limit is counted in Redis, so it holds across API processes and servers."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
import redis
import requests
import sqlalchemy as sa

from tests.support import Api, Processes, api_cmd, base_env, free_port, new_api_key

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]


def start_api(
    processes: Processes,
    database_url: str,
    broker_url: str,
    owner: str,
    workers: int = 4,
    **env: str,
) -> Api:
    port = free_port()
    environment = base_env(DATABASE_URL=database_url, CELERY_BROKER_URL=broker_url, **env)
    server = processes.start("api", api_cmd(port, workers=workers, threads=5), environment)
    api = Api(f"http://127.0.0.1:{port}", server, new_api_key(database_url, owner))
    api.wait_ready(60)
    return api


def test_twenty_concurrent_posts_with_one_key_make_one_job(
    pg_database_url: str, redis_url: str, processes: Processes
) -> None:
    owner = f"burst-{uuid.uuid4().hex[:8]}"
    api = start_api(processes, pg_database_url, redis_url, owner)
    dataset_id = api.post(
        "/datasets", {"name": "d", "features": [[0, 1], [1, 0]], "targets": [0, 1]}, 201
    )["id"]
    body = {"dataset_id": dataset_id, "model": {"layers": [4, 1]},
            "training": {"loss": "binary_cross_entropy", "epochs": 2}}  # fmt: skip
    headers = {**api.http.headers, "Idempotency-Key": str(uuid.uuid4())}
    start = threading.Barrier(20)
    answers: list[requests.Response | None] = [None] * 20

    def post(i: int) -> None:
        start.wait(timeout=30)
        # a connection of its own per request: the 20 land on gunicorn's different processes
        answers[i] = requests.post(f"{api.base}/api/v1/jobs", json=body, headers=headers,
                                   timeout=60)  # fmt: skip

    threads = [threading.Thread(target=post, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=90)
    statuses = [a.status_code if a is not None else None for a in answers]
    assert statuses == [202] * 20, [a.text[:200] for a in answers if a is not None]
    assert len({a.json()["id"] for a in answers if a is not None}) == 1
    assert sum(a is not None and "Idempotent-Replayed" not in a.headers for a in answers) == 1
    engine = sa.create_engine(pg_database_url)
    try:
        with engine.connect() as conn:
            jobs = conn.scalar(sa.text("SELECT count(*) FROM jobs WHERE owner = :o"), {"o": owner})
    finally:
        engine.dispose()
    assert jobs == 1
    assert redis.Redis.from_url(redis_url).llen("celery") == 1  # published once


def test_rate_limit_is_shared_by_api_servers(
    pg_database_url: str, redis_url: str, processes: Processes
) -> None:
    """Two gunicorn servers (as behind a load balancer) with one Redis: requests alternating
    between them are counted together, whichever process serves them."""
    owner = f"rate-{uuid.uuid4().hex[:8]}"
    env = {"TRAINYARD_RATE_LIMIT": "20/minute"}
    first = start_api(processes, pg_database_url, redis_url, owner, workers=1, **env)
    second = start_api(processes, pg_database_url, redis_url, owner, workers=1, **env)
    second.authenticate(first.http.headers["Authorization"].split()[1])  # one key for both

    if time.time() % 60 > 50:  # leave the fixed window room for the whole burst
        time.sleep(61 - time.time() % 60)
    answers = []
    for i in range(30):
        api = (first, second)[i % 2]
        answers.append(api.http.get(f"{api.base}/api/v1/jobs", timeout=30))
    assert [r.status_code for r in answers] == [200] * 20 + [429] * 10
    limited = answers[-1]
    assert limited.json()["error"]["code"] == "rate_limited"
    assert 1 <= int(limited.headers["Retry-After"]) <= 60
    assert len(redis.Redis.from_url(redis_url).keys("trainyard:ratelimit:*")) == 1
    # probes are not limited
    assert first.http.get(f"{first.base}/healthz", timeout=10).status_code == 200
