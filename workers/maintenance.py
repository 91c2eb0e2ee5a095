"""Reaper and reconciler: no accepted job stays `running` or `queued` for ever.

Both run in every worker's main process (a daemon thread started on Celery's `worker_ready`
signal), so the embedded mode (one worker, filesystem broker) and the distributed mode (N
workers, Redis) need no extra process. Every action is one conditional UPDATE on the row as it
was read, so two workers sweeping at the same time never act twice on one job: the second
UPDATE matches no row.

- **Reaper.** A `running` job whose heartbeat is older than `STALE_AFTER` lost its worker (a
  SIGKILLed or OOM-killed process, a dead machine, a consumed filesystem-broker message that
  will never come back). It is handed back: `queued` again with `published_at` cleared, so the
  reconciler publishes it at once and the next attempt (`attempts + 1`) starts from scratch;
  after `MAX_ATTEMPTS` lost attempts it ends `failed` with the reason. A cancelled one ends
  `cancelled`. An attempt that is in fact alive (a slow store, say) loses its fencing token
  (`attempts`) and stops at its next epoch.
- **Reconciler.** The SQL store knows every queued job. A queued job that was never published
  (broker down at submit, `published_at IS NULL`) or whose message was handed to the broker
  longer than `REPUBLISH_AFTER` seconds ago (it may have been lost with a Redis restart) is
  published again. A duplicate message is harmless: the claim is a conditional UPDATE.
- **Hard time limit.** When Celery's hard limit kills a task's process, the main process gets
  the `task_failure` signal with `TimeLimitExceeded`; the job ends `failed` ("time limit
  exceeded") at once, its partial history kept.
"""

from __future__ import annotations

import logging
import random
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from celery import Celery
from celery.exceptions import TimeLimitExceeded
from celery.signals import task_failure, worker_ready, worker_shutdown
from flask import Flask
from sqlalchemy.orm import Session, sessionmaker

from service.celery import TRAIN_TASK
from service.db import make_engine, make_sessionmaker, session_scope, utcnow
from service.idempotency import purge_expired
from service.models import Job

log = logging.getLogger(__name__)

#: A job committed without `published_at` may still be being published by the API.
PUBLISH_GRACE_S = 2.0
#: After a hard time limit, the job is failed this long after billiard's signal (once the pool
#: process has been killed: SIGTERM, 0.1 s, SIGKILL).
HARD_LIMIT_RECORD_DELAY_S = 1.0
#: At most this many jobs are republished per sweep (the rest wait for the next one).
REPUBLISH_BATCH = 200
# Publishing from the maintenance thread must not block it for long when the broker is down.
PUBLISH_RETRY_POLICY = {
    "max_retries": 1,
    "interval_start": 0.0,
    "interval_step": 0.2,
    "interval_max": 0.2,
}


@dataclass(frozen=True)
class MaintenanceSettings:
    interval: float = 10.0
    stale_after: float = 60.0
    republish_after: float = 600.0
    max_attempts: int = 3
    hard_time_limit: float | None = None
    # stored `Idempotency-Key` answers are forgotten after this long
    idempotency_ttl: float = 86400.0

    @classmethod
    def from_config(cls, config: Any) -> MaintenanceSettings:
        return cls(
            interval=float(config.get("MAINTENANCE_INTERVAL", 10.0)),
            stale_after=float(config.get("STALE_AFTER", 60.0)),
            republish_after=float(config.get("REPUBLISH_AFTER", 600.0)),
            max_attempts=int(config.get("MAX_ATTEMPTS", 3)),
            hard_time_limit=float(config.get("TASK_TIME_LIMIT") or 0) or None,
        )


def reap(
    factory: sessionmaker[Session], settings: MaintenanceSettings, now: datetime | None = None
) -> dict[str, str]:
    """Hand back, fail or cancel running jobs with a stale heartbeat; {job id: outcome}."""
    now = now or utcnow()
    cutoff = now - timedelta(seconds=settings.stale_after)
    stale = sa.or_(
        Job.heartbeat_at < cutoff, sa.and_(Job.heartbeat_at.is_(None), Job.started_at < cutoff)
    )
    outcomes: dict[str, str] = {}
    with session_scope(factory) as session:
        rows = session.execute(
            sa.select(Job.id, Job.attempts, Job.cancel_requested).where(
                Job.status == "running", stale
            )
        ).all()
    for row in rows:
        seen = sa.and_(
            Job.id == row.id, Job.status == "running", Job.attempts == row.attempts, stale
        )
        if row.cancel_requested:
            outcome, values = "cancelled", {"status": "cancelled", "finished_at": now}
        elif row.attempts >= settings.max_attempts:
            outcome = "failed"
            values = {
                "status": "failed",
                "finished_at": now,
                "error": f"the worker running this job was lost {row.attempts} times "
                f"(max attempts {settings.max_attempts}); giving up",
            }
        else:
            outcome = "requeued"
            values = {"status": "queued", "published_at": None, "heartbeat_at": None}
        with session_scope(factory) as session:
            if session.execute(sa.update(Job).where(seen).values(**values)).rowcount == 1:
                outcomes[row.id] = outcome
                log.warning(
                    "reaper: job %s (attempt %s) has had no heartbeat for %ss: %s",
                    row.id,
                    row.attempts,
                    settings.stale_after,
                    outcome,
                )
    return outcomes


