"""The distributed mode on this machine, for the service benchmarks (not a test).

A fresh PostgreSQL database (dropped afterwards), a flushed local Redis database as the broker,
the API under gunicorn, and `celery worker` processes (concurrency 1 each) started on demand.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402

from tests.support import (  # noqa: E402
    REDIS_URL,
    Api,
    Proc,
    Processes,
    api_cmd,
    base_env,
    free_port,
    fresh_pg_database,
    new_api_key,
    worker_cmd,
)


@dataclass
class Cluster:
    database_url: str
    env: dict[str, str]
    procs: Processes
    api: Api
    key: str
    workers: list[Proc] = field(default_factory=list)

    def scale(self, n: int) -> None:
        """Start workers until `n` run, each ready before this returns."""
        while len(self.workers) < n:
            i = len(self.workers)
            worker = self.procs.start(f"w{i + 1}", worker_cmd(f"bench{i}"), self.env)
            worker.wait_for_output(" ready.", 90)
            self.workers.append(worker)


@contextmanager
def cluster(
    name: str,
    redis_db: int,
    workers: int = 0,
    *,
    logs: Path | None = None,
    env: dict[str, str] | None = None,
) -> Iterator[Cluster]:
    """The API (with an API key of owner `name`) and `workers` workers on a fresh PostgreSQL
    database and Redis database `redis_db` (flushed); logs in `logs` (default var/<name>/),
    `env` added to every process's environment."""
    broker_url = f"{REDIS_URL}/{redis_db}"
    broker = redis.Redis.from_url(broker_url)
    broker.flushdb()
    folder = logs or ROOT / "var" / name
    folder.mkdir(parents=True, exist_ok=True)
    procs = Processes(folder)
    try:
        with fresh_pg_database() as database_url:
            environ = base_env(
                DATABASE_URL=database_url, CELERY_BROKER_URL=broker_url, **(env or {})
            )
            port = free_port()
            server = procs.start("api", api_cmd(port), environ)
            key = new_api_key(database_url, name)
            api = Api(f"http://127.0.0.1:{port}", server, key)
            api.wait_ready(60)
            c = Cluster(database_url, environ, procs, api, key)
            c.scale(workers)
            try:
                yield c
            finally:
                procs.stop_all()
    finally:
        procs.stop_all()
        broker.flushdb()
        broker.close()
