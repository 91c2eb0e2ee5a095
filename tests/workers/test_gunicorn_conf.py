"""The API server's gunicorn configuration (`workers.gunicorn_conf`): one module every mode's
command line names, holding what they share."""

from __future__ import annotations

import gc
import os
import re
import signal
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from service.config import Settings
from service.db import make_engine
from service.events import ChangeHub
from tests.support import ROOT, api_cmd
from workers import distributed, embedded, gunicorn_conf

CONFIG = "python:workers.gunicorn_conf"


def test_it_runs_threads_not_sync_workers() -> None:
    # an open event stream holds a thread until it ends: sync workers would be taken by the
    # first stream each, and answer nothing else
    assert gunicorn_conf.worker_class == "gthread"
    assert gunicorn_conf.threads >= 100


@pytest.fixture
def worker(tmp_path: Path) -> Iterator[SimpleNamespace]:
    """What `post_worker_init` gets: a gunicorn worker whose app has an event hub; the test
    process's SIGTERM handler and GC state are put back afterwards."""
    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite3'}")
    hub = ChangeHub(engine, Settings())
    previous = signal.getsignal(signal.SIGTERM)
    try:
        yield SimpleNamespace(wsgi=SimpleNamespace(extensions={"event_hub": hub}), hub=hub)
    finally:
        signal.signal(signal.SIGTERM, previous)
        gc.unfreeze()
        engine.dispose()


def test_post_worker_init_freezes_what_the_loaded_app_holds(worker: SimpleNamespace) -> None:
    gc.unfreeze()
    assert gc.get_freeze_count() == 0
    gunicorn_conf.post_worker_init(worker)
    assert gc.get_freeze_count() > 10_000


def test_sigterm_ends_the_open_streams_then_does_what_gunicorn_does(
    worker: SimpleNamespace,
) -> None:
    graceful_exits: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, _frame: graceful_exits.append(signum))
    gunicorn_conf.post_worker_init(worker)
    sub = worker.hub.subscribe("job-1")
    assert not worker.hub.closing.is_set()
    os.kill(os.getpid(), signal.SIGTERM)
    assert worker.hub.closing.wait(5)
    assert sub.wait(0)  # the stream waiting on its job was woken, to end
    assert graceful_exits == [signal.SIGTERM]  # gunicorn's own handler still ran
    worker.hub.close()


def test_every_api_command_line_names_the_config_and_repeats_none_of_it() -> None:
    commands = {
        "embedded runner": embedded.api_command(8000),
        "make run-distributed": distributed.api_command(8000),
        "tests and benchmarks": api_cmd(8000),
    }
    text = (ROOT / "docker-compose.yml").read_text()
    api = text[text.index("\n  api:") :]
    commands["docker-compose.yml"] = re.findall(r"^\s+- (\S+)$", api[: api.index("ports:")], re.M)
    dockerfile = (ROOT / "Dockerfile").read_text()
    commands["Dockerfile"] = re.findall(r'"([^"]+)"', dockerfile[dockerfile.index("CMD") :])
    for where, cmd in commands.items():
        assert "--config" in cmd, where
        assert cmd[cmd.index("--config") + 1] == CONFIG, where
        for setting in ("--worker-class", "-k", "--access-logfile"):
            assert setting not in cmd, (where, setting)


def test_the_readme_starts_the_api_with_the_config() -> None:
    lines = [
        line
        for line in (Path(ROOT) / "README.md").read_text().splitlines()
        if "gunicorn " in line and "service:create_app()" in line
    ]
    assert lines
    assert all(f"-c {CONFIG}" in line or f"--config {CONFIG}" in line for line in lines)
