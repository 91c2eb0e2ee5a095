"""Fixtures for the API tests: the app on a real SQLite file and on real PostgreSQL.

The SQLite variant publishes to the embedded broker (kombu's filesystem transport in a temporary
folder), the PostgreSQL variant to the local Redis. Each test starts with empty tables.

`client` sends the API key of owner "alice" with every request; `bob` is another owner's client
and `anonymous` sends no key.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient

from service import create_app
from tests.service.helpers import keyed_client, new_key
from tests.support import empty_tables, migrate


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "app_config(dict): Flask config overrides for `app`")


@pytest.fixture(scope="session")
def sqlite_session_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One migrated SQLite file for the API tests (emptied before each test)."""
    url = f"sqlite:///{tmp_path_factory.mktemp('api-db') / 'trainyard.sqlite3'}"
    migrate(url)
    return url


@pytest.fixture(
    params=["sqlite", pytest.param("postgres", marks=[pytest.mark.postgres, pytest.mark.redis])]
)
def app(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Flask]:
    if request.param == "sqlite":
        database_url = request.getfixturevalue("sqlite_session_url")
        broker_url = f"filesystem://{(tmp_path / 'broker').as_posix()}"
    else:
        database_url = request.getfixturevalue("pg_database_url")
        broker_url = request.getfixturevalue("redis_url")
    overrides = request.node.get_closest_marker("app_config")
    config = {"TESTING": True, "DATABASE_URL": database_url, "CELERY_BROKER_URL": broker_url}
    if overrides:
        config.update(overrides.args[0])
    app = create_app(config)
    app.config["TEST_BROKER_DIR"] = tmp_path / "broker" / "queue"
    empty_tables(app.extensions["db_engine"])
    yield app
    app.extensions["db_engine"].dispose()


@pytest.fixture
def api_key(app: Flask) -> str:
    return new_key(app, "alice")


@pytest.fixture
def client(app: Flask, api_key: str) -> FlaskClient:
    return keyed_client(app, api_key)


@pytest.fixture
def bob(app: Flask) -> FlaskClient:
    """A client of another owner."""
    return keyed_client(app, new_key(app, "bob"))


@pytest.fixture
def anonymous(app: Flask) -> FlaskClient:
    """A client without a key."""
    return app.test_client()


@pytest.fixture
def queued_messages(app: Flask) -> Callable[[], int]:
    """How many messages wait in the broker's default queue."""
    url = app.config["BROKER_URL"]

    def count() -> int:
        if url.startswith("redis://"):
            client = redis.Redis.from_url(url)
            try:
                return int(client.llen("celery"))
            finally:
                client.close()
        folder = Path(app.config["TEST_BROKER_DIR"])
        return len(list(folder.glob("*.msg"))) if folder.exists() else 0

    return count
