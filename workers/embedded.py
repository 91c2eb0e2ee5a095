"""Embedded mode: `python -m workers.embedded` runs the API and one Celery worker side by side.

Both are real processes: `celery -A workers.app worker` (the same command as the distributed
mode, on the server-less filesystem broker under `var/` by default) and the API under gunicorn
on `127.0.0.1:$PORT`. Ctrl-C, SIGTERM or SIGHUP (the terminal was closed) stops both: the
worker gets a warm shutdown (it finishes the running task, or after `GRACE` seconds, or at a
second signal, is stopped cold: its unacknowledged message goes back to the queue and, once the
job's heartbeat is stale, the next start takes the job over), then gunicorn. If either process
exits on its own, the other is stopped too and the exit status says so.

Nothing is left behind when the runner dies without a chance to clean up (SIGKILL, the
out-of-memory killer): the kernel signals both children when it dies (Linux), and each child
also watches its parent PID (`workers.parent_watch`). A job that was running is handed back by
the lifecycle's rules (after `TRAINYARD_STALE_AFTER` seconds, 60 by default) at the next start.

One runner per var folder: `var/embedded.lock` is held (`flock`) by the runner and its two
children for as long as any of them lives, so a second start on the same folder names the PID
and port of the first and exits with status 1 instead of starting a second worker on the same
queue; a lock left by a dead runner is released by the kernel, nothing to clean up. gunicorn's
control socket is `var/gunicorn.ctl` (not the per-user default every gunicorn would share).

On first start it creates an API key for the owner "local" and writes it to
`$TRAINYARD_VAR_DIR/api-key` (mode 0600), as notebook servers do with their tokens; later starts
reuse that file. Once the API answers and the worker is ready, the runner prints the key (or
where it is) and the dashboard's one-click link, last, below the children's start-up output.
`curl -H "Authorization: Bearer $(cat var/api-key)"`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, TextIO

from service.auth import verify_api_key
from service.config import VAR_DIR, Settings
from service.migrate import upgrade
from workers.parent_watch import PARENT_ENV, READY_FILE_ENV, pdeathsig_preexec
from workers.server_args import parse_args

ROOT = Path(__file__).resolve().parent.parent
GRACE = 10.0
LOCK_NAME = "embedded.lock"
READY_NAME = "worker.ready"
CONTROL_SOCKET_NAME = "gunicorn.ctl"
#: A lock still held after its runner died belongs to that runner's children, which stop
#: within seconds (`workers.parent_watch`); a new start waits this long for them.
LOCK_WAIT_S = 15.0
#: The longest path of a Unix socket on every platform (Linux allows 107 bytes, macOS 103).
MAX_SOCKET_PATH = 100
#: Pause between "both ready" and the key-and-dashboard block, for the children's last lines.
ANNOUNCE_SETTLE_S = 0.5


def worker_command(concurrency: int = 1) -> list[str]:
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "workers.app",
        "worker",
        "--loglevel",
        "INFO",
        "--concurrency",
        str(concurrency),
        "--without-gossip",
        "--without-mingle",
        "--hostname",
        f"embedded-{os.getpid()}@%h",
        # the parent watch and the ready file (workers.parent_watch)
        "--include",
        "workers.parent_watch",
    ]


def api_command(
    port: int,
    host: str = "127.0.0.1",
    workers: int = 2,
    control_socket: Path | None = None,
) -> list[str]:
    """gunicorn's command line (`workers.gunicorn_conf` holds what every mode shares); its
    control socket is `control_socket`, or none."""
    socket_args = (
        ["--no-control-socket"]
        if control_socket is None
        else ["--control-socket", str(control_socket)]
    )
    return [
        sys.executable, "-m", "gunicorn", "--config", "python:workers.gunicorn_conf",
        "--bind", f"{host}:{port}", "--workers", str(workers), *socket_args,
        "service:create_app()",
    ]  # fmt: skip


def control_socket_path(var_dir: Path) -> Path | None:
    """gunicorn's control socket in `var_dir`, or None where its path would be too long."""
    path = (var_dir / CONTROL_SOCKET_NAME).absolute()
    return path if len(os.fsencode(path)) <= MAX_SOCKET_PATH else None


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, grace: float = GRACE) -> int:
    """Signal `proc`, wait up to `grace` seconds, then kill it; returns its exit status."""
    if proc.poll() is None:
        try:
            proc.send_signal(sig)
            return proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait()


