"""The embedded runner (`python -m workers.embedded`) never leaves its server and worker behind.

Started as a user would (`TRAINYARD_VAR_DIR` and `PORT` of its own), then SIGHUP (terminal
closed), SIGTERM or SIGKILL (out-of-memory kill, `kill -9`): within seconds no process of it is
left (the children and grandchildren recorded before the signal, read from /proc), its port is
free, and its lock is released. A second runner on the same var folder refuses in one line; a
lock left by a SIGKILLed runner does not block the next start; a job that was running when the
runner was killed ends in a final state after the next start.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import ROOT, Api, Proc, Processes, base_env, pid_alive, start_embedded
from tests.workers.datasets import regression
from workers import embedded

pytestmark = pytest.mark.slow

#: Short lifecycle timings, so that a job whose runner was killed is handed back in seconds.
FAST_RECOVERY = {
    "TRAINYARD_STALE_AFTER": "3",
    "TRAINYARD_HEARTBEAT_INTERVAL": "1",
    "TRAINYARD_MAINTENANCE_INTERVAL": "1",
}


def descendants(pid: int) -> set[int]:
    """The PIDs of `pid`'s children, grandchildren, ... (from /proc/*/stat)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def wait_gone(pids: set[int], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(pid_alive(pid) for pid in pids):
            return
        time.sleep(0.1)
    left = {pid: Path(f"/proc/{pid}/cmdline").read_bytes() for pid in pids if pid_alive(pid)}
    raise AssertionError(f"still alive after {timeout}s: {left}")


def port_free(port: int) -> bool:
    # as the next gunicorn binds it (SO_REUSEADDR: closed connections in TIME_WAIT don't count)
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def lock_free(var: Path) -> bool:
    with open(var / "embedded.lock", "rb") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(f, fcntl.LOCK_UN)
        return True


def lock_holders(var: Path) -> dict[int, bytes]:
    """The processes with the var folder's lock file open, and their command lines."""
    lock = str((var / "embedded.lock").resolve())
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if any(os.readlink(fd) == lock for fd in (entry / "fd").iterdir()):
                found[int(entry.name)] = (entry / "cmdline").read_bytes()
    return found


def wait_lock_free(var: Path, timeout: float) -> None:
    """The lock is released within `timeout` (a pool process forked during the shutdown, after
    the tree was recorded, may hold it a moment longer); else the holders are named."""
    deadline = time.monotonic() + timeout
    while not lock_free(var):
        if time.monotonic() > deadline:
            raise AssertionError(f"lock still held after {timeout}s by {lock_holders(var)}")
        time.sleep(0.1)


def start(processes: Processes, var: Path, **env: str) -> tuple[Api, Proc, int]:
    """A runner that printed its key-and-dashboard block (the API and the worker are ready)."""
    api, proc = start_embedded(processes, var, **env)
    return api, proc, int(api.base.rsplit(":", 1)[1])


