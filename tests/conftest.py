"""Shared fixtures: real databases (SQLite file, a fresh PostgreSQL database) and real Redis.

The helpers behind them live in `tests.support` (shared with the benchmarks). Nothing here is
mocked.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from service.db import make_engine, make_sessionmaker
from tests.support import REDIS_URL, empty_tables, fresh_pg_database, migrate
from tests.support.s3 import S3Server, start_s3_server


@pytest.fixture(scope="session")
def pg_database_url() -> Iterator[str]:
    """A fresh, migrated PostgreSQL database for the test session, dropped afterwards."""
    with fresh_pg_database() as url:
        yield url


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file migrated once per session (`alembic upgrade head`, as production does)."""
    path = tmp_path_factory.mktemp("sqlite-template") / "trainyard.sqlite3"
    migrate(f"sqlite:///{path}")
    return path


@pytest.fixture
def sqlite_database_url(sqlite_template: Path, tmp_path: Path) -> str:
    """A fresh, migrated SQLite database file for one test: a copy of the session's template
    (migrating each test's file in a subprocess cost two seconds a test)."""
    path = tmp_path / "trainyard.sqlite3"
    shutil.copyfile(sqlite_template, path)
    return f"sqlite:///{path}"


@pytest.fixture
def redis_url() -> Iterator[str]:
    """A Redis database number of its own for one test, flushed before and after."""
    import redis

    # keep parallel runs apart: pytest-xdist's workers of one run by their number, from a start
    # drawn per run (its run id), other runs by pid; db 0 is left to the developer
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if worker.startswith("gw"):
        run = int(os.environ.get("PYTEST_XDIST_TESTRUNUID", "0")[:8] or "0", 16)
        db = 8 + (run + int(worker[2:])) % 7
    else:
        db = 8 + os.getpid() % 7
    url = f"{REDIS_URL}/{db}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    try:
        yield url
    finally:
        client.flushdb()
        client.close()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def factory(request: pytest.FixtureRequest) -> Iterator[sessionmaker[Session]]:
    """A session factory on an empty, migrated store: a SQLite file of the test's own, or the
    session's PostgreSQL database with every table emptied first."""
    if request.param == "sqlite":
        engine = make_engine(request.getfixturevalue("sqlite_database_url"))
    else:
        engine = make_engine(request.getfixturevalue("pg_database_url"))
        empty_tables(engine)
    yield make_sessionmaker(engine)
    engine.dispose()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A real S3-compatible server (SeaweedFS `weed mini`, `tests.support.s3`) for the session,
    started only when a test asks for it (about 2 s). While it runs, its `AWS_ENDPOINT_URL`,
    `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and `AWS_DEFAULT_REGION` are set in
    `os.environ`, so this process and every subprocess the tests start (`base_env()` copies
    `os.environ`) reach it; `TRAINYARD_STORE_URL` is not (base_env drops TRAINYARD_*): pass it."""
    folder = tmp_path_factory.mktemp("s3")
    with start_s3_server(folder) as server, pytest.MonkeyPatch.context() as env:
        for name, value in server.env().items():
            env.setenv(name, value)
        yield server


@pytest.fixture(scope="session")
def s3_store_url(s3_server: S3Server) -> str:
    """`s3://<bucket>/<unique prefix>` on the session's S3 server, the AWS_* variables set."""
    return s3_server.url()
