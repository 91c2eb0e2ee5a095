"""Alembic owns the schema: it builds on SQLite and PostgreSQL and matches the models."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from core.model import array_to_bytes
from service.datasets import load_data
from service.tables import Dataset
from tests.support import ROOT, create_pg_database, drop_pg_database


def alembic(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "alembic", *args],
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": database_url},
        capture_output=True,
        text=True,
        timeout=120,
    )


def insert_old_dataset(url: str) -> np.ndarray:
    """At revision 1f04a7a8cee0 (before dataset_data): a dataset row holding its float64 `.npy`
    feature matrix and targets itself, as the service stored them then; return the matrix."""
    up = alembic(url, "upgrade", "1f04a7a8cee0")
    assert up.returncode == 0, up.stderr
    features = np.array([[0.5, -1.0], [2.0, 3.25], [4.0, 0.0]])
    with sa.create_engine(url).begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO datasets (id, owner, name, n_samples, n_features, n_targets, "
                "target_kind, classes, feature_names, features, targets, created_at) VALUES "
                "(:id, 'local', 'old', 3, 2, 1, 'numeric', '[0, 1]', NULL, :f, :t, :now)"
            ),
            {
                "id": "a" * 32,
                "f": array_to_bytes(features),
                "now": datetime.now(UTC),
                "t": array_to_bytes(np.array([[0.0], [1.0], [0.0]])),
            },
        )
        # a job on it (a foreign key into datasets that the SQLite table rebuild must survive)
        conn.execute(
            sa.text(
                "INSERT INTO jobs (id, owner, status, dataset_id, model_spec, training_spec, "
                "epoch, epochs, attempts, cancel_requested, created_at) VALUES "
                "(:id, 'local', 'succeeded', :ds, '{}', '{}', 1, 1, 1, false, :now)"
            ),
            {"id": "b" * 32, "ds": "a" * 32, "now": datetime.now(UTC)},
        )
    return features


def check_old_dataset(url: str, features: np.ndarray) -> None:
    with Session(sa.create_engine(url)) as session:
        table, targets = load_data(session, "a" * 32)
        dataset = session.get(Dataset, "a" * 32)
        assert dataset is not None and dataset.feature_names == ["x0", "x1"]
        assert [(c["name"], c["type"], c["missing"]) for c in dataset.columns] == [
            ("x0", "numeric", 0),
            ("x1", "numeric", 0),
        ]
        assert dataset.columns[1]["min"] == -1.0 and dataset.columns[1]["max"] == 3.25
        assert session.scalar(sa.text("SELECT dataset_id FROM jobs")) == "a" * 32
    assert table.names == ["x0", "x1"] and table.types == ["numeric", "numeric"]
    np.testing.assert_array_equal(np.column_stack([c.values for c in table.columns]), features)
    np.testing.assert_array_equal(targets, [[0.0], [1.0], [0.0]])


def check_old_dataset_survives_upgrade(url: str, store: Path) -> None:
    """Alembic's revisions, then `service.migrate` (what every runner calls) moves the rows
    into the dataset store: the SQL blob is gone, the store has them, nothing is lost; a second
    run moves nothing."""
    features = insert_old_dataset(url)
    up = alembic(url, "upgrade", "head")
    assert up.returncode == 0, up.stderr
    env = {**os.environ, "DATABASE_URL": url, "TRAINYARD_STORE_URL": store.as_uri()}
    for moved in (True, False):
        out = subprocess.run(
            [sys.executable, "-m", "service.migrate"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert out.returncode == 0, out
        assert ("moved the rows of 1 dataset(s)" in out.stderr) is moved, out.stderr
    check_old_dataset(url, features)
    with sa.create_engine(url).connect() as conn:
        assert conn.scalar(sa.text("SELECT count(*) FROM dataset_data")) == 0
        location = conn.scalar(sa.text("SELECT location FROM datasets"))
    assert location == f"{store.as_uri()}/datasets/{'a' * 32}"
    assert list((store / "datasets" / ("a" * 32)).glob("part-*.parquet"))


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


def test_sqlite_old_dataset_survives_upgrade(tmp_path: Path) -> None:
    check_old_dataset_survives_upgrade(f"sqlite:///{tmp_path / 'db.sqlite3'}", tmp_path / "store")


@pytest.mark.postgres
def test_postgres_old_dataset_survives_upgrade(tmp_path: Path) -> None:
    url = create_pg_database()
    try:
        check_old_dataset_survives_upgrade(url, tmp_path / "store")
    finally:
        drop_pg_database(url)


def test_service_migrate_runs_outside_the_checkout(tmp_path: Path) -> None:
    """`python -m service.migrate` (what the runners call) needs no alembic.ini and no checkout
    as the current folder: from elsewhere it builds the schema that `alembic check` finds
    complete, then does nothing more on a second run."""
    url = f"sqlite:///{tmp_path / 'store.sqlite3'}"
    env = {**os.environ, "DATABASE_URL": url}
    for _ in range(2):
        out = subprocess.run(
            [sys.executable, "-m", "service.migrate"],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert out.returncode == 0 and "up to date" in out.stderr, out
    assert alembic(url, "check").returncode == 0
    with sa.create_engine(url).connect() as conn:
        assert conn.scalar(sa.text("SELECT count(*) FROM jobs")) == 0


def test_var_dir_is_the_checkouts_or_the_users_data_folder(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from service import config

    assert config.default_var_dir() == ROOT / "var"
    monkeypatch.setattr(config, "ROOT", tmp_path / "site-packages")  # no alembic.ini beside it
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert config.default_var_dir() == tmp_path / "data" / "trainyard"
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert config.default_var_dir() == tmp_path / "home" / ".local" / "share" / "trainyard"


def test_a_migrations_package_in_the_current_folder_is_not_ours(tmp_path: Path) -> None:
    """`python -m service.migrate` from a folder with a `migrations` package of its own (a
    Django project, say) still runs trainyard's revisions."""
    (tmp_path / "migrations").mkdir()
    (tmp_path / "migrations" / "__init__.py").write_text("")
    url = f"sqlite:///{tmp_path / 'store.sqlite3'}"
    out = subprocess.run(
        [sys.executable, "-m", "service.migrate"],
        cwd=tmp_path, env={**os.environ, "DATABASE_URL": url},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out
    assert alembic(url, "check").returncode == 0
