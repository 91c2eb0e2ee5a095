"""The store's schema: Alembic's `migrations/` (installed with the package), applied from a
checkout or from an installed wheel alike.

`upgrade()` is what the runners call before they start anything (`python -m workers.embedded`,
`python -m workers.distributed`); `python -m service.migrate` does only that, on `DATABASE_URL`
(the embedded SQLite file by default). `alembic upgrade head` in a checkout reads `alembic.ini`
and does the same; writing a new revision (`alembic revision --autogenerate`) needs the checkout.
"""

from __future__ import annotations

import sys
from pathlib import Path

from alembic import command
from alembic.config import Config

from service.config import ROOT, Settings


def script_location() -> Path:
    """The `migrations` folder, beside this package in a checkout and in site-packages alike
    (found by path, not by import: a `migrations` package in the current folder, as Django
    projects have, must not stand in for ours)."""
    folder = ROOT / "migrations"
    if not (folder / "env.py").is_file():
        raise RuntimeError(f"trainyard's migrations are missing: no {folder / 'env.py'}")
    return folder


def alembic_config(database_url: str) -> Config:
    """Alembic's configuration without `alembic.ini`; the logging stays the caller's."""
    config = Config()
    config.set_main_option("script_location", str(script_location()))
    config.set_main_option("path_separator", "os")
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    config.attributes["configure_logger"] = False
    return config


def upgrade(database_url: str | None = None, store_url: str | None = None) -> None:
    """Bring the store at `database_url` (default: the settings') to the newest revision, then
    move the rows of datasets stored before the dataset store into it (`store_url`, default
    the settings'): a dataset's rows are never lost on upgrade."""
    settings = Settings()
    url = database_url or settings.database_url
    command.upgrade(alembic_config(url), "head")
    from service.datasets import move_to_store
    from service.db import make_engine, make_sessionmaker

    engine = make_engine(url)
    try:
        moved = move_to_store(make_sessionmaker(engine), store_url or settings.store_url)
    finally:
        engine.dispose()
    if moved:
        print(
            f"trainyard: moved the rows of {moved} dataset(s) to the dataset store", file=sys.stderr
        )


def main() -> int:
    url = Settings().database_url
    upgrade(url)
    print(f"trainyard: the schema of {url} is up to date", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
