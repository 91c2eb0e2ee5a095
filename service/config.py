"""Configuration from environment variables, in one place.

Every setting has a default that makes the embedded mode work on one machine with no server
installed. The README documents each variable in its configuration table. `Settings` is the only
place where a default is written: the API, the worker task, the maintenance loop and the job
lifecycle (`service.lifecycle`) all read the same object (the API's Flask config carries it,
`Settings.from_flask_config` gives it back; a worker reads it from the environment,
`workers.context`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from core.paths import user_data_dir

ROOT = Path(__file__).resolve().parent.parent


def default_var_dir() -> Path:
    """Where the embedded mode keeps its SQLite file, broker folder and API key: `var/` of the
    checkout, or, for an installed package (no checkout around it), the user's data folder
    (`$XDG_DATA_HOME/trainyard`, by default `~/.local/share/trainyard`), never site-packages."""
    if (ROOT / "alembic.ini").is_file():
        return ROOT / "var"
    return user_data_dir()


VAR_DIR = Path(os.environ.get("TRAINYARD_VAR_DIR") or default_var_dir())


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    return default if raw in (None, "") else int(raw)


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    return default if raw in (None, "") else float(raw)


def _env_str(name: str, default: str) -> str:
    raw = os.environ.get(name)
    return default if raw in (None, "") else raw


@dataclass(frozen=True)
class Limits:
    """Caps on what one request may ask for (configurable, enforced before anything is stored)."""

    # most rows in a dataset; 0: no limit (a streamed upload holds no rows in memory)
    max_rows: int = field(default_factory=lambda: _env_int("TRAINYARD_MAX_ROWS", 0))
    max_features: int = field(default_factory=lambda: _env_int("TRAINYARD_MAX_FEATURES", 4096))
    max_layers: int = field(default_factory=lambda: _env_int("TRAINYARD_MAX_LAYERS", 16))
    max_width: int = field(default_factory=lambda: _env_int("TRAINYARD_MAX_WIDTH", 4096))
    max_parameters: int = field(
        default_factory=lambda: _env_int("TRAINYARD_MAX_PARAMETERS", 5_000_000)
    )
    max_epochs: int = field(default_factory=lambda: _env_int("TRAINYARD_MAX_EPOCHS", 10_000))
    max_classes: int = field(default_factory=lambda: _env_int("TRAINYARD_MAX_CLASSES", 1000))
    # queued + running jobs one owner may have at a time (a new job past it is 429)
    max_active_jobs: int = field(default_factory=lambda: _env_int("TRAINYARD_MAX_ACTIVE_JOBS", 100))
    # bytes one owner may store (datasets, models' weights, unfinished uploads); 0: no quota
    # (service.quotas; an API key may have its own)
    quota_bytes: int = field(default_factory=lambda: _env_int("TRAINYARD_QUOTA_BYTES", 0))
    # trials one sweep may have (a larger grid, or max_trials above it, is 422)
    max_sweep_trials: int = field(
        default_factory=lambda: _env_int("TRAINYARD_MAX_SWEEP_TRIALS", 1000)
    )


@dataclass(frozen=True)
class Settings:
    """All settings of the API and the workers, read from the environment."""

    database_url: str = field(
        default_factory=lambda: _env_str(
            "DATABASE_URL", f"sqlite:///{VAR_DIR / 'trainyard.sqlite3'}"
        )
    )
    broker_url: str = field(
        default_factory=lambda: _env_str(
            "CELERY_BROKER_URL", f"filesystem://{(VAR_DIR / 'broker').as_posix()}"
        )
    )
    port: int = field(default_factory=lambda: _env_int("PORT", 8000))
    # Where datasets' rows live (service.dataset_store): `file:///path` or `s3://bucket/prefix`
    # (endpoint and credentials from the standard AWS_* variables).
    store_url: str = field(
        default_factory=lambda: _env_str("TRAINYARD_STORE_URL", (VAR_DIR / "store").as_uri())
    )
    # Datasets by reference (`POST /datasets` with a `source`, service.imports): the URL
    # prefixes (`s3://bucket/folder/`, `file:///path/`) whose objects may be imported,
    # comma-separated; empty: no import at all.
    import_prefixes: str = field(default_factory=lambda: _env_str("TRAINYARD_IMPORT_PREFIXES", ""))
    max_content_length: int = field(
        default_factory=lambda: _env_int("TRAINYARD_MAX_CONTENT_LENGTH", 64 * 1024 * 1024)
    )
    # Largest dataset file upload (CSV, also gzipped; streamed, never held whole): a
    # multipart form or a raw body to POST /datasets. Other bodies keep max_content_length.
    max_upload_bytes: int = field(
        default_factory=lambda: _env_int("TRAINYARD_MAX_UPLOAD_BYTES", 20 * 1024**3)
    )
    # A resumable (tus) upload that is not finished this many hours after its last chunk (or
    # its creation) expires: its row and its chunks in the store are deleted by the
    # maintenance sweep (service.uploads).
    upload_expire_hours: float = field(
        default_factory=lambda: _env_float("TRAINYARD_UPLOAD_EXPIRE_HOURS", 24.0)
    )
    task_soft_time_limit: float = field(
        default_factory=lambda: _env_float("TRAINYARD_TASK_SOFT_TIME_LIMIT", 3600.0)
    )
    task_time_limit: float = field(
        default_factory=lambda: _env_float("TRAINYARD_TASK_TIME_LIMIT", 3660.0)
    )
    # Redis re-delivers an unacknowledged message after this many seconds; it must exceed the
    # hard time limit, or a long job would be delivered twice while it still runs.
    visibility_timeout: float = field(
        default_factory=lambda: _env_float("TRAINYARD_VISIBILITY_TIMEOUT", 3900.0)
    )
    max_attempts: int = field(default_factory=lambda: _env_int("TRAINYARD_MAX_ATTEMPTS", 3))
    # A running job writes `heartbeat_at` this often (and after every epoch); a job whose
    # heartbeat is older than `stale_after` seconds belongs to a lost worker, and a re-delivered
    # message may take it over (a fresh attempt).
    heartbeat_interval: float = field(
        default_factory=lambda: _env_float("TRAINYARD_HEARTBEAT_INTERVAL", 10.0)
    )
    stale_after: float = field(default_factory=lambda: _env_float("TRAINYARD_STALE_AFTER", 60.0))
    # Every worker's main process runs the reaper and the reconciler (workers.maintenance) this
    # often: running jobs with a heartbeat older than `stale_after` are handed back to the queue
    # (or failed after `max_attempts`), queued jobs never published (broker down at submit) or
    # published longer than `republish_after` seconds ago (message lost with the broker's
    # memory) are published again. 0 turns the loop off.
    maintenance_interval: float = field(
        default_factory=lambda: _env_float("TRAINYARD_MAINTENANCE_INTERVAL", 10.0)
    )
    republish_after: float = field(
        default_factory=lambda: _env_float("TRAINYARD_REPUBLISH_AFTER", 600.0)
    )
    # Socket timeouts for a Redis broker, so that a hung Redis cannot hang a request.
    broker_socket_timeout: float = field(
        default_factory=lambda: _env_float("TRAINYARD_BROKER_SOCKET_TIMEOUT", 3.0)
    )
    # How often a worker polls a server-less broker (filesystem transport) for new messages.
    broker_polling_interval: float = field(
        default_factory=lambda: _env_float("TRAINYARD_BROKER_POLLING_INTERVAL", 0.2)
    )
    # Requests per API key: `N/second`, `N/minute` or `N/hour` (service.ratelimit).
    rate_limit: str = field(default_factory=lambda: _env_str("TRAINYARD_RATE_LIMIT", "1200/minute"))
    # Where the rate limit counts: `redis://...` or `memory://`; empty: Redis when the broker
    # is Redis, else in-process memory.
    rate_limit_storage_url: str = field(
        default_factory=lambda: _env_str("TRAINYARD_RATE_LIMIT_STORAGE_URL", "")
    )
    # Webhooks (service.webhooks): may a URL's host resolve to a private, loopback or link-local
    # address (checked at creation and again at every delivery)? `auto`: yes in the embedded
    # mode (a SQLite database), no otherwise; `true` / `false`.
    webhooks_allow_private: str = field(
        default_factory=lambda: _env_str("TRAINYARD_WEBHOOKS_ALLOW_PRIVATE", "auto")
    )
    # attempts at one delivery; a failed one is tried again after retry_base * 2^(attempt - 1)
    # seconds (at most an hour); each attempt waits at most `webhook_timeout` seconds
    webhook_max_attempts: int = field(
        default_factory=lambda: _env_int("TRAINYARD_WEBHOOK_MAX_ATTEMPTS", 8)
    )
    webhook_retry_base: float = field(
        default_factory=lambda: _env_float("TRAINYARD_WEBHOOK_RETRY_BASE", 10.0)
    )
    webhook_timeout: float = field(
        default_factory=lambda: _env_float("TRAINYARD_WEBHOOK_TIMEOUT", 5.0)
    )
    # The audit log (service.audit) keeps entries this many days (the maintenance sweep deletes
    # older ones); 0, the default: kept forever.
    audit_retention_days: float = field(
        default_factory=lambda: _env_float("TRAINYARD_AUDIT_RETENTION_DAYS", 0.0)
    )
    # Live event streams (service.events), in seconds: how often the embedded mode (SQLite)
    # looks for changes of the streamed jobs; how often every stream reads the store anyway (a
    # missed PostgreSQL notification costs this much latency); the keep-alive comment.
    events_poll_interval: float = 0.5
    events_safety_interval: float = 5.0
    events_keepalive: float = 15.0
    # Stored `Idempotency-Key` answers are forgotten after this many seconds (by the maintenance
    # sweep); not read from the environment.
    idempotency_ttl: float = 86400.0
    # New jobs expire (are deleted by the maintenance sweep, service.deletion) this many days
    # after they are submitted, with their models, unless registered; 0: never (the default).
    retention_days: float = field(
        default_factory=lambda: _env_float("TRAINYARD_RETENTION_DAYS", 0.0)
    )
    limits: Limits = field(default_factory=Limits)

    @classmethod
    def from_flask_config(cls, config: Mapping[str, Any]) -> Settings:
        """The settings an app was made with: `as_flask_config()` with its overrides applied
        (`create_app(test_config)`); a key the config lacks keeps its default."""
        return cls(
            **{f.name: config[f.name.upper()] for f in fields(cls) if f.name.upper() in config}
        )

    def as_flask_config(self) -> dict[str, object]:
        """The settings as Flask config keys (upper case), for `app.config.from_mapping`."""
        out: dict[str, object] = {f.name.upper(): getattr(self, f.name) for f in fields(self)}
        out["MAX_CONTENT_LENGTH"] = self.max_content_length
        return out
