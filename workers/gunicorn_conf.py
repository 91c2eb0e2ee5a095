"""Gunicorn configuration of the embedded runner (`gunicorn -c python:workers.gunicorn_conf`).

Only hooks live here; every other setting is on the runner's command line
(`workers.embedded.api_command`). Gunicorn reads every module-level name that is a setting's
name, so this module defines nothing else.
"""

from __future__ import annotations

import signal
from typing import Any

from workers.parent_watch import watch_from_env


def on_starting(server: Any) -> None:
    """In the arbiter, before it binds: stop (SIGTERM) when the runner that started it dies."""
    watch_from_env(signal.SIGTERM, name="gunicorn")
