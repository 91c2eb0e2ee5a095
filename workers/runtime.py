"""What a running attempt needs around it in a worker process: its database sessions, retries of
writes whose connection broke, the heartbeat thread and Celery's soft time limit; and what the
worker's main process imports for it before the pool forks (`preload`).

None of this decides a job's state; the writes themselves are `service.lifecycle`'s.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import sqlalchemy as sa
from billiard.common import terminate_handler_fired
from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy.orm import Session, sessionmaker

from service import lifecycle
from service.db import make_engine, make_sessionmaker

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Pauses between tries of a store write whose connection broke (the pool pings on checkout).
DB_RETRY_DELAYS = (0.2, 1.0, 3.0)

_factories: dict[tuple[int, str], sessionmaker[Session]] = {}


def session_factory(database_url: str) -> sessionmaker[Session]:
    """One engine per process and URL, made after the prefork pool forked (never shared)."""
    key = (os.getpid(), database_url)
    if key not in _factories:
        _factories[key] = make_sessionmaker(make_engine(database_url))
    return _factories[key]


def with_db_retry(write: Callable[[], T], what: str) -> T:
    """`write()` (one whole transaction), tried again when the database connection broke.

    A connection cut under a running job (a restarted or failed-over PostgreSQL, an admin's
    `pg_terminate_backend`) fails the statement in flight; the next try checks out a fresh,
    pinged connection. Every retried write is idempotent (conditional UPDATEs, merged rows).
    """
    for delay in (*DB_RETRY_DELAYS, None):
        try:
            return write()
        except (sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
            if delay is None:
                raise
            log.warning("%s: database error, retrying in %ss: %s", what, delay, exc)
            time.sleep(delay)
    raise AssertionError("unreachable")


def stopping() -> bool:
    """Has this pool process been told to stop (the terminate signal of a cold shutdown)?

    Billiard's handler raises `SystemExit` wherever the process is. Raised inside a database
    call, it can be swallowed by SQLAlchemy's pool while it resets the connection, and the
    attempt then fails on its broken session with an error that has nothing to do with the job.
    Such an attempt must not end the job: the worker is going away, the message goes back to the
    queue (`task_reject_on_worker_lost`) and the next worker runs the job again.
    """
    return terminate_handler_fired()


class SoftLimit:
    """Celery's soft time limit, delivered at an epoch boundary.

    Billiard raises `SoftTimeLimitExceeded` from its SIGUSR1 handler wherever the pool process
    happens to be. Inside a database driver call that leaves the connection mid-protocol, and
    SQLAlchemy's pool swallows the exception while resetting it: training would go on until the
    hard limit. While a job trains, the signal only sets a flag; the next epoch raises the
    exception, outside any database call. (A single epoch longer than the gap between the soft
    and the hard limit ends at the hard limit.)
    """

    def __init__(self) -> None:
        self.fired = False
        self._previous: Any = None

    def __enter__(self) -> SoftLimit:
        if hasattr(signal, "SIGUSR1") and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGUSR1, self._on_signal)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGUSR1, self._previous)

    def _on_signal(self, _signum: int, _frame: object) -> None:
        self.fired = True

    def check(self) -> None:
        if self.fired:
            raise SoftTimeLimitExceeded()


class Heartbeat:
    """Keeps `heartbeat_at` fresh between epochs, so a long epoch is not taken for a dead one."""

    def __init__(
        self, factory: sessionmaker[Session], claim: lifecycle.Claim, interval: float
    ) -> None:
        self._factory = factory
        self._claim = claim
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                lifecycle.heartbeat(self._factory, self._claim)
            except Exception:
                log.warning("job %s: heartbeat failed", self._claim.job_id, exc_info=True)


def preload(database_url: str) -> None:
    """Import, in the worker's main process before the prefork pool forks, what a pool
    process's first task would otherwise import while it runs: pandas (pyarrow imports it the
    first time it builds or converts an array), NumPy's random generators, the database's
    dialect and driver.

    Besides sparing every pool process the time of those imports, this keeps a cold
    shutdown's terminate signal from being lost: billiard's handler raises `SystemExit`
    wherever the pool process is, and pyarrow runs its lazy import of pandas inside a Cython
    function that discards any exception. A signal that landed in that import was swallowed,
    and the attempt it was meant to stop trained on to the end while the shutdown waited for
    it. (A worker built through the Flask app imported all this by chance.) `stopping`,
    checked at every epoch, catches what still slips through.
    """
    import numpy.random  # noqa: F401
    import pyarrow as pa

    pa.array([0.0]).to_numpy(zero_copy_only=False)  # pyarrow's pandas shim imports pandas
    make_engine(database_url).dispose()  # no connection: the dialect and its driver
