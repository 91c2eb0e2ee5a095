"""Alembic owns the schema: it builds on SQLite and PostgreSQL and matches the models."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.conftest import ROOT, create_pg_database, drop_pg_database


def alembic(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "alembic", *args],
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": database_url},
        capture_output=True,
        text=True,
        timeout=120,
    )


def check_round_trip(url: str) -> None:
    up = alembic(url, "upgrade", "head")
    assert up.returncode == 0, up.stderr
    tables = set(sa.inspect(sa.create_engine(url)).get_table_names())
    assert {"datasets", "jobs", "job_epochs", "models", "alembic_version"} <= tables

    check = alembic(url, "check")
    assert check.returncode == 0, check.stdout + check.stderr
    assert "No new upgrade operations detected" in check.stdout + check.stderr

    down = alembic(url, "downgrade", "base")
    assert down.returncode == 0, down.stderr
    tables = set(sa.inspect(sa.create_engine(url)).get_table_names())
    assert tables <= {"alembic_version"}


def test_sqlite_upgrade_check_downgrade(tmp_path: Path) -> None:
    check_round_trip(f"sqlite:///{tmp_path / 'db.sqlite3'}")


@pytest.mark.postgres
def test_postgres_upgrade_check_downgrade() -> None:
    url = create_pg_database()
    try:
        check_round_trip(url)
    finally:
        drop_pg_database(url)
