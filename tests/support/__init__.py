"""Helpers the tests and the benchmarks share (conftest files keep only fixtures).

- `databases`: migrations as production runs them, fresh PostgreSQL databases, Redis URL.
- `processes`: subprocesses with logs (API server, workers), free ports, environments.
- `api`: a user's client of the REST API, API keys, model checks.
- `live`: a live embedded-mode service.
- `cluster`: a store + broker + workers for fault injection, a Redis server of a test's own.
"""

from tests.support.stored import STORE_URL, spoil_rows, store_dataset  # noqa: I001 (sets the store first)
from tests.support.api import Api, check_model, new_api_key
from tests.support.cluster import (
    FAST,
    FINAL,
    STEADY,
    Cluster,
    RedisServer,
    api_key,
    final_count,
    kill_group,
    pool_children,
)
from tests.support.databases import (
    PG_ADMIN_URL,
    REDIS_URL,
    ROOT,
    create_pg_database,
    drop_pg_database,
    empty_tables,
    fresh_pg_database,
    migrate,
)
from tests.support.live import LiveService, live_service, start_embedded
from tests.support.processes import (
    VENV_BIN,
    Proc,
    Processes,
    api_cmd,
    base_env,
    free_port,
    pid_alive,
    worker_cmd,
)

__all__ = [
    "FAST",
    "FINAL",
    "PG_ADMIN_URL",
    "REDIS_URL",
    "ROOT",
    "STEADY",
    "STORE_URL",
    "VENV_BIN",
    "Api",
    "Cluster",
    "LiveService",
    "Proc",
    "Processes",
    "RedisServer",
    "api_cmd",
    "api_key",
    "base_env",
    "check_model",
    "create_pg_database",
    "drop_pg_database",
    "empty_tables",
    "final_count",
    "free_port",
    "fresh_pg_database",
    "kill_group",
    "live_service",
    "migrate",
    "new_api_key",
    "pid_alive",
    "pool_children",
    "spoil_rows",
    "start_embedded",
    "store_dataset",
    "worker_cmd",
]
