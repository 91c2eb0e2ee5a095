"""The maintenance loop: no accepted job stays `running` or `queued` for ever.

It runs in every worker's main process (a daemon thread started on Celery's `worker_ready`
signal), so the embedded mode (one worker, filesystem broker) and the distributed mode (N
workers, Redis) need no extra process. Every `MAINTENANCE_INTERVAL` seconds it sweeps; what a
sweep does to a job is `service.lifecycle`'s, one conditional UPDATE on the row as it was read, so
two workers sweeping at the same time never act twice on one job:

- **Reaper** (`lifecycle.reap`). A `running` job whose heartbeat is older than `STALE_AFTER`
  lost its worker (a SIGKILLed or OOM-killed process, a dead machine, a consumed
  filesystem-broker message that will never come back). It is handed back to the queue for a
  fresh attempt, or ends `failed` after `MAX_ATTEMPTS` lost attempts (`cancelled` if a cancel
  was asked for). An attempt that is in fact alive (a slow store, say) loses its fencing token
  (`attempts`) and stops at its next epoch.
- **Reconciler** (`lifecycle.reconcile`). A queued job that was never published (broker down at
  submit) or whose message was handed to the broker longer than `REPUBLISH_AFTER` seconds ago
  (it may have been lost with a Redis restart) is published again.
- **Sweeps** (`service.sweeps.advance_all`). Every unfinished sweep starts the trials it has
  room for and ends once its trials have: the step a worker normally takes right after a trial
  ends, taken here when that worker was lost first (or its publish failed).
- **Webhooks** (`service.outbox.scan`). Every job's and sweep's end records its webhook
  deliveries in its own transaction (`service.lifecycle`) and whoever ended it publishes them;
  the scan publishes those whose publish was lost (a broker down, a process lost after the
  commit), records any missing, and publishes again due attempts whose message was never
  sent, was lost, or whose worker was lost mid-delivery.
  Attempts that still wait a few seconds after they were due (queued behind training jobs,
  with every worker busy) are sent from this process's own threads
  (`workers.webhooks.WaitingSender`).
- **Deletes and retention** (`service.deletion`): what is past its `expires_at` is tombstoned
  as a `DELETE` would (`expire`), then every tombstoned dataset's parts are removed from the
  store and the rows of deleted datasets, jobs, models and sweeps are removed (`purge`); on a
  SQLite database with `auto_vacuum=INCREMENTAL`, the freed pages go back to the file system.
- Stored `Idempotency-Key` answers older than a day are forgotten; audit log entries older
  than `TRAINYARD_AUDIT_RETENTION_DAYS` too (`service.audit_log.purge_expired`; off by default).
- **Expired resumable uploads** (`service.uploads.delete_expired`): unfinished uploads past
  `TRAINYARD_UPLOAD_EXPIRE_HOURS` lose their row and their chunks in the store.
- **Orphaned dataset parts** (`service.datasets.delete_orphans`, every `ORPHAN_SWEEP_EVERY_S`).
  The parts of an upload whose API process died before the dataset's row was added are
  deleted once they are `service.dataset_store.ORPHAN_AFTER_S` old; so are the prediction
  parts of predict jobs that ended without success (`service.predictions.delete_unused`: a
  worker lost for good leaves its attempt's parts), and a succeeded job's attempts other than
  its output (a lost attempt that went on writing).

**Hard time limit.** When Celery's hard limit kills a task's process, the main process gets the
`task_failure` signal with `TimeLimitExceeded`; the job ends `failed` ("time limit exceeded",
`lifecycle.fail_timed_out`) once the process is gone, its partial history kept.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from typing import Any

import sqlalchemy as sa
from celery import Celery
from celery.exceptions import TimeLimitExceeded
from celery.signals import task_failure, worker_ready, worker_shutdown
from sqlalchemy.orm import Session, sessionmaker

from service import audit_log, datasets, deletion, lifecycle, outbox, predictions, sweeps, uploads
from service.config import Settings
from service.db import make_engine, make_sessionmaker
from service.idempotency import purge_expired
from workers.context import WorkerContext
from workers.webhooks import WaitingSender

log = logging.getLogger(__name__)

#: After a hard time limit, the job is failed this long after billiard's signal (once the pool
#: process has been killed: SIGTERM, 0.1 s, SIGKILL).
HARD_LIMIT_RECORD_DELAY_S = 1.0


#: how often (seconds) a worker's main process looks for orphaned dataset parts
ORPHAN_SWEEP_EVERY_S = 600.0
_last_orphan_sweep = -math.inf


def sweep(factory: sessionmaker[Session], celery: Celery, settings: Settings) -> None:
    """One pass: reap lost jobs, advance sweeps, publish lost messages, announce ended jobs and
    sweeps to their webhooks, forget expired idempotent answers, delete expired resumable
    uploads and their chunks; every `ORPHAN_SWEEP_EVERY_S`, delete dataset parts whose upload
    never finished and chunks whose upload row is gone."""
    global _last_orphan_sweep
    lifecycle.reap(factory, settings)
    sweeps.advance_all(factory, celery, settings)
    lifecycle.reconcile(factory, celery, settings)
    outbox.scan(factory, celery, settings)
    with factory() as session:
        purge_expired(session, settings.idempotency_ttl)
    expired_rows = deletion.expire(factory, celery)
    if expired_rows:
        log.info("expired (deleted) %d dataset(s), job(s), model(s)", len(expired_rows))
    purged = deletion.purge(factory)
    if any(purged.values()):
        log.info("purged deleted rows: %s", purged)
        deletion.vacuum(factory)
    with factory() as session, session.begin():
        audit_log.purge_expired(session, settings.audit_retention_days)
    expired = uploads.delete_expired(factory)
    if expired:
        log.info("deleted %d expired resumable upload(s): %s", len(expired), expired)
    if time.monotonic() - _last_orphan_sweep >= ORPHAN_SWEEP_EVERY_S:
        _last_orphan_sweep = time.monotonic()
        orphans = datasets.delete_orphans(factory, settings.store_url)
        if orphans:
            log.info("deleted the parts of %d unfinished upload(s): %s", len(orphans), orphans)
        unused = predictions.delete_unused(factory, settings.store_url)
        if unused:
            log.info(
                "deleted the predictions of %d unused job(s)/attempt(s): %s", len(unused), unused
            )
        chunks = uploads.delete_orphan_chunks(factory, settings.store_url)
        if chunks:
            log.info("deleted the chunks of %d lost resumable upload(s): %s", len(chunks), chunks)


class Maintenance:
    """The periodic sweep of one worker's main process (a daemon thread)."""

    def __init__(self, context: WorkerContext, celery: Celery) -> None:
        self.settings = context.settings
        self.celery = celery
        self._factory: sessionmaker[Session] | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sender: WaitingSender | None = None

    @property
    def factory(self) -> sessionmaker[Session]:
        with self._lock:
            if self._factory is None:
                self._factory = make_sessionmaker(make_engine(self.settings.database_url))
            return self._factory

    @property
    def sender(self) -> WaitingSender:
        factory = self.factory  # takes the lock itself
        with self._lock:
            if self._sender is None:
                self._sender = WaitingSender(factory, self.celery, self.settings)
            return self._sender

    def sweep(self) -> None:
        sweep(self.factory, self.celery, self.settings)
        self.sender.send_waiting()

    def start(self) -> None:
        if self.settings.maintenance_interval <= 0 or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="trainyard-maintenance", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            sender = self._sender
        if sender is not None:
            sender.close()

    def _run(self) -> None:
        interval = self.settings.maintenance_interval
        # Spread the workers' sweeps; the first one comes soon after start (a restarted worker
        # picks up what its predecessor left behind).
        wait = random.uniform(0.1, 0.5) * interval
        while not self._stop.wait(wait):
            try:
                self.sweep()
            except (sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
                # a cut or unreachable database: expected, and the next sweep retries
                log.warning("maintenance sweep: database error, trying again later: %s", exc)
            except Exception:
                log.warning("maintenance sweep failed; trying again later", exc_info=True)
            wait = interval * random.uniform(0.8, 1.2)


def install(context: WorkerContext, celery: Celery) -> Maintenance:
    """Run the sweep in this worker's main process once it is ready; handle hard time limits."""
    maintenance = Maintenance(context, celery)

    def on_ready(**_: Any) -> None:
        maintenance.start()

    def on_shutdown(**_: Any) -> None:
        maintenance.stop()

    def on_task_failure(
        sender: Any = None, exception: BaseException | None = None, args: Any = None, **_: Any
    ) -> None:
        # Sent in the main process when the hard limit killed the task's process.
        if not isinstance(exception, TimeLimitExceeded) or getattr(sender, "name", "") not in (
            lifecycle.TASKS.values()
        ):
            return
        job_id = str(args[0]) if args else ""

        def record() -> None:
            try:
                if lifecycle.fail_timed_out(maintenance.factory, job_id, maintenance.settings):
                    log.warning("job %s: hard time limit exceeded; failed", job_id)
                    # its deliveries were recorded with the failure: send them now
                    outbox.publish_recorded(maintenance.factory, celery, [job_id])
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
