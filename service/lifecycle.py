"""The life of a job: every change of a job row's state is one function of this module.

Every kind of job (`Job.kind`: "train", "predict") lives the same life below; only the task
that runs an attempt differs (`TASKS`): a training attempt records epochs, a predict attempt
its rows written (`record_progress`), and only a training job's success saves a model.

::

    submit ──► queued ───────────── claim ────────────► running ───── succeed ────► succeeded
               │ ▲ ↺ publish, reconcile                 │ │ ↺ heartbeat, record_epoch
               │ │   (published_at)                     │ │ ↺ claim: take over a lost worker's
               │ │                                      │ │   job (attempts + 1, from scratch)
               │ │                                      │ │ ↺ cancel (API): the cancel flag
               │ └─── reap: hand back (stale heartbeat) ┘ │
               │                                          ├──── fail, fail_timed_out ───► failed
               │                                          │     claim, reap: lost
               │                                          │     max_attempts times
               │                                          │
               └── cancel (API), ──► cancelled ◄──────────┘ cancel_attempt (the flag seen
                   claim (flagged)                          at an epoch); claim, reap
                                                            (flagged, its worker lost)

======================  ===============================  ======================================
function                transition                       who calls it
======================  ===============================  ======================================
`submit`                (new) -> queued                  API (`service.jobs.create_job`)
`submit_predict`        (new) -> queued (kind predict)   API (`service.predictions`)
`submit_import`         (new) -> queued (kind import)    API (`service.imports`)
`publish`               queued: `published_at` set       API, after the commit
`cancel`                queued -> cancelled, or running  API (`POST /jobs/{id}/cancel`)
                        gets `cancel_requested`
`claim`                 queued -> running, or a stale    the task, per delivery
                        running -> running (take over),
                        -> cancelled / failed
`heartbeat`,            running: `heartbeat_at`,         the task (heartbeat thread, per epoch)
`record_epoch`          `epoch`, one `job_epochs` row
`record_progress`       running: `rows_done`,            the predict and import tasks
                        (`rows_total`), `heartbeat_at`   (between chunks)
`succeed`               running -> succeeded (and the    the task
                        `models` row; its registry
                        version under `register_as`)
`cancel_attempt`        running -> cancelled             the task (cancel flag seen)
`fail`                  running -> failed                the task (any error, soft time limit)
`reap`                  stale running -> queued (hand    maintenance loop (every worker)
                        back), failed or cancelled
`reconcile`             queued: published again          maintenance loop
`fail_timed_out`        running -> failed                maintenance (hard time limit)
`label`                 any: `name`, `tags`,             API (`PATCH /jobs/{id}`)
                        `expires_at` (no state)
`cancel_trials`         a sweep's queued trials ->       `service.sweeps.cancel_sweep` (API)
                        cancelled, running ones get
                        `cancel_requested`
`start_trials`,         a sweep's held trials -> queued  `service.sweeps.advance` (API, task,
`send_trials`           proper, published (or            maintenance)
                        `published_at` cleared again)
`tombstone`, `purge`    a final job -> deleted           `service.deletion` (API `DELETE`,
                        (`deleted_at`), then its row     maintenance: expiry, purge)
                        and epochs removed
======================  ===============================  ======================================

A sweep's trials are jobs like any other, with one more state before `queued` proper: `held`
(queued, never published, claimed by no delivery) until their sweep starts them within its
`max_parallel`. `service.sweeps` decides when (the sweep's own states are its) and calls the
functions above, so this module stays the only writer of jobs; `cancel_attempt` takes the
`stop_reason` of a trial the median rule stopped (`early_termination`).

The rules:

- The SQL store is the source of truth; the broker only carries the job id. A job is committed
  `queued` before its message is published, so a message never names a missing job, and a job
  whose message was lost stays `queued` for `reconcile` to publish again.
- Every transition is a conditional UPDATE on the state it expects, so of two racing writers
  (two deliveries, a cancel and a claim, two workers' sweeps) exactly one wins.
- **Fencing.** `attempts` counts the claims of a job, and a `Claim` carries the attempt it made.
  Every later write of that attempt (`heartbeat`, `record_epoch`, `succeed`, `cancel_attempt`,
  `fail`) is conditional on `status = 'running' AND attempts = <its attempt>`: an attempt that
  was taken over or handed back can no longer touch the job, and stops at its next epoch.
- **Lost workers.** A running attempt proves it is alive by `heartbeat_at`. Older than
  `Settings.stale_after`, the job belongs to a lost worker: a new delivery takes it over
  (`claim`) or the reaper hands it back to the queue (`reap`); once `Settings.max_attempts`
  attempts were lost it ends `failed` with `lost_error`. A job with the cancel flag ends
  `cancelled` instead.
- Every new attempt starts from scratch: the claim deletes the history of earlier attempts.
- **Events.** Every transition that ends a job (to `succeeded`, `failed` or `cancelled`: the
  diagram's arrows into a final status, `cancel_trials` too) records its webhooks' deliveries
  in its own transaction (`_end`, `outbox.job_ended`), so the final status and its events
  commit together, or neither does. Publishing them is the caller's, after the commit (the
  worker's `announce`, the API's cancel, the maintenance loop's scan): `service.outbox`. The
  live streams' notifications are written by the database's triggers in the same transaction.

Functions called by the API take its request `Session`; the worker-side ones take a
`sessionmaker` and run whole transactions (so a caller may retry one when the connection broke).
Settings come from `service.config.Settings`; this module imports nothing from Flask, Celery
(publishing takes the Celery app as an argument) or `workers`, and of the service only the
store (`config`, `db`, `tables`), the outbox and the registry (`register_as`), which import
nothing that calls this module.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from service.config import Settings
from service.db import session_scope, utcnow
from service.outbox import job_ended, jobs_ended
from service.registry import register_version
from service.tables import FINAL_STATUSES, JOB_STATUSES, Job, JobEpoch, TrainedModel

if TYPE_CHECKING:
    from celery import Celery

__all__ = [
    "ACTIVE_STATUSES",
    "FINAL_STATUSES",
    "JOB_STATUSES",
    "PREDICT_TASK",
    "PUBLISH_RETRY_POLICY",
    "STATE_COLUMNS",
    "TASKS",
    "TRAIN_TASK",
    "CancelResult",
    "Claim",
    "cancel",
    "cancel_attempt",
    "cancel_trials",
    "claim",
    "fail",
    "fail_timed_out",
    "heartbeat",
    "label",
    "lost_error",
    "publish",
    "reap",
    "reconcile",
    "record_epoch",
    "record_progress",
    "send_trials",
    "start_trials",
    "submit",
    "submit_import",
    "submit_predict",
    "succeed",
    "time_limit_error",
]

log = logging.getLogger(__name__)

#: The Celery task that trains a job; its only argument is the job id. The API publishes by
#: this name and never imports the task's code.
TRAIN_TASK = "trainyard.train_job"
#: The Celery task that runs a predict job (batch predictions), by its id too.
PREDICT_TASK = "trainyard.predict_job"
#: The Celery task that runs an import job (a dataset by reference), by its id too.
IMPORT_TASK = "trainyard.import_dataset"
#: The task of each kind of job.
TASKS = {"train": TRAIN_TASK, "predict": PREDICT_TASK, "import": IMPORT_TASK}

#: A job that is queued or running counts against its owner's `max_active_jobs`.
ACTIVE_STATUSES = ("queued", "running")

# Publishing must not hang the API (or the maintenance thread) when the broker is down: one
# quick retry (a refused Redis answers in 0.1 s), then give up; the job stays `queued` in the
# store and `reconcile` publishes it again.
PUBLISH_RETRY_POLICY = {
    "max_retries": 1,
    "interval_start": 0.0,
    "interval_step": 0.2,
    "interval_max": 0.2,
}
#: A job committed without `published_at` may still be being published by the API.
PUBLISH_GRACE_S = 2.0
#: At most this many jobs are republished per sweep (the rest wait for the next one).
REPUBLISH_BATCH = 200
#: The columns that say where a job is in its life: only this module's transitions set them.
STATE_COLUMNS = frozenset(
    {
        "status",
        "attempts",
        "cancel_requested",
        "started_at",
        "finished_at",
        "heartbeat_at",
        "published_at",
        "error",
    }
)
#: `error` is cut to this many characters.
MAX_ERROR_LENGTH = 4000


@dataclass(frozen=True)
class Claim:
    """One attempt at a job: `attempt` is its fencing token (the job's `attempts` it set)."""

    job_id: str
    attempt: int


@dataclass(frozen=True)
class CancelResult:
    """What `cancel` did: `done` (cancelled, or asked to stop), else the status that was found
    (None: no such job of this owner; a final status; or still active after every try)."""

    done: bool
    status: str | None = None


# -- messages ----------------------------------------------------------------------------------


def lost_error(attempts: int, max_attempts: int) -> str:
    return (
        f"the worker running this job was lost {attempts} times "
        f"(max attempts {max_attempts}); giving up"
    )


def time_limit_error(limit: float | None, *, hard: bool = False) -> str:
    """The error of a job stopped by Celery's soft (`hard=False`) or hard time limit."""
    what = f" ({'hard limit ' if hard else ''}{limit:g} s)" if limit else ""
    return f"time limit exceeded{what}; partial history kept"


# -- the API side (the request's Session) ------------------------------------------------------


def submit(
    session: Session,
    *,
    owner: str,
    dataset_id: str,
    model_spec: dict[str, Any],
    training_spec: dict[str, Any],
    name: str | None = None,
    tags: Mapping[str, str] | None = None,
    trial: Mapping[str, Any] | None = None,
    expires_at: datetime | None = None,
    register_as: str | None = None,
) -> Job:
    """A new `queued` job of `owner` (flushed; the caller commits, then calls `publish`).

    `trial` (`sweep_id`, `trial_index`, `params`) makes it a sweep's trial, `held` until
    `service.sweeps` starts it."""
    job = Job(
        owner=owner,
        status="queued",
        dataset_id=dataset_id,
        model_spec=model_spec,
        training_spec=training_spec,
        epochs=training_spec["epochs"],
        name=name,
        tags=dict(tags) if tags else None,
        expires_at=expires_at,
        register_as=register_as,
        **({**trial, "held": True} if trial else {}),
    )
    session.add(job)
    session.flush()
    return job


def submit_predict(
    session: Session,
    *,
    owner: str,
    model_id: str,
    dataset_id: str,
    rows_total: int,
    name: str | None = None,
    tags: Mapping[str, str] | None = None,
) -> Job:
    """A new `queued` predict job of `owner`: model `model_id`'s predictions for the
    `rows_total` rows of dataset `dataset_id` (flushed; the caller commits, then `publish`
    with kind "predict")."""
    job = Job(
        owner=owner,
        kind="predict",
        status="queued",
        dataset_id=dataset_id,
        model_id=model_id,
        model_spec={},
        training_spec={},
        epochs=0,
        rows_total=rows_total,
        rows_done=0,
        name=name,
        tags=dict(tags) if tags else None,
    )
    session.add(job)
    session.flush()
    return job


def submit_import(
    session: Session,
    *,
    owner: str,
    source: str,
    options: Mapping[str, Any],
    name: str | None = None,
    tags: Mapping[str, str] | None = None,
) -> Job:
    """A new `queued` import job of `owner`: the dataset to be made from `source` with
    `options` (flushed; the caller commits, then `publish` with kind "import")."""
    job = Job(
        owner=owner,
        kind="import",
        status="queued",
        dataset_id=None,
        source=source,
        import_options=dict(options),
        model_spec={},
        training_spec={},
        epochs=0,
        rows_done=0,
        name=name,
        tags=dict(tags) if tags else None,
    )
    session.add(job)
    session.flush()
    return job


def _send(celery: Celery, job_id: str, kind: str = "train") -> None:
    celery.send_task(TASKS[kind], args=[job_id], retry=True, retry_policy=PUBLISH_RETRY_POLICY)


def publish(session: Session, celery: Celery, job_id: str, kind: str = "train") -> bool:
    """Send a committed job's message (to the task of its `kind`) and record when (commits);
    False (logged) if the broker is unreachable: the job stays queued with `published_at` null
    for `reconcile`."""
    try:
        _send(celery, job_id, kind)
    except Exception:
        log.warning("could not publish job %s; it stays queued", job_id, exc_info=True)
        return False
    session.execute(
        sa.update(Job).where(Job.id == job_id, Job.status == "queued").values(published_at=utcnow())
    )
    session.commit()
    return True


def cancel(session: Session, job_id: str, owner: str, tries: int = 3) -> CancelResult:
    """Cancel `owner`'s job: a queued one now (it never starts), a running one by its flag
    (its attempt stops at the next epoch boundary). Commits when done.

    Both steps are conditional UPDATEs, so a cancel that races the worker's claim or its final
    write leaves exactly one final state; a job that changed state between them is tried again.
    """
    status: str | None = None
    for _ in range(tries):
        queued = session.execute(
            sa.update(Job)
            .where(Job.id == job_id, Job.owner == owner, Job.status == "queued")
            .values(status="cancelled", finished_at=utcnow(), cancel_requested=True)
        )
        if queued.rowcount == 1:
            with _recording(session, f"job {job_id}"):  # in this transaction
                job_ended(session, job_id)
        else:
            running = session.execute(
                sa.update(Job)
                .where(Job.id == job_id, Job.owner == owner, Job.status == "running")
                .values(cancel_requested=True)
            )
            if running.rowcount == 0:
                session.rollback()
                status = session.scalar(
                    sa.select(Job.status).where(Job.id == job_id, Job.owner == owner)
                )
                if status is None or status in FINAL_STATUSES:
                    return CancelResult(False, status)
                continue  # it changed state between the two updates: try again
        session.commit()
        return CancelResult(True)
    return CancelResult(False, status)


def label(
    session: Session,
    job_id: str,
    owner: str,
    *,
    name: str | None = None,
    tags: Mapping[str, str] | None = None,
    fields: frozenset[str] = frozenset({"name", "tags"}),
    expires_at: datetime | None = None,
) -> bool:
    """Set `owner`'s job's `name` and/or `tags` (those in `fields`), whatever its state;
    False if there is no such job. Touches no state column. Commits."""
    values: dict[str, Any] = {}
    if "name" in fields:
        values["name"] = name
    if "tags" in fields:
        values["tags"] = dict(tags) if tags else None
    if "expires_at" in fields:
        values["expires_at"] = expires_at
    done = session.execute(
        sa.update(Job)
        .where(Job.id == job_id, Job.owner == owner, Job.deleted_at.is_(None))
        .values(**values)
    )
    session.commit()
    return done.rowcount == 1


def tombstone(session: Session, now: datetime, *, job_id: str = "", sweep_id: str = "") -> None:
    """Mark deleted (`deleted_at`) the job `job_id`, or every trial of `sweep_id`: from then on
    nothing serves them (`service.deletion`, which checked that none is queued or running)."""
    where = Job.id == job_id if job_id else Job.sweep_id == sweep_id
    session.execute(sa.update(Job).where(where, Job.deleted_at.is_(None)).values(deleted_at=now))


def forget_output(session: Session, job_id: str) -> None:
    """A deleted predict job's parts were removed from the store: say so (`service.deletion`)."""
    session.execute(
        sa.update(Job)
        .where(Job.id == job_id, Job.deleted_at.is_not(None))
        .values(output_location=None, output_bytes=None)
    )


def purge(session: Session, job_ids: Sequence[str]) -> None:
    """Remove deleted jobs' rows with their epochs (`service.deletion.purge`; their models went
    first)."""
    session.execute(sa.delete(JobEpoch).where(JobEpoch.job_id.in_(job_ids)))
    session.execute(sa.delete(Job).where(Job.id.in_(job_ids), Job.deleted_at.is_not(None)))


# -- a sweep's trials (`service.sweeps`, under the lock of the sweep's row) ---------------------


def cancel_trials(session: Session, sweep_id: str, now: datetime) -> int:
    """The sweep's cancel: its queued trials (held or not) -> `cancelled`, its running ones get
    the cancel flag. Returns how many still run. The caller holds the sweep's row and commits."""
    cancelled = session.scalars(
        sa.update(Job)
        .where(Job.sweep_id == sweep_id, Job.status == "queued")
        .values(status="cancelled", finished_at=now, cancel_requested=True)
        .returning(Job.id)
    ).all()
    with _recording(session, f"sweep {sweep_id}'s trials"):  # in the caller's transaction
        jobs_ended(session, cancelled)
    session.execute(
        sa.update(Job)
        .where(Job.sweep_id == sweep_id, Job.status == "running")
        .values(cancel_requested=True)
    )
    running = session.scalar(
        sa.select(sa.func.count())
        .select_from(Job)
        .where(Job.sweep_id == sweep_id, Job.status == "running")
    )
    return int(running or 0)


def start_trials(session: Session, sweep_id: str, limit: int, now: datetime) -> list[str]:
    """Start the sweep's first `limit` held trials (trial order): held -> queued proper, with
    `published_at` = `now` (the caller commits, then `send_trials`). Returns their ids. The
    caller holds the sweep's row, so two advances never start one trial twice; the UPDATE is
    conditional on `held` all the same."""
    ids = list(
        session.scalars(
            sa.select(Job.id)
            .where(Job.sweep_id == sweep_id, Job.status == "queued", Job.held.is_(True))
            .order_by(Job.trial_index)
            .limit(limit)
        )
    )
    session.execute(
        sa.update(Job)
        .where(Job.id.in_(ids), Job.status == "queued", Job.held.is_(True))
        .values(held=False, published_at=now)
    )
    return ids


def send_trials(
    factory: sessionmaker[Session],
    celery: Celery,
    sweep_id: str,
    job_ids: list[str],
    published_at: datetime,
) -> None:
    """Publish trials `start_trials` started (committed). At the first publish that fails (the
    broker is down) the rest get `published_at` cleared again, so `reconcile` publishes them
    once it is back."""
    for i, job_id in enumerate(job_ids):
        try:
            _send(celery, job_id)
        except Exception as exc:
            log.warning("sweep %s: could not publish trial %s: %s", sweep_id, job_id, exc)
            with session_scope(factory) as session:
                session.execute(
                    sa.update(Job)
                    .where(
                        Job.id.in_(job_ids[i:]),
                        Job.status == "queued",
                        Job.published_at == published_at,
                    )
                    .values(published_at=None)
                )
            break


# -- one attempt (the task; a sessionmaker, one transaction per call) --------------------------


def _aware(value: datetime | None) -> datetime | None:
    # SQLite gives naive datetimes back; everything the workers write is UTC.
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def _owned(claim: Claim) -> sa.ColumnElement[bool]:
    """The fencing rule: the job still runs, and runs this attempt."""
    return sa.and_(Job.id == claim.job_id, Job.status == "running", Job.attempts == claim.attempt)


def _end(session: Session, job_id: str, *where: Any, **values: Any) -> bool:
    """End the job (`values`: its final `status`, `finished_at`, ...) if it matches `where`,
    and record its webhooks' deliveries in the same transaction (`outbox.job_ended`); False
    if it did not match."""
    if session.execute(sa.update(Job).where(Job.id == job_id, *where).values(**values)).rowcount:
        with _recording(session, f"job {job_id}"):
            job_ended(session, job_id)
        return True
    return False


@contextmanager
def _recording(session: Session, subject: str) -> Iterator[None]:
    """Record an end's webhook deliveries in a savepoint of the ending transaction. A database
    error propagates (the whole transaction, the end with it, rolls back: a retry or the reaper
    makes it again); any other failure of the recording is logged and undone alone, and the end
    commits without its deliveries, which `outbox.scan` records later: a fault in the webhooks'
    code never keeps a job from ending or stops the reaper."""
    try:
        with session.begin_nested():
            yield
    except sa.exc.DBAPIError:
        raise
    except Exception:
        log.exception("webhook deliveries of %s not recorded; left to the outbox scan", subject)


def _start(session: Session, job_id: str, now: datetime, *where: Any) -> Claim | None:
    """Make a new attempt (`attempts + 1`, from scratch) of the job if it matches `where`."""
    row = session.execute(
        sa.update(Job)
        .where(Job.id == job_id, *where)
        .values(
            status="running",
            attempts=Job.attempts + 1,
            started_at=now,
            heartbeat_at=now,
            finished_at=None,
            epoch=0,
            error=None,
            metrics=None,
            # a predict attempt starts again from its first row
            rows_done=sa.case((Job.kind == "train", None), else_=0),
            output_location=None,
            output_bytes=None,
        )
        .returning(Job.attempts)
    ).first()
    if row is None:
        return None
    session.execute(sa.delete(JobEpoch).where(JobEpoch.job_id == job_id))
    return Claim(job_id, row.attempts)


def claim(factory: sessionmaker[Session], job_id: str, settings: Settings) -> Claim | str:
    """Make this delivery the job's running attempt, or say why not.

    Returns the `Claim`, or: "missing" (no such job), "duplicate" (finished, or another
    delivery took it over first), "held" (a trial its sweep has not started), "cancelled"
    (the flag was set before it ran), "failed" (its workers were lost `max_attempts` times),
    "busy" (it runs elsewhere with a fresh heartbeat:
    a duplicate of a live attempt, or a worker that died seconds ago; look again after
    `stale_after` seconds).
    """
    now = utcnow()
    with session_scope(factory) as session:
        started = _start(
            session,
            job_id,
            now,
            Job.status == "queued",
            Job.cancel_requested.is_(False),
            Job.held.is_(False),
        )
        if started is not None:
            return started

        job = session.execute(
            sa.select(
                Job.status, Job.attempts, Job.heartbeat_at, Job.cancel_requested, Job.held
            ).where(Job.id == job_id)
        ).first()
        if job is None:
            return "missing"
        if job.status in FINAL_STATUSES:
            return "duplicate"
        if job.held and not job.cancel_requested:  # a trial its sweep has not started
            return "held"
        if job.status == "queued":  # cancel requested before it ever started
            _end(session, job_id, Job.status == "queued", status="cancelled", finished_at=now)
            return "cancelled"
        return _take_over(session, job_id, job, settings, now)


def _take_over(
    session: Session, job_id: str, job: sa.Row[Any], settings: Settings, now: datetime
) -> Claim | str:
    """A running job seen by a new delivery: a live attempt elsewhere, or a lost worker's."""
    beat = _aware(job.heartbeat_at)
    if beat is not None and now - beat < timedelta(seconds=settings.stale_after):
        return "busy"
    # conditional on the attempt that was read: of two concurrent deliveries one wins
    seen = (Job.status == "running", Job.attempts == job.attempts)
    if job.cancel_requested:
        _end(session, job_id, *seen, status="cancelled", finished_at=now)
        return "cancelled"
    if job.attempts >= settings.max_attempts:
        error = lost_error(job.attempts, settings.max_attempts)
        _end(session, job_id, *seen, status="failed", finished_at=now, error=error)
        return "failed"
    started = _start(session, job_id, now, *seen)
    if started is None:
        return "duplicate"  # another delivery took it over first
    log.warning("job %s: taking over from a lost worker (attempt %s)", job_id, started.attempt)
    return started


def heartbeat(factory: sessionmaker[Session], claim: Claim) -> bool | None:
    """The attempt is alive (between epochs, or refitting); nothing if it no longer owns the
    job. Returns the job's cancel flag, or None when the attempt no longer owns it (as
    `record_epoch` does)."""
    with session_scope(factory) as session:
        row = session.execute(
            sa.update(Job)
            .where(_owned(claim))
            .values(heartbeat_at=utcnow())
            .returning(Job.cancel_requested)
        ).first()
        return None if row is None else bool(row.cancel_requested)


def record_epoch(
    factory: sessionmaker[Session],
    claim: Claim,
    epoch: int,
    loss: float,
    val_loss: float | None,
) -> bool | None:
    """Append a finished epoch and move `epoch` and `heartbeat_at` forward, in one transaction.

    Returns the job's cancel flag (True: stop now), or None when the attempt no longer owns the
    job (taken over, handed back, failed): it must stop and write nothing more.
    """
    with session_scope(factory) as session:
        row = session.execute(
            sa.update(Job)
            .where(_owned(claim))
            .values(epoch=epoch, heartbeat_at=utcnow())
            .returning(Job.cancel_requested)
        ).first()
        if row is None:
            return None
        # merge: a retry after a commit whose answer was lost writes the same row again
        session.merge(JobEpoch(job_id=claim.job_id, epoch=epoch, loss=loss, val_loss=val_loss))
        return bool(row.cancel_requested)


def record_progress(
    factory: sessionmaker[Session], claim: Claim, rows_done: int, rows_total: int | None = None
) -> bool | None:
    """A predict attempt wrote `rows_done` rows (an import attempt read so many bytes or rows
    of its `rows_total`): record them and move `heartbeat_at` forward. Returns the job's cancel
    flag (True: stop now), or None when the attempt no longer owns the job (as
    `record_epoch`)."""
    values: dict[str, Any] = {"rows_done": rows_done, "heartbeat_at": utcnow()}
    if rows_total is not None:
        values["rows_total"] = rows_total
    with session_scope(factory) as session:
        row = session.execute(
            sa.update(Job).where(_owned(claim)).values(**values).returning(Job.cancel_requested)
        ).first()
        return None if row is None else bool(row.cancel_requested)


def succeed(
    factory: sessionmaker[Session],
    claim: Claim,
    *,
    results: Mapping[str, Any],
    model: Mapping[str, Any] | None = None,
    made: Callable[[Session], None] | None = None,
) -> str:
    """End the attempt `succeeded` with `results` (the job's result columns: `epoch`,
    `metrics`, ...; a predict job's `rows_done`, `output_location`, ...) and insert a training
    job's model (the `models` row: `model`'s fields, besides `job_id`) in the same
    transaction, only while the attempt owns the job and no cancel was asked for; a job with
    `register_as` registers the model as that name's next version in that transaction too
    (`service.registry`). Returns "succeeded", "cancelled" (asked for meanwhile) or "lost".
    `made(session)` adds, first and in the same transaction, the rows that the job's results
    refer to (an import job's dataset: committed with its success, or not at all)."""
    if STATE_COLUMNS & set(results):
        raise ValueError(f"only the lifecycle writes {sorted(STATE_COLUMNS & set(results))}")
    now = utcnow()
    with session_scope(factory) as session:
        if made is not None:
            made(session)
            session.flush()
        done = session.execute(
            sa.update(Job)
            .where(_owned(claim), Job.cancel_requested.is_(False))
            .values(**results, status="succeeded", finished_at=now, heartbeat_at=now)
            .returning(Job.owner, Job.register_as)
        ).first()
        if done is None:
            session.rollback()
            cancelled = session.execute(
                sa.select(Job.cancel_requested).where(_owned(claim))
            ).scalar_one_or_none()
            if cancelled:
                return cancel_attempt(factory, claim)
            return "lost"
        if model is not None:
            trained = TrainedModel(job_id=claim.job_id, **model)
            session.add(trained)
            session.flush()
            if done.register_as:  # the model's version is committed with the success, or neither
                register_version(session, done.owner, done.register_as, trained.id)
        with _recording(session, f"job {claim.job_id}"):  # with the model: the event names it
            job_ended(session, claim.job_id)
    return "succeeded"


def cancel_attempt(
    factory: sessionmaker[Session],
    claim: Claim,
    stop_reason: str | None = None,
    stopped_epoch: int | None = None,
) -> str:
    """The attempt saw the cancel flag, or (`stop_reason` "early_termination", at
    `stopped_epoch`) its sweep's median rule stopped it: end the job `cancelled` (its history
    kept)."""
    values: dict[str, Any] = {"status": "cancelled", "finished_at": utcnow()}
    if stop_reason is not None:
        values.update(stop_reason=stop_reason, stopped_epoch=stopped_epoch)
    with session_scope(factory) as session:
        _end(session, claim.job_id, _owned(claim), **values)
    return "cancelled"


def fail(factory: sessionmaker[Session], claim: Claim, message: str) -> None:
    """End the attempt's job `failed` with `message` (its history kept)."""
    with session_scope(factory) as session:
        _end(
            session,
            claim.job_id,
            _owned(claim),
            status="failed",
            error=message[:MAX_ERROR_LENGTH],
            finished_at=utcnow(),
        )


# -- the maintenance loop (every worker's main process) -----------------------------------------


def reap(
    factory: sessionmaker[Session], settings: Settings, now: datetime | None = None
) -> dict[str, str]:
    """Hand back running jobs with a stale heartbeat ("requeued": `queued`, `published_at`
    cleared, so `reconcile` publishes it at once), or end them "failed" (`max_attempts` lost) or
    "cancelled" (flagged); returns {job id: outcome}. Each is a conditional UPDATE on the row as
    read, so two workers sweeping together never act twice on one job."""
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
        values: dict[str, Any]
        if row.cancel_requested:
            outcome, values = "cancelled", {"status": "cancelled", "finished_at": now}
        elif row.attempts >= settings.max_attempts:
            outcome = "failed"
            values = {
                "status": "failed",
                "finished_at": now,
                "error": lost_error(row.attempts, settings.max_attempts),
            }
        else:
            outcome = "requeued"
            values = {"status": "queued", "published_at": None, "heartbeat_at": None}
        with session_scope(factory) as session:
            if session.execute(sa.update(Job).where(seen).values(**values)).rowcount == 1:
                if outcome != "requeued":
                    with _recording(session, f"job {row.id}"):
                        job_ended(session, row.id)
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
    settings: Settings,
    now: datetime | None = None,
) -> list[str]:
    """Publish again queued jobs whose message may be missing: never published (broker down at
    submit) or published longer than `republish_after` seconds ago (lost with the broker's
    memory). Returns the ids published. A duplicate message is harmless (`claim`)."""
    now = now or utcnow()
    never = sa.and_(
        Job.published_at.is_(None), Job.created_at < now - timedelta(seconds=PUBLISH_GRACE_S)
    )
    long_ago = Job.published_at < now - timedelta(seconds=settings.republish_after)
    with session_scope(factory) as session:
        rows = session.execute(
            sa.select(Job.id, Job.kind, Job.published_at)
            .where(Job.status == "queued", Job.held.is_(False), sa.or_(never, long_ago))
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
            _send(celery, row.id, row.kind)
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


def fail_timed_out(factory: sessionmaker[Session], job_id: str, settings: Settings) -> bool:
    """End a running job whose process Celery's hard time limit (`task_time_limit`) killed, its
    partial history kept; False if it was not running."""
    with session_scope(factory) as session:
        return _end(
            session,
            job_id,
            Job.status == "running",
            status="failed",
            finished_at=utcnow(),
            error=time_limit_error(settings.task_time_limit, hard=True),
        )
