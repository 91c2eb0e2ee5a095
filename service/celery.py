"""Celery's configuration (`celery_config`, from `service.config.Settings`) and its apps: the
worker's (`make_celery`, made by `workers.app` with no web framework) and the API's
(`celery_init_app`, bound to the Flask app, which only publishes).

The API never imports task code: it publishes by task name (`TRAIN_TASK`, defined with the rest of
the job's life in `service.lifecycle`) with the job id as the only argument, so `service` does not
depend on `workers`. Worker-side settings for long jobs
(late acks, prefetch of one, time limits, Redis visibility timeout) are set here so that the API
and every worker process share one configuration.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from celery import Celery

from service.config import Settings
from service.lifecycle import TRAIN_TASK as TRAIN_TASK

if TYPE_CHECKING:
    from flask import Flask  # `celery_init_app` is given the app: importing this loads no Flask


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery settings derived from `service.config.Settings`."""
    transport_options: dict[str, Any] = {}
    if settings.broker_url.startswith(("redis://", "rediss://", "redis+socket://")):
        # Redis re-delivers an unacknowledged message after this; it must exceed the hard limit.
        transport_options["visibility_timeout"] = settings.visibility_timeout
        # kombu looks for expired unacknowledged messages every interval * throttle seconds
        # (10 * 10 by default): keep that well below the visibility timeout when it is short.
        period = max(1.0, min(100.0, settings.visibility_timeout / 3))
        interval = min(10.0, period)
        transport_options["unacked_restore_interval"] = interval
        transport_options["unacked_restore_throttle"] = max(1, int(period / interval))
        # A hung Redis (paused, overloaded) must not hang an API request or a worker for ever.
        timeout = settings.broker_socket_timeout
        if timeout:
            transport_options["socket_timeout"] = timeout
            transport_options["socket_connect_timeout"] = timeout
    elif settings.broker_url.startswith("filesystem://"):
        transport_options.update(filesystem_broker_options(settings.broker_url))
        transport_options["polling_interval"] = settings.broker_polling_interval
    return {
        "broker_url": settings.broker_url,
        "task_ignore_result": True,
        "result_backend": None,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        # 0 means no limit
        "task_soft_time_limit": settings.task_soft_time_limit or None,
        "task_time_limit": settings.task_time_limit or None,
        "broker_transport_options": transport_options,
        "result_backend_transport_options": transport_options,
        "broker_connection_retry_on_startup": True,
        "task_serializer": "json",
        "accept_content": ["json"],
    }


def filesystem_broker_options(broker_url: str) -> dict[str, str]:
    """Folders of kombu's filesystem transport, under the URL's path (created if missing).

    `filesystem:///abs/dir` keeps messages in `dir/queue` and broadcast tables in
    `dir/control`. The embedded mode uses it rather than `sqla+sqlite://`: kombu's SQLAlchemy
    transport passes every transport option (our `visibility_timeout` too) to `create_engine`,
    which rejects them, and it polls with a write transaction on the SQLite file every time.
    Each message is one file, taken under an exclusive `flock` and then removed, so any number
    of publishing and consuming processes on one machine can share the folder.
    """
    path = urlsplit(broker_url).path or "var/broker"
    base = Path(path)
    folders = {"queue": base / "queue", "control": base / "control"}
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    return {
        "data_folder_in": str(folders["queue"]),
        "data_folder_out": str(folders["queue"]),
        "control_folder": str(folders["control"]),
    }


def make_celery(name: str, config: dict[str, Any]) -> Celery:
    """A Celery app with `config` (`celery_config(settings)`), made the default app (Celery's
    `current_app` where no other is current)."""
    celery_app = Celery(name)
    celery_app.config_from_object(config)
    celery_app.set_default()
    return celery_app


def celery_init_app(app: Flask) -> Celery:
    """The API's Celery app, from `app.config["CELERY"]`, at `app.extensions["celery"]`: it
    publishes tasks by name (no task runs in the API's processes, so its tasks need no Flask
    app context)."""
    celery_app = make_celery(app.name, app.config["CELERY"])
    app.extensions["celery"] = celery_app
    return celery_app
