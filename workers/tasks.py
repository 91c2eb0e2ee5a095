"""The Celery task: thin glue between a job row in the SQL store and `workers.training`.

The store, not Celery, holds the job's state. The task receives only the job id and:

1. **Claims** the job with one conditional UPDATE (`status = 'queued'` -> `'running'`,
   `attempts + 1`), so a second delivery of the same message finds nothing to claim.
2. **Re-delivery after a lost worker.** With `task_acks_late` and `task_reject_on_worker_lost`
   a message whose worker died comes back while the row still says `running`. A running
   attempt proves it is alive by its heartbeat (`heartbeat_at`, written after every epoch and by
   a background thread every `HEARTBEAT_INTERVAL` seconds). So a delivery that finds the job
   `running`:
   - with a heartbeat older than `STALE_AFTER`: takes it over as a fresh attempt (conditional
     UPDATE on the `attempts` it read, so of two concurrent deliveries one wins), or, when the
     job already had `MAX_ATTEMPTS` attempts, ends it `failed` with the reason;
   - with a fresh heartbeat: may be a duplicate of a live attempt, or the worker died seconds
     ago. It does not run; it re-schedules itself (`retry` after `STALE_AFTER` seconds) and
     looks again, until the job is finished (nothing to do) or the heartbeat is stale.
   `attempts` is also the fencing token: every later write of an attempt (epochs, the final
   save, failure) is conditional on `status = 'running' AND attempts = <its attempt>`, so an
   attempt that was taken over can no longer touch the job, and stops at its next epoch.
3. Starts every attempt from scratch (the stale `job_epochs` rows of a dead attempt are deleted
   in the claiming transaction); per epoch, in one transaction, appends the epoch row, moves
   `epoch` and `heartbeat_at` forward and reads `cancel_requested`.
4. Saves weights, graph SVG, metrics and `succeeded` in one transaction, only while the attempt
   still owns the running job. Every failure (bad data, divergence, soft time limit, any
   exception) ends the job `failed` with a message; the task itself never raises.
5. Retries every store write whose database connection broke (`with_db_retry`; the engine pings
   connections on checkout), so a cut connection costs a pause, not the job.

Lost workers whose message never comes back, hard time limits and lost messages are handled by
`workers.maintenance` (reaper, reconciler) in the worker's main process.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import sqlalchemy as sa
from celery import shared_task
from celery.exceptions import SoftTimeLimitExceeded
from flask import current_app
from sqlalchemy.orm import Session, sessionmaker, undefer

from service.celery import TRAIN_TASK
from service.db import make_engine, make_sessionmaker, session_scope, utcnow
from service.models import FINAL_STATUSES, Dataset, Job, JobEpoch, TrainedModel
from service.modelspec import array_from_bytes, weights_to_npz
from workers.training import TrainingError, TrainResult, train

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Pauses between tries of a store write whose connection broke (the pool pings on checkout).
DB_RETRY_DELAYS = (0.2, 1.0, 3.0)


@dataclass(frozen=True)
class WorkerSettings:
    max_attempts: int = 3
    stale_after: float = 60.0
    heartbeat_interval: float = 10.0
    soft_time_limit: float | None = None


@dataclass(frozen=True)
class Claim:
    job_id: str
    attempt: int


class _Busy(Exception):
    """The job runs elsewhere with a fresh heartbeat: look again later."""


@shared_task(name=TRAIN_TASK, bind=True, ignore_result=True, max_retries=None)
def train_job(self: Any, job_id: str) -> str:
    """Train job `job_id`; the outcome is in the store (the return value is for logs)."""
    config = current_app.config
    settings = WorkerSettings(
        max_attempts=int(config.get("MAX_ATTEMPTS", 3)),
        stale_after=float(config.get("STALE_AFTER", 60.0)),
        heartbeat_interval=float(config.get("HEARTBEAT_INTERVAL", 10.0)),
        soft_time_limit=config.get("TASK_SOFT_TIME_LIMIT") or None,
    )
    factory = session_factory(str(config["DATABASE_URL"]))
    try:
        return run_job(factory, job_id, settings)
    except _Busy:
        log.info("job %s is running elsewhere; looking again in %ss", job_id, settings.stale_after)
        raise self.retry(countdown=settings.stale_after) from None


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


def run_job(factory: sessionmaker[Session], job_id: str, settings: WorkerSettings) -> str:
    """Claim and run one job; returns the outcome. Raises `_Busy` only (see module doc)."""
    try:
        claim = with_db_retry(lambda: claim_job(factory, job_id, settings), f"job {job_id} claim")
    except _Busy:
        raise
    except Exception:
        log.exception("job %s: could not claim", job_id)
        return "error"
    if isinstance(claim, str):
        log.info("job %s: %s", job_id, claim)
        return claim

    heartbeat = _Heartbeat(factory, claim, settings.heartbeat_interval)
    heartbeat.start()
    try:
        with _SoftLimit() as soft_limit:
            return _run_claimed(factory, claim, soft_limit)
    except SoftTimeLimitExceeded:
        limit = f" ({settings.soft_time_limit:g} s)" if settings.soft_time_limit else ""
        return _fail(factory, claim, f"time limit exceeded{limit}; partial history kept")
    except TrainingError as exc:
        return _fail(factory, claim, str(exc))
    except Exception as exc:
        log.error("job %s failed:\n%s", job_id, traceback.format_exc())
        return _fail(factory, claim, f"{type(exc).__name__}: {exc}")
    finally:
        heartbeat.stop()


def _aware(value: datetime | None) -> datetime | None:
    # SQLite gives naive datetimes back; everything the workers write is UTC.
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def _owned(claim: Claim) -> sa.ColumnElement[bool]:
    return sa.and_(Job.id == claim.job_id, Job.status == "running", Job.attempts == claim.attempt)


def claim_job(factory: sessionmaker[Session], job_id: str, settings: WorkerSettings) -> Claim | str:
    """Make this delivery the job's running attempt, or say why not ('duplicate', ...)."""
    now = utcnow()
    start = {
        "status": "running",
        "attempts": Job.attempts + 1,
        "started_at": now,
        "heartbeat_at": now,
        "finished_at": None,
        "epoch": 0,
        "error": None,
        "metrics": None,
    }
    with session_scope(factory) as session:
        row = session.execute(
            sa.update(Job)
            .where(Job.id == job_id, Job.status == "queued", Job.cancel_requested.is_(False))
            .values(**start)
            .returning(Job.attempts)
        ).first()
        if row is not None:
            session.execute(sa.delete(JobEpoch).where(JobEpoch.job_id == job_id))
            return Claim(job_id, row.attempts)

        job = session.execute(
            sa.select(Job.status, Job.attempts, Job.heartbeat_at, Job.cancel_requested).where(
                Job.id == job_id
            )
        ).first()
        if job is None:
            return "missing"
        if job.status in FINAL_STATUSES:
            return "duplicate"
        if job.status == "queued":  # cancel requested before it ever started
            session.execute(
                sa.update(Job)
                .where(Job.id == job_id, Job.status == "queued")
                .values(status="cancelled", finished_at=now)
            )
            return "cancelled"

        # Running: a live attempt elsewhere, or the leftover of a lost worker.
        heartbeat = _aware(job.heartbeat_at)
        if heartbeat is not None and now - heartbeat < timedelta(seconds=settings.stale_after):
            raise _Busy(job_id)
        seen = sa.and_(Job.id == job_id, Job.status == "running", Job.attempts == job.attempts)
        if job.cancel_requested:
            session.execute(sa.update(Job).where(seen).values(status="cancelled", finished_at=now))
            return "cancelled"
        if job.attempts >= settings.max_attempts:
            session.execute(
                sa.update(Job)
                .where(seen)
                .values(
                    status="failed",
                    finished_at=now,
                    error=f"the worker running this job was lost {job.attempts} times "
                    f"(max attempts {settings.max_attempts}); giving up",
                )
            )
            return "failed"
        row = session.execute(
            sa.update(Job).where(seen).values(**start).returning(Job.attempts)
        ).first()
        if row is None:
            return "duplicate"  # another delivery took it over first
        session.execute(sa.delete(JobEpoch).where(JobEpoch.job_id == job_id))
        log.warning("job %s: taking over from a lost worker (attempt %s)", job_id, row.attempts)
        return Claim(job_id, row.attempts)


