"""A live embedded-mode service (`python -m workers.embedded`: gunicorn + a real celery worker,
SQLite and the filesystem broker under a temporary var folder) for the client, CLI, example and
dashboard tests. Started with the end-to-end helpers; stopped (SIGTERM, then SIGKILL) after.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from client import Client, find_api_key
from tests.e2e.conftest import Api, Processes, base_env
from tests.e2e.test_embedded import start_embedded


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