class AlreadyRunning(Exception):
    """Another runner (or what is left of one) holds the var folder's lock; the message is the
    one line to show."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _lock_holder(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def acquire_lock(path: Path, port: int, wait: float = LOCK_WAIT_S) -> int:
    """Take the runner's lock on `path` (`flock`, released by the kernel when every process
    holding the file is gone) and write this runner's PID and port in it; returns the file
    descriptor (pass it to the children, so that the lock lives as long as any of them).

    Raises `AlreadyRunning` when a live runner holds it, or when a dead runner's children
    still hold it after `wait` seconds."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + wait
    told = False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            holder = _lock_holder(path)
            pid = holder.get("pid")
            if isinstance(pid, int) and _pid_alive(pid):
                os.close(fd)
                where = holder.get("url", f"port {holder.get('port', '?')}")
                raise AlreadyRunning(
                    f"trainyard: already running on {path.parent} (pid {pid}, {where}); "
                    f"stop it with Ctrl-C in its terminal or `kill {pid}`"
                ) from None
            if time.monotonic() > deadline:
                os.close(fd)
                raise AlreadyRunning(
                    f"trainyard: the runner (pid {pid}) on {path.parent} is gone, but a process "
                    f"it started still holds {path}; `fuser -v {path}` lists it"
                ) from None
            if isinstance(pid, int) and not told:
                say(f"trainyard: waiting for the server and worker of stopped runner {pid} to exit")
                told = True
            time.sleep(0.2)
    record = {"pid": os.getpid(), "port": port, "url": f"http://127.0.0.1:{port}"}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
    return fd


def say(text: str, file: TextIO | None = None) -> None:
    """Print, and carry on when the terminal is gone (closed window: EIO, a closed pipe)."""
    with contextlib.suppress(OSError, ValueError):
        print(text, file=file or sys.stdout, flush=True)


