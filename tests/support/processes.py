"""Real processes for the tests: the API server, Celery workers, the embedded runner.

Every process starts in its own session with its output in a log file (shown when a wait times
out), and is stopped by SIGTERM, then SIGKILL.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from tests.support.databases import ROOT

VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def base_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DATABASE_URL", "CELERY_BROKER_URL", "PORT")
        and (not k.startswith("TRAINYARD_") or k == "TRAINYARD_STORE_URL")
    }
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


class Proc:
    """A subprocess with its output in `log`; `stop()` terminates, then kills, its session."""

    def __init__(self, cmd: list[str], env: dict[str, str], log: Path) -> None:
        self.cmd = cmd
        self.log = log
        self._out = open(log, "wb")  # noqa: SIM115 (closed in stop)
        self.popen = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=env,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for_output(self, needle: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if needle in self.text():
                return
            if self.popen.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"{self.cmd} did not print {needle!r}:\n{self.text()[-4000:]}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        if self.popen.poll() is None:
            try:
                os.killpg(self.popen.pid, sig)
                self.popen.wait(timeout=timeout)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                pass
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
        code = self.popen.wait(timeout=10)
        self._out.close()
        return code


class Processes:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.procs: list[Proc] = []

    def start(self, name: str, cmd: list[str], env: dict[str, str]) -> Proc:
        proc = Proc(cmd, env, self.folder / f"{name}-{len(self.procs)}.log")
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()


def worker_cmd(name: str, concurrency: int = 1) -> list[str]:
    return [
        str(VENV_BIN / "celery"), "-A", "workers.app", "worker", "--loglevel", "INFO",
        "--concurrency", str(concurrency), "--without-gossip", "--without-mingle",
        "--hostname", f"{name}-{os.getpid()}@%h",
    ]  # fmt: skip


def api_cmd(
    port: int, workers: int = 2, threads: int | None = None, extra: Sequence[str] = ()
) -> list[str]:
    """The API server as every mode runs it (`workers.gunicorn_conf`), on `port`; `threads`
    per process if given, else the configuration's; `extra` gunicorn options."""
    return [
        str(VENV_BIN / "gunicorn"), "--config", "python:workers.gunicorn_conf",
        "--bind", f"127.0.0.1:{port}", "--workers", str(workers),
        *([] if threads is None else ["--threads", str(threads)]),
        "--no-control-socket", *extra, "service:create_app()",
    ]  # fmt: skip


def pid_alive(pid: int) -> bool:
    # A zombie (exited, not yet reaped by its parent) counts as gone.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"