@contextlib.contextmanager
def orphan_to_be(child: str, preexec: str = "") -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """A parent process running `child` (Python code) in a session of its own; yields the
    child's pid and the parent, which the test kills to orphan the child."""
    parent = textwrap.dedent(f"""
        import signal, subprocess, sys, time
        from workers.parent_watch import pdeathsig_preexec
        p = subprocess.Popen([sys.executable, "-c", {child!r}], start_new_session=True, {preexec})
        print(p.pid, flush=True)
        time.sleep(60)
    """)
    proc = subprocess.Popen(
        [sys.executable, "-c", parent], cwd=ROOT, env=base_env(), stdout=subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        child_pid = int(proc.stdout.readline())
        time.sleep(0.5)
        assert pid_alive(child_pid)
        yield child_pid, proc
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize(
    "spawn", ["watch", pytest.param("pdeathsig", marks=pytest.mark.skipif(
        not sys.platform.startswith("linux"), reason="prctl(PR_SET_PDEATHSIG) is Linux's"))]
)  # fmt: skip
def test_a_child_follows_its_killed_parent(spawn: str, tmp_path: Path) -> None:
    """Each of the two mechanisms alone: the parent-watch thread (what platforms without
    `prctl` rely on) and the kernel's parent-death signal."""
    child = (
        "import os, signal, time; from workers.parent_watch import watch_parent; "
        "watch_parent(os.getppid(), signal.SIGTERM, interval=0.1); time.sleep(60)"
        if spawn == "watch"
        else "import time; time.sleep(60)"
    )
    preexec = "preexec_fn=pdeathsig_preexec(signal.SIGTERM)" if spawn == "pdeathsig" else ""
    with orphan_to_be(child, preexec) as (child_pid, parent):
        parent.kill()
        parent.wait(timeout=10)
        wait_gone({child_pid}, 5)


def test_a_child_whose_shutdown_hangs_is_killed_after_the_grace(tmp_path: Path) -> None:
    """The watch thread's backstop: a child that ignores its shutdown signal (a hung cold
    shutdown) is killed `grace` seconds after its parent died."""
    child = (
        "import os, signal, time; from workers.parent_watch import watch_parent; "
        "signal.signal(signal.SIGQUIT, signal.SIG_IGN); "
        "watch_parent(os.getppid(), signal.SIGQUIT, interval=0.1, grace=1.0); time.sleep(60)"
    )
    with orphan_to_be(child) as (child_pid, parent):
        parent.kill()
        parent.wait(timeout=10)
        time.sleep(0.6)
        assert pid_alive(child_pid)  # it ignored SIGQUIT: still there within the grace
        wait_gone({child_pid}, 5)


def test_hangup_and_terminate_stop_everything(processes: Processes, tmp_path: Path) -> None:
    """SIGHUP (the terminal was closed) to one runner, SIGTERM to another (side by side, each
    with its own var folder): both stop their worker and server and exit 0."""
    signals = {"hup": signal.SIGHUP, "term": signal.SIGTERM}
    runners = {name: start(processes, tmp_path / name) for name in signals}
    trees = {}
    for name, (_, proc, _) in runners.items():
        text = proc.text()
        # the block comes last: after the worker's "ready." line and the API's access-log line
        assert text.index(" ready.") < text.index("trainyard: dashboard:")
        assert text.index("GET /readyz") < text.index("trainyard: dashboard:")
        # its own control socket, not the per-user one every gunicorn would share
        assert (tmp_path / name / "gunicorn.ctl").is_socket()
        trees[name] = descendants(proc.popen.pid)
        # celery main + pool child, gunicorn arbiter + 2 workers
        assert len(trees[name]) >= 5, trees[name]

    for name, sig in signals.items():
        runners[name][1].popen.send_signal(sig)  # the runner only, as a terminal or `kill` does
    for name, (_, proc, port) in runners.items():
        assert proc.popen.wait(timeout=30) == 0, proc.text()[-3000:]
        wait_gone(trees[name], 5)
        assert port_free(port)
        assert lock_free(tmp_path / name)
        assert not (tmp_path / name / "gunicorn.ctl").exists()
        assert "trainyard: stopped" in proc.text()


def test_sigkill_leaves_nothing_and_the_next_start_finishes_the_job(
    processes: Processes, tmp_path: Path
) -> None:
    var = tmp_path / "var"
    api, proc, port = start(processes, var, **FAST_RECOVERY)
    runner = proc.popen.pid

    # a second runner on the same var folder: one line naming the first, non-zero exit
    second = subprocess.run(
        [sys.executable, "-m", "workers.embedded"],
        cwd=ROOT, env=base_env(TRAINYARD_VAR_DIR=str(var), PORT="1"),
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert second.returncode == 1
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and not second.stdout.strip(), second
    assert f"pid {runner}" in lines[0] and f":{port}" in lines[0] and f"kill {runner}" in lines[0]
    assert not port_free(port) and proc.popen.poll() is None  # the first one is untouched

    x, y = regression(400)
    dataset_id = api.dataset(x, y[:, 0], "reg")
    job_id = api.job(dataset_id, [32, 32, 1], loss="mse", epochs=150, batch_size=8)
    assert api.wait(job_id, ("running",), timeout=30)["progress"]["epoch"] < 150
    tree = descendants(runner)

    proc.popen.kill()
    proc.popen.wait(timeout=10)
    # the worker's cold shutdown (its message back to the queue) takes Celery a few seconds,
    # more on a loaded machine
    wait_gone(tree, 30)
    assert port_free(port)
    # a stale lock: the kernel releases it, nothing to clean up
    wait_lock_free(var, embedded.LOCK_WAIT_S)

    api2, _, _ = start(processes, var, **FAST_RECOVERY)
    job = api2.wait(job_id, ("succeeded", "failed"), timeout=60)
    if job["status"] == "succeeded":
        assert job["attempts"] == 2
        assert len(job["loss_history"]) == 150
    else:
        assert job["error"]
