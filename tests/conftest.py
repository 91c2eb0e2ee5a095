"""Shared fixtures: real databases (SQLite file, a fresh PostgreSQL database) and real Redis.

The helpers behind them live in `tests.support` (shared with the benchmarks). Nothing here is
mocked.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import REDIS_URL, fresh_pg_database, migrate


@pytest.fixture(scope="session")
def pg_database_url() -> Iterator[str]:
    """A fresh, migrated PostgreSQL database for the test session, dropped afterwards."""
    with fresh_pg_database() as url:
        yield url


@pytest.fixture
def sqlite_database_url(tmp_path: Path) -> str:
    """A fresh, migrated SQLite database file for one test."""
    url = f"sqlite:///{tmp_path / 'trainyard.sqlite3'}"
    migrate(url)
    return url


@pytest.fixture
def redis_url() -> Iterator[str]:
    """A Redis database number of its own for one test, flushed before and after."""
    import redis

    db = 8 + (os.getpid() % 7)  # keep parallel runs apart; db 0 is left to the developer
    url = f"{REDIS_URL}/{db}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    try:
        yield url
    finally:
        client.flushdb()
        client.close()