def reconcile(
    factory: sessionmaker[Session],
    celery: Celery,
    settings: MaintenanceSettings,
    now: datetime | None = None,
) -> list[str]:
    """Publish again queued jobs whose message may be missing; returns the ids published."""
    now = now or utcnow()
    never = sa.and_(
        Job.published_at.is_(None), Job.created_at < now - timedelta(seconds=PUBLISH_GRACE_S)
    )
    long_ago = Job.published_at < now - timedelta(seconds=settings.republish_after)
    with session_scope(factory) as session:
        rows = session.execute(
            sa.select(Job.id, Job.published_at)
            .where(Job.status == "queued", sa.or_(never, long_ago))
            .order_by(Job.created_at)
            .limit(REPUBLISH_BATCH)
        ).all()
    published = []
    for row in rows:
        was = (
            Job.published_at.is_(None)
            if row.published_at is None
            else (Job.published_at == row.published_at)
        )
        # Take the job for this sweep (another worker's UPDATE then matches nothing) ...
        with session_scope(factory) as session:
            taken = session.execute(
                sa.update(Job)
                .where(Job.id == row.id, Job.status == "queued", was)
                .values(published_at=now)
            ).rowcount
        if taken != 1:
            continue
        # ... and publish; on failure put `published_at` back so the next sweep tries again.
        try:
            celery.send_task(
                TRAIN_TASK, args=[row.id], retry=True, retry_policy=PUBLISH_RETRY_POLICY
            )
        except Exception as exc:
            log.warning("reconciler: could not publish job %s: %s", row.id, exc)
            with session_scope(factory) as session:
                session.execute(
                    sa.update(Job)
                    .where(Job.id == row.id, Job.published_at == now)
                    .values(published_at=row.published_at)
                )
            break  # the broker is down: the rest waits for the next sweep
        published.append(row.id)
        log.info("reconciler: published job %s again", row.id)
    return published


def fail_timed_out(factory: sessionmaker[Session], job_id: str, limit: float | None) -> bool:
    """End a running job whose process the hard time limit killed; False if it was not running."""
    what = f" (hard limit {limit:g} s)" if limit else ""
    with session_scope(factory) as session:
        done = session.execute(
            sa.update(Job)
            .where(Job.id == job_id, Job.status == "running")
            .values(
                status="failed",
                finished_at=utcnow(),
                error=f"time limit exceeded{what}; partial history kept",
            )
        )
    return done.rowcount == 1


def sweep(factory: sessionmaker[Session], celery: Celery, settings: MaintenanceSettings) -> None:
    """One pass: reap lost jobs, publish lost messages, forget expired idempotent answers."""
    reap(factory, settings)
    reconcile(factory, celery, settings)
    with factory() as session:
        purge_expired(session, settings.idempotency_ttl)


class Maintenance:
    """The periodic sweep of one worker's main process (a daemon thread)."""

    def __init__(self, flask_app: Flask, celery: Celery) -> None:
        self.settings = MaintenanceSettings.from_config(flask_app.config)
        self.database_url = str(flask_app.config["DATABASE_URL"])
        self.celery = celery
        self._factory: sessionmaker[Session] | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def factory(self) -> sessionmaker[Session]:
        with self._lock:
            if self._factory is None:
                self._factory = make_sessionmaker(make_engine(self.database_url))
            return self._factory

    def sweep(self) -> None:
        sweep(self.factory, self.celery, self.settings)

    def start(self) -> None:
        if self.settings.interval <= 0 or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="trainyard-maintenance", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        interval = self.settings.interval
        # Spread the workers' sweeps; the first one comes soon after start (a restarted worker
        # picks up what its predecessor left behind).
        wait = random.uniform(0.1, 0.5) * interval
        while not self._stop.wait(wait):
            try:
                self.sweep()
            except Exception:
                log.warning("maintenance sweep failed; trying again later", exc_info=True)
            wait = interval * random.uniform(0.8, 1.2)


_maintenance: Maintenance | None = None


def install(flask_app: Flask, celery: Celery) -> Maintenance:
    """Run the sweep in this worker's main process once it is ready; handle hard time limits."""
    global _maintenance
    maintenance = Maintenance(flask_app, celery)
    _maintenance = maintenance

    def on_ready(**_: Any) -> None:
        maintenance.start()

    def on_shutdown(**_: Any) -> None:
        maintenance.stop()

    def on_task_failure(
        sender: Any = None, exception: BaseException | None = None, args: Any = None, **_: Any
    ) -> None:
        # Sent in the main process when the hard limit killed the task's process.
        if not isinstance(exception, TimeLimitExceeded) or getattr(sender, "name", "") != (
            TRAIN_TASK
        ):
            return
        job_id = str(args[0]) if args else ""

        def record() -> None:
            try:
                limit = maintenance.settings.hard_time_limit
                if fail_timed_out(maintenance.factory, job_id, limit):
                    log.warning("job %s: hard time limit exceeded; failed", job_id)
            except Exception:
                # the reaper fails it later (stale heartbeat, then max attempts)
                log.exception("job %s: could not record the hard time limit", job_id)

        # Billiard sends this before it kills the pool process. Failing the job now would let
        # the still-running attempt see it lost and return at that very moment, a result
        # racing the kill (seen to leave the worker consuming nothing more). So: once the
        # process is gone.
        timer = threading.Timer(HARD_LIMIT_RECORD_DELAY_S, record)
        timer.daemon = True
        timer.start()

    worker_ready.connect(on_ready, weak=False)
    worker_shutdown.connect(on_shutdown, weak=False)
    task_failure.connect(on_task_failure, weak=False)
    return maintenance
