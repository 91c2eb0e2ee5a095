"""The API server's gunicorn configuration (`workers.gunicorn_conf`): one module every mode's
command line names, holding what they share."""

from __future__ import annotations

import gc
import re
from pathlib import Path

from tests.support import ROOT, api_cmd
from workers import distributed, embedded, gunicorn_conf

CONFIG = "python:workers.gunicorn_conf"


def test_it_runs_threads_not_sync_workers() -> None:
    # an open event stream holds a thread until it ends: sync workers would be taken by the
    # first stream each, and answer nothing else
    assert gunicorn_conf.worker_class == "gthread"
    assert gunicorn_conf.threads >= 100


def test_post_worker_init_freezes_what_the_loaded_app_holds() -> None:
    gc.unfreeze()
    assert gc.get_freeze_count() == 0
    try:
        gunicorn_conf.post_worker_init(object())
        assert gc.get_freeze_count() > 10_000
    finally:
        gc.unfreeze()


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