def _load(factory: sessionmaker[Session], claim: Claim) -> dict[str, Any]:
    with session_scope(factory) as session:
        job = session.get(Job, claim.job_id)
        assert job is not None
        dataset = session.execute(
            sa.select(Dataset)
            .where(Dataset.id == job.dataset_id)
            .options(undefer(Dataset.features), undefer(Dataset.targets))
        ).scalar_one_or_none()
        if dataset is None:
            raise ValueError(f"dataset {job.dataset_id} does not exist")
        model_spec, training_spec = dict(job.model_spec), dict(job.training_spec)
        features = array_from_bytes(dataset.features)
        targets = array_from_bytes(dataset.targets)
        return {
            "model_spec": model_spec,
            "training_spec": training_spec,
            "dataset_id": dataset.id,
            "features": features,
            "targets": targets,
            "target_kind": dataset.target_kind,
            "classes": dataset.classes,
        }


def _run_claimed(factory: sessionmaker[Session], claim: Claim, soft_limit: _SoftLimit) -> str:
    loaded = with_db_retry(lambda: _load(factory, claim), f"job {claim.job_id} load")
    state = {"cancelled": False, "lost": False}

    def write_epoch(epoch: int, loss: float, val_loss: float | None) -> Any:
        with session_scope(factory) as session:
            row = session.execute(
                sa.update(Job)
                .where(_owned(claim))
                .values(epoch=epoch, heartbeat_at=utcnow())
                .returning(Job.cancel_requested)
            ).first()
            if row is not None:
                # merge: a retry after a commit whose answer was lost writes the same row again
                session.merge(
                    JobEpoch(job_id=claim.job_id, epoch=epoch, loss=loss, val_loss=val_loss)
                )
            return row

    def on_epoch(epoch: int, loss: float, val_loss: float | None) -> bool:
        soft_limit.check()
        row = with_db_retry(
            lambda: write_epoch(epoch, loss, val_loss), f"job {claim.job_id} epoch {epoch}"
        )
        if row is None:
            state["lost"] = True
            return False
        if row.cancel_requested:
            state["cancelled"] = True
            return False
        return True

    result = train(
        loaded["features"],
        loaded["targets"],
        loaded["model_spec"],
        loaded["training_spec"],
        target_kind=loaded["target_kind"],
        classes=loaded["classes"],
        on_epoch=on_epoch,
    )
    if state["lost"]:
        return "lost"
    if not result.completed:
        return with_db_retry(lambda: _cancel(factory, claim), f"job {claim.job_id} cancel")
    return with_db_retry(
        lambda: _save(factory, claim, loaded["dataset_id"], result), f"job {claim.job_id} save"
    )