def api_ready(port: int) -> bool:
    """The API answers `/readyz` with 200 (its database and broker are reachable)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as response:
            return bool(response.status == 200)
    except (OSError, urllib.error.URLError):
        return False


LOCAL_OWNER = "local"


def ensure_local_key(
    database_url: str, path: Path, key_name: str = "embedded default"
) -> tuple[str, bool]:
    """The runner's API key: read from `path`, or (first start, or the key in it was revoked or
    belongs to another database) created for owner "local" and written there with mode 0600.
    Returns (key, created). `make run-distributed` uses it too."""
    from service.auth import create_api_key
    from service.db import make_engine, make_sessionmaker, session_scope

    engine = make_engine(database_url)
    try:
        factory = make_sessionmaker(engine)
        if path.exists():
            key = path.read_text().strip()
            with session_scope(factory) as session:
                if verify_api_key(session, key) is not None:
                    return key, False
        with session_scope(factory) as session:
            key = create_api_key(session, LOCAL_OWNER, key_name)
    finally:
        engine.dispose()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    os.replace(tmp, path)
    return key, True


def main(argv: list[str] | None = None) -> int:
    parse_args("python -m workers.embedded", argv)
    settings = Settings()
    port = int(os.environ.get("PORT", settings.port))
    concurrency = int(os.environ.get("TRAINYARD_WORKER_CONCURRENCY", "1"))
    VAR_DIR.mkdir(parents=True, exist_ok=True)
    lock_path = VAR_DIR / LOCK_NAME
    try:
        lock_fd = acquire_lock(lock_path, port)
    except AlreadyRunning as exc:
        say(str(exc), sys.stderr)
        return 1

    # Ctrl-C, SIGTERM and SIGHUP (the terminal was closed) all stop both children, in order; a
    # second one while the worker finishes its task stops it cold.
    received: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        received.append(signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)

    upgrade(settings.database_url)  # an installed service has no `make migrate`
    key_path = VAR_DIR / "api-key"
    key, created = ensure_local_key(settings.database_url, key_path)
    ready_file = VAR_DIR / READY_NAME
    ready_file.unlink(missing_ok=True)
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        PARENT_ENV: str(os.getpid()),
        READY_FILE_ENV: str(ready_file.absolute()),
    }
    say(f"trainyard: starting the API on port {port} and a Celery worker ({VAR_DIR})")

    # Own sessions: Ctrl-C reaches only this supervisor, which then stops the children in order.
    # The kernel signals each child when this process dies (Linux; workers.parent_watch), and
    # both hold the lock, so no second runner starts while either lives.
    worker = subprocess.Popen(
        worker_command(concurrency),
        cwd=ROOT,
        env=env,
        start_new_session=True,
        pass_fds=(lock_fd,),
        preexec_fn=pdeathsig_preexec(signal.SIGQUIT),
    )
    api = subprocess.Popen(
        api_command(port, control_socket=control_socket_path(VAR_DIR)),
        cwd=ROOT,
        env=env,
        start_new_session=True,
        pass_fds=(lock_fd,),
        preexec_fn=pdeathsig_preexec(signal.SIGTERM),
    )
    status = 0
    # The block is printed once the API answers /readyz and the worker is ready, a moment after
    # the last of them (its access-log line, its "ready." line), so that it comes last.
    api_up = worker_up = announced = False
    while not received:
        if worker.poll() is not None or api.poll() is not None:
            which = "worker" if worker.poll() is not None else "API"
            say(f"trainyard: the {which} process exited; stopping", sys.stderr)
            status = 1
            break
        if not announced:
            api_up = api_up or api_ready(port)
            worker_up = worker_up or ready_file.exists()
            if api_up and worker_up:
                time.sleep(ANNOUNCE_SETTLE_S)
                announce(port, key, key_path, created, api.pid, worker.pid)
                announced = True
                continue
        time.sleep(0.2)

    # Warm shutdown first (waits for the running task), then cold (SIGQUIT: the pool child is
    # terminated and the unacknowledged message restored to the queue), then kill.
    if worker.poll() is None:
        seen = len(received)
        worker.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + GRACE
        while worker.poll() is None and time.monotonic() < deadline and len(received) <= seen:
            time.sleep(0.1)
        if worker.poll() is None:
            stop(worker, signal.SIGQUIT, 10.0)
    stop(api, signal.SIGTERM, GRACE)
    ready_file.unlink(missing_ok=True)
    os.ftruncate(lock_fd, 0)
    os.close(lock_fd)
    say("trainyard: stopped")
    return status


def announce(
    port: int, key: str, key_path: Path, created: bool, api_pid: int, worker_pid: int
) -> None:
    """The key-and-dashboard block, printed once both children are ready (below their start-up
    output)."""
    if created:
        head = (
            f"trainyard: created an API key for owner {LOCAL_OWNER!r}, written to {key_path} "
            f"(mode 0600):\n\n    {key}\n\n"
            f'  curl -H "Authorization: Bearer $(cat {key_path})" '
            f"http://127.0.0.1:{port}/api/v1/jobs\n"
        )
    else:
        head = f"trainyard: using the API key in {key_path}"
    say(
        f"\n{head}\n"
        f"trainyard: API on http://127.0.0.1:{port} (pid {api_pid}), "
        f"celery worker pid {worker_pid}; Ctrl-C stops both\n"
        f"trainyard: dashboard: http://127.0.0.1:{port}/#token={key}\n"
    )


if __name__ == "__main__":
    sys.exit(main())
