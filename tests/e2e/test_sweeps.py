"""Sweeps end to end in the distributed mode: PostgreSQL + Redis, the API under gunicorn and TWO
`celery worker` processes. A grid runs its trials in parallel on both workers within
`max_parallel`, ends with its best trial (an ordinary job and model); a sweep with the median
rule stops its bad trials; a running sweep is cancelled through the API.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
import redis

from tests.support import (
    REDIS_URL,
    Api,
    Processes,
    api_cmd,
    base_env,
    free_port,
    fresh_pg_database,
    new_api_key,
    worker_cmd,
)
from tests.workers.datasets import moons

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]

REDIS_DB = 3  # tests/e2e/test_distributed.py 15, the shared fixture 8..14, benchmarks 4 and 5


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    broker = f"{REDIS_URL}/{REDIS_DB}"
    client = redis.Redis.from_url(broker)
    client.flushdb()
    procs = Processes(tmp_path_factory.mktemp("sweeps"))
    try:
        with fresh_pg_database() as database_url:
            env = base_env(DATABASE_URL=database_url, CELERY_BROKER_URL=broker)
            workers = [procs.start(name, worker_cmd(name), env) for name in ("w1", "w2")]
            port = free_port()
            server = procs.start("api", api_cmd(port), env)
            client_api = Api(f"http://127.0.0.1:{port}", server, new_api_key(database_url))
            client_api.wait_ready(60)
            for worker in workers:
                worker.wait_for_output(" ready.", 60)
            try:
                yield client_api
            finally:
                procs.stop_all()
    finally:
        procs.stop_all()
        client.flushdb()
        client.close()


def wait_sweep(api: Api, sweep_id: str, timeout: float = 180.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    sweep: dict[str, Any] = {}
    while time.monotonic() < deadline:
        sweep = api.get(f"/sweeps/{sweep_id}").json()
        if sweep["status"] in ("succeeded", "failed", "cancelled"):
            return sweep
        time.sleep(0.2)
    raise AssertionError(f"sweep still {sweep.get('status')}: {sweep.get('progress')}")


def intervals(api: Api, sweep_id: str) -> list[tuple[datetime, datetime]]:
    jobs = api.get(f"/jobs?sweep_id={sweep_id}&page_size=100").json()["items"]
    return [
        (datetime.fromisoformat(j["started_at"]), datetime.fromisoformat(j["finished_at"]))
        for j in jobs
        if j["started_at"]
    ]


def most_at_once(spans: list[tuple[datetime, datetime]]) -> int:
    events = sorted([(a, 1) for a, _ in spans] + [(b, -1) for _, b in spans])
    most = now = 0
    for _, step in events:
        now += step
        most = max(most, now)
    return most


def test_a_grid_runs_on_both_workers_and_keeps_the_best(api: Api) -> None:
    x, y = moons(200)
    dataset_id = api.dataset(x, y, "moons")
    body = {
        "name": "width and lr",
        "tags": {"project": "e2e"},
        "dataset_id": dataset_id,
        "base": {
            "model": {"layers": [16, 1], "activation": "tanh"},
            "training": {"loss": "binary_cross_entropy", "optimizer": "adam", "epochs": 60,
                         "validation_split": 0.2, "seed": 0},
        },
        "parameters": {
            "training.learning_rate": {"values": [0.001, 0.03]},
            "model.layers": {"values": [[16, 1], [32, 32, 1]]},
        },
        "max_parallel": 2,
    }  # fmt: skip
    r = api.http.post(f"{api.base}/api/v1/sweeps", json=body, timeout=30)
    assert r.status_code == 202, r.text
    sweep_id = r.json()["id"]
    assert r.headers["Location"] == f"/api/v1/sweeps/{sweep_id}"
    sweep = wait_sweep(api, sweep_id)
    assert sweep["status"] == "succeeded", sweep
    assert sweep["progress"]["succeeded"] == 4
    values = [t["metric_value"] for t in sweep["trials"]]
    best = min(range(4), key=lambda i: values[i])
    assert sweep["best"]["job_id"] == sweep["trials"][best]["job_id"]
    assert sweep["best"]["params"]["training.learning_rate"] == 0.03
    # the best trial is an ordinary job with an ordinary model
    job = api.get(f"/jobs/{sweep['best']['job_id']}").json()
    assert job["sweep_id"] == sweep_id and job["tags"] == {"project": "e2e"}
    assert job["metrics"]["val_loss"] == sweep["best"]["metric_value"]
    model = api.get(f"/models/{sweep['best']['model_id']}").json()
    assert model["job_id"] == job["id"]
    # both workers trained at once, never more than max_parallel
    assert most_at_once(intervals(api, sweep_id)) == 2
    listed = api.get("/sweeps?tag=project:e2e").json()["items"]
    assert [s["id"] for s in listed] == [sweep_id]


def test_cancel_a_running_sweep(api: Api) -> None:
    x, y = moons(100)
    dataset_id = api.dataset(x, y, "moons")
    body = {
        "dataset_id": dataset_id,
        "base": {
            "model": {"layers": [8, 1]},
            "training": {"loss": "binary_cross_entropy", "epochs": 5000},
        },
        "parameters": {"training.seed": {"values": list(range(6))}},
        "max_parallel": 2,
    }
    sweep_id = api.post("/sweeps", body, 202)["id"]
    deadline = time.monotonic() + 60
    while api.get(f"/sweeps/{sweep_id}").json()["progress"]["running"] < 2:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    sweep = api.post(f"/sweeps/{sweep_id}/cancel", {}, 200)
    assert sweep["cancel_requested"] is True
    sweep = wait_sweep(api, sweep_id, timeout=60)
    assert sweep["status"] == "cancelled"
    assert sweep["progress"]["cancelled"] == 6
    started = [t for t in sweep["trials"] if t["epoch"] > 0]
    assert len(started) == 2  # the queued ones never started


def test_the_median_rule_stops_bad_trials(api: Api) -> None:
    x, y = moons(200)
    dataset_id = api.dataset(x, y, "moons")
    body = {
        "dataset_id": dataset_id,
        "base": {
            "model": {"layers": [16, 1]},
            "training": {"loss": "binary_cross_entropy", "optimizer": "adam", "epochs": 40,
                         "validation_split": 0.2},
        },
        "parameters": {"training.learning_rate": {"values": [0.05, 0.04, 0.03, 1e-5, 2e-5]}},
        "max_parallel": 1,
        "early_termination": {"type": "median", "min_epochs": 5, "min_trials": 3},
    }  # fmt: skip
    sweep_id = api.post("/sweeps", body, 202)["id"]
    sweep = wait_sweep(api, sweep_id)
    assert sweep["status"] == "succeeded"
    reasons = [t["stop_reason"] for t in sweep["trials"]]
    assert reasons[:3] == ["completed"] * 3
    assert reasons[3:] == ["early_termination"] * 2
    assert all(t["epoch"] == 5 for t in sweep["trials"][3:])
