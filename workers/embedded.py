"""Embedded mode: `python -m workers.embedded` runs the API and one Celery worker side by side.

Both are real processes: `celery -A workers.app worker` (the same command as the distributed
mode, on the server-less filesystem broker under `var/` by default) and the API under gunicorn
on `127.0.0.1:$PORT`. Ctrl-C or SIGTERM stops both: the worker gets a warm shutdown (it
finishes the running task, or after `GRACE` seconds is stopped cold: its unacknowledged message
goes back to the queue and, once the job's heartbeat is stale, the next start takes the job
over), then gunicorn. If either
process exits on its own, the other is stopped too and the exit status says so.

On first start it creates an API key for the owner "local", prints it and writes it to
`$TRAINYARD_VAR_DIR/api-key` (mode 0600), as notebook servers do with their tokens; later starts
reuse that file and print where it is. `curl -H "Authorization: Bearer $(cat var/api-key)"`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from service.auth import verify_api_key
from service.config import VAR_DIR, Settings

ROOT = Path(__file__).resolve().parent.parent
GRACE = 10.0


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
    ]


def api_command(port: int, host: str = "127.0.0.1", workers: int = 2) -> list[str]:
    return [
        sys.executable,
        "-m",
        "gunicorn",
        "--bind",
        f"{host}:{port}",
        "--workers",
        str(workers),
        "--access-logfile",
        "-",
        "service:create_app()",
    ]


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, grace: float = GRACE) -> int:
    """Signal `proc`, wait up to `grace` seconds, then kill it; returns its exit status."""
    if proc.poll() is None:
        try:
            proc.send_signal(sig)
            return proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait()


LOCAL_OWNER = "local"


def ensure_local_key(database_url: str, path: Path) -> tuple[str, bool]:
    """The embedded mode's API key: read from `path`, or (first start, or the key in it was
    revoked or belongs to another database) created for owner "local" and written there with
    mode 0600. Returns (key, created)."""
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
            key = create_api_key(session, LOCAL_OWNER, "embedded default")
    finally:
        engine.dispose()
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    os.replace(tmp, path)
    return key, True


def main(argv: list[str] | None = None) -> int:
    settings = Settings()
    port = int(os.environ.get("PORT", settings.port))
    concurrency = int(os.environ.get("TRAINYARD_WORKER_CONCURRENCY", "1"))
    VAR_DIR.mkdir(parents=True, exist_ok=True)
    key_path = VAR_DIR / "api-key"
    key, created = ensure_local_key(settings.database_url, key_path)
    if created:
        print(
            f"trainyard: created an API key for owner {LOCAL_OWNER!r}, written to {key_path} "
            f"(mode 0600):\n\n    {key}\n\n"
            f'  curl -H "Authorization: Bearer $(cat {key_path})" '
            f"http://127.0.0.1:{port}/api/v1/jobs\n",
            flush=True,
        )
    else:
        print(f"trainyard: using the API key in {key_path}", flush=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}

    stopping = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    # Own sessions: Ctrl-C reaches only this supervisor, which then stops the children in order.
    worker = subprocess.Popen(
        worker_command(concurrency), cwd=ROOT, env=env, start_new_session=True
    )
    api = subprocess.Popen(api_command(port), cwd=ROOT, env=env, start_new_session=True)
    print(
        f"trainyard: API on http://127.0.0.1:{port} (pid {api.pid}), "
        f"celery worker pid {worker.pid}; Ctrl-C stops both\n"
        f"trainyard: dashboard: http://127.0.0.1:{port}/#token={key}",
        flush=True,
    )
    status = 0
    while not stopping:
        if worker.poll() is not None or api.poll() is not None:
            which = "worker" if worker.poll() is not None else "API"
            print(f"trainyard: the {which} process exited; stopping", file=sys.stderr, flush=True)
            status = 1
            break
        time.sleep(0.2)

    # Warm shutdown first (waits for the running task), then cold (SIGQUIT: the pool child is
    # terminated and the unacknowledged message restored to the queue), then kill.
    if worker.poll() is None:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=GRACE)
        except subprocess.TimeoutExpired:
            stop(worker, signal.SIGQUIT, 10.0)
    stop(api, signal.SIGTERM, GRACE)
    print("trainyard: stopped", flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
