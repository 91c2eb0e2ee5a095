"""Alembic environment: the URL comes from DATABASE_URL (service.config), like the app's."""

from __future__ import annotations

from logging.config import fileConfig

from alembic import context

from service.config import VAR_DIR, Settings
from service.db import make_engine
from service.tables import Base
from service.webhook_models import Webhook  # noqa: F401  (its tables, in Base.metadata)

config = context.config
if config.config_file_name is not None and config.attributes.get("configure_logger", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = Base.metadata


def _url() -> str:
    return config.get_main_option("sqlalchemy.url") or Settings().database_url


def run_migrations_offline() -> None:
    context.configure(
        url=_url(),
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    url = _url()
    if url.startswith("sqlite:///"):
        VAR_DIR.mkdir(parents=True, exist_ok=True)
    connectable = make_engine(url)
    with connectable.connect() as connection:
        if connection.dialect.name == "sqlite":
            # Batch mode rebuilds a table (copy, DROP, rename): with foreign keys on, the DROP
            # deletes the rows that reference it (ON DELETE CASCADE) or fails. Off while
            # migrating (outside a transaction: SQLite ignores the pragma inside one).
            connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
            connection.commit()
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            # batch mode lets later migrations ALTER tables on SQLite too
            render_as_batch=True,
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()
    connectable.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
