"""A live embedded-mode service (`python -m workers.embedded`: gunicorn + a real celery worker,
SQLite and the filesystem broker under a temporary var folder) for the client, CLI, example,
dashboard and benchmark code. Stopped (SIGTERM, then SIGKILL) after.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from client import Client, find_api_key
from tests.support.api import Api
from tests.support.processes import Proc, Processes, base_env, free_port


def start_embedded(processes: Processes, var: Path, **env: str) -> tuple[Api, Proc]:
    # no `alembic upgrade head` first: the runner migrates an empty var folder by itself
    environment = base_env(TRAINYARD_VAR_DIR=str(var), PORT=str(free_port()), **env)
    proc = processes.start("embedded", [sys.executable, "-m", "workers.embedded"], environment)
    api = Api(f"http://127.0.0.1:{environment['PORT']}", proc)
    api.wait_ready(60)
    # the key-and-dashboard block comes last, once the worker is ready too
    proc.wait_for_output("trainyard: dashboard:", 60)
    # the embedded mode's own key, written on first start (what the README's curl lines use)
    api.authenticate((var / "api-key").read_text().strip())
    return api, proc


@dataclass
class LiveService:
    url: str
    var: Path
    api_key: str | None
    api: Api

    def client(self) -> Client:
        return Client(self.url, self.api_key or "", timeout=30)

    def env(self, **extra: str) -> dict[str, str]:
        """Environment for a `trainyard` or example subprocess: the URL, and the var folder
        where the embedded mode keeps its key (so the key is found as a user's would be)."""
        return base_env(TRAINYARD_URL=self.url, TRAINYARD_VAR_DIR=str(self.var), **extra)


@contextlib.contextmanager
def live_service(folder: Path) -> Iterator[LiveService]:
    folder.mkdir(parents=True, exist_ok=True)
    processes = Processes(folder)
    try:
        var = folder / "var"
        api, _proc = start_embedded(processes, var)
        # With API keys, the embedded mode writes its local key here on first start.
        key = find_api_key({"TRAINYARD_VAR_DIR": str(var)}, cwd=folder)
        if key:
            api.http.headers["Authorization"] = f"Bearer {key}"
        yield LiveService(api.base, var, key, api)
    finally:
        processes.stop_all()
