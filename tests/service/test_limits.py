"""Per-key rate limit (429 with Retry-After; counted in Redis when configured, shared by every
API process) and the per-owner cap on queued + running jobs."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient

from service import create_app
from service.config import Limits
from service.ratelimit import MemoryStorage, Rate, RateLimiter, RedisStorage
from tests.service.helpers import assert_error, keyed_client, new_key, post_dataset

JOB = {"model": {"layers": [4, 1]}, "training": {"loss": "binary_cross_entropy", "epochs": 3}}


def test_rate_parse() -> None:
    assert Rate.parse("600/minute") == Rate(600, 60)
    assert Rate.parse(" 5 / seconds ") == Rate(5, 1)
    assert Rate.parse("10/hour") == Rate(10, 3600)
    for bad in ("", "0/minute", "10/day", "ten/minute", "10"):
        with pytest.raises(ValueError):
            Rate.parse(bad)


def test_fixed_window_counts_and_retry_after() -> None:
    limiter = RateLimiter(Rate(2, 60), MemoryStorage())
    assert limiter.check("k", now=120.0) is None
    assert limiter.check("k", now=130.0) is None
    assert limiter.check("k", now=170.5) == 10  # the window [120, 180) is used up
    assert limiter.check("other", now=170.5) is None  # per key
    assert limiter.check("k", now=180.0) is None  # a new window


@pytest.mark.app_config({"RATE_LIMIT": "5/minute"})
def test_rate_limit_answers_429_with_retry_after(
    app: Flask, client: FlaskClient, bob: FlaskClient, anonymous: FlaskClient
) -> None:
    for _ in range(5):
        assert client.get("/api/v1/jobs").status_code == 200
    r = client.get("/api/v1/jobs")
    error = assert_error(r, 429)
    assert error["code"] == "rate_limited" and "5 requests per 60 s" in error["message"]
    assert 1 <= int(r.headers["Retry-After"]) <= 60
    assert_error(client.post("/api/v1/jobs", json=JOB), 429)  # every route of that key
    assert bob.get("/api/v1/jobs").status_code == 200  # another key has its own count
    # probes and the document are not counted against anyone
    assert anonymous.get("/healthz").status_code == 200
    assert client.get("/api/v1/openapi.json").status_code == 200


@pytest.mark.redis
def test_redis_counter_is_shared_by_api_processes(tmp_path: Path, redis_url: str) -> None:
    """Two app instances (as two gunicorn workers would be) count one key together in Redis."""
    from tests.support import migrate

    database_url = f"sqlite:///{tmp_path / 'db.sqlite3'}"
    migrate(database_url)
    config = {
        "DATABASE_URL": database_url,
        "CELERY_BROKER_URL": f"filesystem://{tmp_path.as_posix()}/broker",
        "RATE_LIMIT": "6/minute",
        "RATE_LIMIT_STORAGE_URL": redis_url,
    }
    first, second = create_app(config), create_app(config)
    try:
        assert isinstance(first.extensions["rate_limiter"].storage, RedisStorage)
        key = new_key(first, "alice")
        a, b = keyed_client(first, key), keyed_client(second, key)
        statuses = [(a if i % 2 else b).get("/api/v1/datasets").status_code for i in range(8)]
        window = int(time.time() // 60)
        if statuses.count(429) == 3:  # crossed into a new window mid-way: try once more
            statuses = [(a if i % 2 else b).get("/api/v1/datasets").status_code for i in range(8)]
        assert statuses == [200] * 6 + [429] * 2
        names = redis.Redis.from_url(redis_url).keys("trainyard:ratelimit:*")
        assert names and all(n.decode().rsplit(":", 1)[1] in (str(window), str(window + 1))
                             for n in names)  # fmt: skip
    finally:
        for app in (first, second):
            app.extensions["db_engine"].dispose()


def test_redis_in_use_when_the_broker_is_redis(tmp_path: Path) -> None:
    app = create_app({"DATABASE_URL": "sqlite://", "CELERY_BROKER_URL": "redis://127.0.0.1:6379/3"})
    assert isinstance(app.extensions["rate_limiter"].storage, RedisStorage)
    app = create_app(
        {"DATABASE_URL": "sqlite://", "CELERY_BROKER_URL": f"filesystem://{tmp_path}/b"}
    )
    assert isinstance(app.extensions["rate_limiter"].storage, MemoryStorage)


@pytest.mark.app_config(
    {"RATE_LIMIT": "2/minute", "RATE_LIMIT_STORAGE_URL": "redis://127.0.0.1:1/0"}
)
def test_unreachable_rate_limit_storage_lets_requests_through_fast(client: FlaskClient) -> None:
    started = time.monotonic()
    for _ in range(5):
        assert client.get("/api/v1/datasets").status_code == 200
    assert time.monotonic() - started < 5


@pytest.mark.app_config({"LIMITS": Limits(max_active_jobs=2)})
def test_cap_on_active_jobs(app: Flask, client: FlaskClient, bob: FlaskClient) -> None:
    dataset_id = post_dataset(client)
    body = {"dataset_id": dataset_id, **JOB}
    first = client.post("/api/v1/jobs", json=body).get_json()["id"]
    assert client.post("/api/v1/jobs", json=body).status_code == 202
    r = client.post("/api/v1/jobs", json=body)
    error = assert_error(r, 429)
    assert error["code"] == "too_many_active_jobs" and "limit is 2" in error["message"]
    assert int(r.headers["Retry-After"]) > 0
    # inline data counts the same, and nothing is stored for a refused job
    inline = {"dataset": {"name": "n", "features": [[1.0]], "targets": [1.0]}, **JOB}
    assert_error(client.post("/api/v1/jobs", json=inline), 429)
    assert client.get("/api/v1/datasets").get_json()["pagination"]["total"] == 1
    # the cap is per owner
    bobs = post_dataset(bob)
    assert bob.post("/api/v1/jobs", json={"dataset_id": bobs, **JOB}).status_code == 202
    # a finished (here: cancelled) job frees its place
    assert client.post(f"/api/v1/jobs/{first}/cancel").status_code == 200
    assert client.post("/api/v1/jobs", json=body).status_code == 202
