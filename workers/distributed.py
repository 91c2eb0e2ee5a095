"""Distributed mode on this machine in one command: `python -m workers.distributed`
(`make run-distributed`).

Uses the local PostgreSQL and Redis (`DATABASE_URL`, default
`postgresql+psycopg://postgres@127.0.0.1:5432/trainyard`; `CELERY_BROKER_URL`, default
`redis://127.0.0.1:6379/0`): creates the database if it is missing, migrates it
(`service.migrate`), creates an API key for the owner "local" on first
start (written to `$TRAINYARD_VAR_DIR/distributed-api-key`, mode 0600, and reused while the
database accepts it), then starts the API under gunicorn on `127.0.0.1:$PORT` and `--workers N`
Celery workers (`-l info`, one job at a time each, as in docker-compose.yml). The key and the
dashboard's address are printed once the API answers and every worker replies to a ping. Ctrl-C
or SIGTERM stops them all: the workers get a warm shutdown first (they finish their running
task, or after `GRACE` seconds are stopped cold), then gunicorn.

These are the by-hand steps of the README's "Distributed mode", for a development machine;
a deployment runs the same commands from docker-compose.yml.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import redis
import sqlalchemy as sa
from celery import Celery

from service.config import VAR_DIR
from service.migrate import upgrade
from workers.embedded import LOCAL_OWNER, ensure_local_key

ROOT = Path(__file__).resolve().parent.parent
DATABASE_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/trainyard"
BROKER_URL = "redis://127.0.0.1:6379/0"
OWNER = LOCAL_OWNER
GRACE = 10.0
READY_TIMEOUT = 60.0


def say(message: str) -> None:
    print(f"trainyard: {message}", flush=True)


def ensure_database(database_url: str) -> bool:
    """Create the PostgreSQL database of `database_url` if it does not exist (as `createdb`
    would, connected to the server's `postgres` database); True if it was created."""
    url = sa.make_url(database_url)
    name = url.database
    if url.get_backend_name() != "postgresql" or not name:
        raise SystemExit(f"trainyard: DATABASE_URL is not a PostgreSQL database: {database_url}")
    admin = sa.create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            found = conn.execute(
                sa.text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": name}
            ).first()
            if found is None:
                quoted = conn.dialect.identifier_preparer.quote(name)
                conn.exec_driver_sql(f"CREATE DATABASE {quoted}")
                return True
            return False
    except sa.exc.OperationalError as exc:
        raise SystemExit(
            f"trainyard: cannot reach PostgreSQL at {url.render_as_string(hide_password=True)}"
            f" ({exc.orig}); start it, or set DATABASE_URL"
        ) from None
    finally:
        admin.dispose()


def check_broker(broker_url: str) -> None:
    client = redis.Redis.from_url(broker_url, socket_connect_timeout=3)
    try:
        client.ping()
    except redis.RedisError as exc:
        raise SystemExit(
            f"trainyard: cannot reach Redis at {broker_url} ({exc}); start it, or set "
            "CELERY_BROKER_URL"
        ) from None
    finally:
        client.close()


def api_command(port: int, workers: int = 2) -> list[str]:
    return [
        sys.executable, "-m", "gunicorn", "--config", "python:workers.gunicorn_conf",
        "--bind", f"127.0.0.1:{port}", "--workers", str(workers),
        # gunicorn's default control socket is one per user, shared with any other gunicorn
        "--no-control-socket",
        "service:create_app()",
    ]  # fmt: skip


def worker_command(nodename: str) -> list[str]:
    return [
        sys.executable, "-m", "celery", "-A", "workers.app", "worker", "-l", "info",
        "--concurrency", "1", "--without-gossip", "--without-mingle", "--hostname", nodename,
    ]  # fmt: skip


def stop(proc: subprocess.Popen[bytes], sig: int, grace: float) -> None:
    if proc.poll() is None:
        try:
            proc.send_signal(sig)
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_ready(port: int, broker_url: str, nodenames: set[str], alive: Callable[[], bool]) -> bool:
    """True once /healthz answers 200 and every worker replies to a ping."""
    deadline = time.monotonic() + READY_TIMEOUT
    api_ready = False
    control = Celery(broker=broker_url)
    try:
        while time.monotonic() < deadline and alive():
            if not api_ready:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2):
                        api_ready = True
                except OSError:
                    pass
            if api_ready:
                replies = control.control.ping(timeout=1.0) or []
                if nodenames <= {name for reply in replies for name in reply}:
                    return True
            time.sleep(0.5)
    finally:
        control.close()
    return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m workers.distributed",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=int(os.environ.get("WORKERS", "2")),
        help="Celery worker processes to start (default: $WORKERS, else 2)",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=int(os.environ.get("PORT", "8000")),
        help="the API's port on 127.0.0.1 (default: $PORT, else 8000)",
    )
    args = parser.parse_args(argv)

    database_url = os.environ.get("DATABASE_URL") or DATABASE_URL
    broker_url = os.environ.get("CELERY_BROKER_URL") or BROKER_URL
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "CELERY_BROKER_URL": broker_url,
        "PYTHONUNBUFFERED": "1",
    }

    check_broker(broker_url)
    if ensure_database(database_url):
        say(f"created the database {sa.make_url(database_url).database!r}")
    upgrade(database_url)
    key_path = VAR_DIR / "distributed-api-key"
    key, created = ensure_local_key(database_url, key_path, "make run-distributed")
    if created:
        say(f"created an API key for owner {OWNER!r}, written to {key_path} (mode 0600)")

    stopping = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    # Own sessions: Ctrl-C reaches only this supervisor, which then stops the children in order.
    nodenames = [f"worker{i}-{os.getpid()}@{os.uname().nodename}" for i in range(args.workers)]
    workers = [
        subprocess.Popen(worker_command(name), cwd=ROOT, env=env, start_new_session=True)
        for name in nodenames
    ]
    api = subprocess.Popen(api_command(args.port), cwd=ROOT, env=env, start_new_session=True)
    procs = [api, *workers]

    def alive() -> bool:
        return not stopping and all(p.poll() is None for p in procs)

    status = 0
    if wait_ready(args.port, broker_url, set(nodenames), alive):
        say(
            f"distributed mode: API on http://127.0.0.1:{args.port} (pid {api.pid}), "
            f"{args.workers} celery workers (pids {', '.join(str(w.pid) for w in workers)}) on "
            f"{broker_url}, database {sa.make_url(database_url).render_as_string()}; "
            "Ctrl-C stops them all\n"
            f"trainyard: API key of owner {OWNER!r} (in {key_path}):\n\n    {key}\n\n"
            f"  export TRAINYARD_API_KEY=$(cat {key_path})   # for the client and `trainyard`\n"
            f"trainyard: dashboard: http://127.0.0.1:{args.port}/#token={key}"
        )
    elif not stopping and all(p.poll() is None for p in procs):
        print(f"trainyard: not ready after {READY_TIMEOUT:.0f} s (see the output above); "
              "stopping", file=sys.stderr, flush=True)  # fmt: skip
        status = 1
        stopping = True

    while not stopping:
        if not alive():
            print("trainyard: a process exited; stopping", file=sys.stderr, flush=True)
            status = 1
            break
        time.sleep(0.2)

    # Warm shutdown first (running tasks finish), then cold (SIGQUIT: the unacknowledged
    # message goes back to the queue), then kill; the API last.
    for worker in workers:
        if worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + GRACE
    for worker in workers:
        try:
            worker.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            stop(worker, signal.SIGQUIT, 10.0)
    stop(api, signal.SIGTERM, GRACE)
    say("stopped")
    return status


if __name__ == "__main__":
    sys.exit(main())
