"""What a worker's tasks and maintenance loop read instead of a web app: its settings and its
database sessions (`WorkerContext`), bound to the worker's Celery app.

`workers.app` makes the one context of a `celery -A workers.app worker` process from the
environment (`service.config.Settings`); a task finds it through the Celery app it runs under
(`context_of(self.app)`). Nothing here imports a web framework.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

from celery import Celery
from sqlalchemy.orm import Session, sessionmaker

from service.config import Settings
from workers.runtime import session_factory


@dataclass(frozen=True)
class WorkerContext:
    """One worker's settings; its sessions are made per process (after the prefork pool forked,
    never shared), by `workers.runtime.session_factory`."""

    settings: Settings

    @property
    def factory(self) -> sessionmaker[Session]:
        """This process's sessionmaker (and engine) for the settings' database."""
        return session_factory(self.settings.database_url)


_contexts: weakref.WeakKeyDictionary[Celery, WorkerContext] = weakref.WeakKeyDictionary()


def bind(celery: Celery, context: WorkerContext) -> None:
    """Make `context` the one the tasks run by `celery` read."""
    _contexts[celery] = context


def context_of(celery: Celery) -> WorkerContext:
    """The context bound to `celery` (by `workers.app`)."""
    try:
        return _contexts[celery]
    except KeyError:
        raise RuntimeError(
            f"no worker context is bound to the Celery app {celery.main!r}: run the tasks with "
            "`celery -A workers.app worker`, or call workers.context.bind"
        ) from None
