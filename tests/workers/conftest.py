"""Fixtures for the worker tests: a session factory on a real SQLite file and on PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy.orm import Session, sessionmaker

from service.db import make_engine, make_sessionmaker


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def factory(request: pytest.FixtureRequest) -> Iterator[sessionmaker[Session]]:
    if request.param == "sqlite":
        url = request.getfixturevalue("sqlite_database_url")
    else:
        url = request.getfixturevalue("pg_database_url")
    engine = make_engine(url)
    yield make_sessionmaker(engine)
    engine.dispose()
