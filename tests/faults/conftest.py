"""Fixtures for fault injection against real processes: a fresh PostgreSQL database, a Redis
database or a Redis server of the test's own, and the cluster of store, broker and workers
(`tests.support.cluster`).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import Cluster, Processes, RedisServer, fresh_pg_database


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Processes]:
    """The test's subprocesses (tests.support.Processes), stopped at the end."""
    processes = Processes(tmp_path)
    try:
        yield processes
    finally:
        processes.stop_all()


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh, migrated PostgreSQL database of this test only (the sweep acts on every job)."""
    with fresh_pg_database() as url:
        yield url


@pytest.fixture
def cluster(pg_url: str, redis_url: str, procs: Processes) -> Iterator[Cluster]:
    c = Cluster(pg_url, redis_url, procs)
    try:
        yield c
    finally:
        procs.stop_all()
        c.engine.dispose()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    folder = tmp_path / "redis"
    folder.mkdir()
    server = RedisServer(folder)
    server.start()
    try:
        yield server
    finally:
        if server.alive():
            server.stop()