def _save(
    factory: sessionmaker[Session], claim: Claim, dataset_id: str, result: TrainResult
) -> str:
    now = utcnow()
    with session_scope(factory) as session:
        done = session.execute(
            sa.update(Job)
            .where(_owned(claim), Job.cancel_requested.is_(False))
            .values(
                status="succeeded",
                metrics=result.metrics,
                epoch=len(result.loss_history),
                finished_at=now,
                heartbeat_at=now,
            )
        )
        if done.rowcount != 1:
            session.rollback()
            cancelled = session.execute(
                sa.select(Job.cancel_requested).where(_owned(claim))
            ).scalar_one_or_none()
            if cancelled:
                return _cancel(factory, claim)
            return "lost"
        session.add(
            TrainedModel(
                job_id=claim.job_id,
                dataset_id=dataset_id,
                architecture=result.architecture,
                weights=weights_to_npz(result.state_dict),
                graph_svg=result.graph_svg or "",
                metrics=result.metrics,
            )
        )
    return "succeeded"


def _cancel(factory: sessionmaker[Session], claim: Claim) -> str:
    with session_scope(factory) as session:
        session.execute(
            sa.update(Job).where(_owned(claim)).values(status="cancelled", finished_at=utcnow())
        )
    return "cancelled"


def _fail(factory: sessionmaker[Session], claim: Claim, message: str) -> str:
    log.info("job %s failed: %s", claim.job_id, message)

    def write() -> None:
        with session_scope(factory) as session:
            session.execute(
                sa.update(Job)
                .where(_owned(claim))
                .values(status="failed", error=message[:4000], finished_at=utcnow())
            )

    try:
        with_db_retry(write, f"job {claim.job_id} failure")
    except Exception:
        # The store is unreachable: the heartbeat goes stale and a later delivery takes over.
        log.exception("job %s: could not record the failure", claim.job_id)
        return "error"
    return "failed"


class _SoftLimit:
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

    def __enter__(self) -> _SoftLimit:
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


class _Heartbeat:
    """Keeps `heartbeat_at` fresh between epochs, so a long epoch is not taken for a dead one."""

    def __init__(self, factory: sessionmaker[Session], claim: Claim, interval: float) -> None:
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
                with session_scope(self._factory) as session:
                    session.execute(
                        sa.update(Job).where(_owned(self._claim)).values(heartbeat_at=utcnow())
                    )
            except Exception:
                log.warning("job %s: heartbeat failed", self._claim.job_id, exc_info=True)
