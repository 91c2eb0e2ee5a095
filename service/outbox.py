"""The outbox: every event about a job or a sweep leaves the service from this module.

Two kinds of listeners hear of a change:

- **Live streams** (`service.events`, `service.sweep_events`). On PostgreSQL the database itself
  writes their notification in the transaction of the change: triggers (migration
  `b7d41e2c9a10`) `pg_notify('trainyard_jobs', job_id)` on every insert into `job_epochs` and
  every change of a job's `status` or `attempts`, sent at commit, so no writer can forget it
  and none is sent for a change rolled back. On SQLite the streams poll. Nothing to call here.
- **Webhooks.** An event is recorded as its deliveries' first attempts (`pending`, unpublished:
  the rows are the outbox) in the transaction of the change it reports, and published as
  Celery messages (`DELIVER_TASK`) that send them (`service.webhook_delivery`) after that
  transaction committed:

::

    the change's transaction:            after its commit:
    job_ended, enqueue_for_sweep ──► pending, unpublished ── publish_recorded ──► pending,
    (attempt 1, unique per webhook,       │  (or publish)                      published ──►
     event, subject)                      └── scan: published if never sent,   deliver
                                              lost or long overdue

- **Recording, with the change.** `service.lifecycle` calls `job_ended` in every transaction
  that ends a job (`succeed`, `fail`, `cancel_attempt`, the API's `cancel` of a queued job,
  `claim` and `reap` ending a flagged or lost one, `fail_timed_out`, `cancel_trials`), and
  `service.sweeps` calls `enqueue_for_sweep` in the one that ends a sweep (`advance`,
  `cancel_sweep`), and `service.registry` calls `enqueue_for_alias_move` in the one that
  moves an alias (`registry.alias_moved`): the change and its deliveries commit together, and
  a change rolled back leaves none. `enqueue_for_job` writes one delivery per webhook of the
  job's owner that subscribed to `job.<status>` and existed when the job ended;
  `enqueue_for_sweep` likewise for `sweep.finished`. Given a `Session` they write in the
  caller's transaction (the caller commits); given a `sessionmaker`, in one of their own.
  Attempt 1 is unique per (webhook, event, subject), so recording twice creates one.
- **Publishing, after the commit.** Whoever made the change publishes what it recorded:
  `publish_recorded` sends the subjects' first attempts not yet published (`unpublished`) and
  never raises (the API's cancels, `service.sweeps.advance`); the worker that ended a job calls
  `job_ended` again, which then records nothing and returns the job's (and its ended sweep's)
  unpublished deliveries, and `publish`es them (`workers.webhooks.announce`). The maintenance
  loop's (the reaper's, the hard time limit's) are published by its `scan`, the reaper's in
  the same pass. `publish` marks each message sent `published_at`; a broker that is down
  leaves them unpublished.
- **The safety net.** `scan`, run periodically by the workers, publishes again every due
  `pending` attempt whose message was never sent (the broker was down, or the process that
  made the change was lost between its commit and the publish) or is long overdue
  (`republish_after`), like the job reconciler; it also records the deliveries of jobs and
  sweeps that ended within `SCAN_WINDOW` without any (ended by a version that recorded them
  after the change). A job's final status reaches its webhooks however it ended and whichever
  process was lost on the way.

This module writes no job and no sweep: it reads them and writes delivery rows only.
Publishing takes the Celery app as an argument.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from service.config import Settings
from service.db import session_scope, utcnow
from service.tables import FINAL_STATUSES, Job, Sweep, new_id
from service.views import serialize_jobs
from service.webhook_delivery import DELIVER_TASK, lease_s
from service.webhook_models import Webhook, WebhookDelivery
from service.webhooks import alias_payload, aware, insert_delivery, job_payload, sweep_payload

if TYPE_CHECKING:
    from celery import Celery

log = logging.getLogger(__name__)

#: `scan` announces jobs that finished at most this long ago (older ones are history).
SCAN_WINDOW = timedelta(days=1)
#: At most this many jobs are announced, and deliveries published, per scan.
SCAN_BATCH = 200
#: Ids per `IN (...)` when many jobs ended at once (`jobs_ended`, `publish`).
_IN_BATCH = 500
#: Publishing must not hang a worker when the broker is down (the row waits for `scan`).
PUBLISH_RETRY_POLICY = {"max_retries": 1, "interval_start": 0.0, "interval_step": 0.2}

__all__ = [
    "PUBLISH_RETRY_POLICY",
    "SCAN_BATCH",
    "SCAN_WINDOW",
    "enqueue_deleted",
    "enqueue_for_alias_move",
    "enqueue_for_job",
    "enqueue_for_sweep",
    "finished_unannounced",
    "finished_unannounced_sweeps",
    "job_ended",
    "jobs_ended",
    "publish",
    "publish_recorded",
    "scan",
    "unpublished",
]


# -- recording -----------------------------------------------------------------------------------


@contextmanager
def _transaction(
    target: Session | sessionmaker[Session], commit: bool = False
) -> Iterator[Session]:
    """A sessionmaker: a transaction of its own, committed; a Session: it, flushed only (its
    caller commits) or, with `commit` (publishing, after the change was committed), committed."""
    if isinstance(target, Session):
        yield target
        if commit:
            target.commit()
        else:
            target.flush()
        return
    with session_scope(target) as session:
        yield session


def _subscribed(hooks: Sequence[Webhook], event: str, finished: datetime | None) -> list[Webhook]:
    """Those of `hooks` subscribed to `event` that existed when the subject ended."""
    finished = aware(finished)
    return [
        w
        for w in hooks
        if event in w.events and (finished is None or aware(w.created_at) <= finished)
    ]


def _deliveries(
    hooks: Sequence[Webhook],
    event: str,
    subject_id: str,
    payload_of: Callable[[str, datetime], str],
) -> list[dict[str, Any]]:
    """The rows of one event's deliveries to `hooks` (one event id, one body), attempt 1."""
    if not hooks:
        return []
    now = utcnow()
    event_id = new_id()
    payload = payload_of(event_id, now)
    return [
        {
            "id": new_id(),
            "webhook_id": webhook.id,
            "event": event,
            "subject_id": subject_id,
            "event_id": event_id,
            "payload": payload,
            "attempt": 1,
            "status": "pending",
            "created_at": now,
            "next_attempt_at": now,
        }
        for webhook in hooks
    ]


def _record_jobs(session: Session, jobs: Sequence[Job]) -> list[str]:
    """The deliveries of ended `jobs`' final statuses: one read of their owners' webhooks, and
    one of the views of the jobs that have any (a sweep's cancel ends up to all its trials)."""
    owners = {job.owner for job in jobs}
    if not owners:
        return []
    hooks: dict[str, list[Webhook]] = {}
    for webhook in session.scalars(sa.select(Webhook).where(Webhook.owner.in_(owners))):
        hooks.setdefault(webhook.owner, []).append(webhook)
    wanted = []
    for job in jobs:
        event = f"job.{job.status}"
        subscribed = _subscribed(hooks.get(job.owner, []), event, job.finished_at)
        if job.status in FINAL_STATUSES and subscribed:
            wanted.append((job, subscribed))
    if not wanted:
        return []
    views = serialize_jobs(session, [job for job, _ in wanted], history=False)
    rows = []
    for (job, subscribed), view in zip(wanted, views, strict=True):
        event = f"job.{job.status}"
        rows += _deliveries(
            subscribed,
            event,
            job.id,
            lambda event_id, now, view=view, event=event: job_payload(view, event, event_id, now),
        )
    # attempt 1 is unique: rows that exist already (recorded before) are skipped
    return insert_delivery(session, *rows)


def _ended_jobs(session: Session, job_ids: Sequence[str]) -> list[Job]:
    """The jobs of `job_ids` that have ended, as the caller's transaction has them."""
    jobs: list[Job] = []
    for i in range(0, len(job_ids), _IN_BATCH):
        jobs += session.scalars(
            sa.select(Job)
            .where(Job.id.in_(job_ids[i : i + _IN_BATCH]), Job.status.in_(FINAL_STATUSES))
            .execution_options(populate_existing=True)
        )
    return jobs


def enqueue_for_job(target: Session | sessionmaker[Session], job_id: str, status: str) -> list[str]:
    """Record (`pending`, unpublished) the deliveries of a job's final `status`: one per webhook
    of its owner that subscribed to `job.<status>` and existed when the job ended. Returns the
    ids created; a second call creates none. Publishing is `publish`'s (or `scan`'s)."""
    if status not in FINAL_STATUSES:
        return []
    with _transaction(target) as session:
        job = session.get(Job, job_id, populate_existing=True)  # as the caller left it
        if job is None or job.status != status:
            return []
        return _record_jobs(session, [job])


def enqueue_for_sweep(target: Session | sessionmaker[Session], sweep_id: str) -> list[str]:
    """As `enqueue_for_job`, for `sweep.finished` (a sweep that ended, whatever its status)."""
    with _transaction(target) as session:
        sweep = session.get(Sweep, sweep_id, populate_existing=True)
        if sweep is None or sweep.status not in FINAL_STATUSES:
            return []
        hooks = session.scalars(sa.select(Webhook).where(Webhook.owner == sweep.owner)).all()
        rows = _deliveries(
            _subscribed(hooks, "sweep.finished", sweep.finished_at),
            "sweep.finished",
            sweep.id,
            lambda event_id, now: sweep_payload(session, sweep, event_id, now),
        )
        return insert_delivery(session, *rows)


def enqueue_deleted(
    session: Session, owner: str, event: str, subject_id: str, data: dict[str, Any]
) -> list[str]:
    """Record (in the caller's transaction: the tombstone's, `service.deletion`) the deliveries
    of `dataset.deleted` or `model.deleted` to `owner`'s webhooks subscribed to it; the body's
    `data` is `{"dataset": data}` or `{"model": data}`."""
    hooks = session.scalars(sa.select(Webhook).where(Webhook.owner == owner)).all()
    kind = event.partition(".")[0]

    def payload(event_id: str, now: datetime) -> str:
        body = {"id": event_id, "type": event, "created_at": now.isoformat(), "data": {kind: data}}
        return json.dumps(body, separators=(",", ":"))

    return insert_delivery(
        session, *_deliveries(_subscribed(hooks, event, None), event, subject_id, payload)
    )


def enqueue_for_alias_move(
    session: Session, owner: str, move_id: str, at: datetime, data: dict[str, Any]
) -> list[str]:
    """As `enqueue_for_job`, for `registry.alias_moved` (in the move's transaction, by
    `service.registry`; the subject is the move): one delivery per webhook of `owner`'s
    subscribed to it that existed at the move."""
    hooks = session.scalars(sa.select(Webhook).where(Webhook.owner == owner)).all()
    rows = _deliveries(
        _subscribed(hooks, "registry.alias_moved", at),
        "registry.alias_moved",
        move_id,
        lambda event_id, now: alias_payload(data, event_id, now),
    )
    return insert_delivery(session, *rows)


def job_ended(target: Session | sessionmaker[Session], job_id: str) -> list[str]:
    """Record the deliveries of job `job_id`'s final status and, if its sweep has ended, of
    `sweep.finished` (one transaction: the caller's, given a `Session`), unless they exist.

    The lifecycle calls it in the transaction that ends the job; after the commit, whoever
    ended it calls it again (`workers.webhooks.announce`, which records nothing new then) for
    what to publish. Returns the ids of the job's (and its sweep's) first attempts not yet
    published, recorded now or before; none if the job has not ended."""
    with _transaction(target) as session:
        jobs = _ended_jobs(session, [job_id])
        if not jobs:
            return []
        _record_jobs(session, jobs)
        subjects = [job_id]
        if jobs[0].sweep_id is not None:
            enqueue_for_sweep(session, jobs[0].sweep_id)
            subjects.append(jobs[0].sweep_id)
        return unpublished(session, subjects)


def jobs_ended(session: Session, job_ids: Sequence[str]) -> list[str]:
    """As `job_ended`, for many jobs at once in the caller's transaction (`cancel_trials`: a
    sweep's cancel ends up to all its trials), in a few queries whatever their number when
    their owner has no webhook for them. Returns the ids of the deliveries created."""
    jobs = _ended_jobs(session, job_ids)
    made = _record_jobs(session, jobs)
    for sweep_id in sorted({job.sweep_id for job in jobs if job.sweep_id is not None}):
        made += enqueue_for_sweep(session, sweep_id)
    session.flush()
    return made


def unpublished(session: Session, subject_ids: Collection[str]) -> list[str]:
    """The first attempts about these subjects (jobs, sweeps) recorded and not yet published,
    oldest first."""
    if not subject_ids:
        return []
    D = WebhookDelivery
    return list(
        session.scalars(
            sa.select(D.id)
            .where(
                D.subject_id.in_(list(subject_ids)),
                D.attempt == 1,
                D.status == "pending",
                D.published_at.is_(None),
            )
            .order_by(D.created_at, D.id)
        )
    )


# -- publishing ----------------------------------------------------------------------------------


def _send(celery: Celery, delivery_id: str, countdown: float | None = None) -> None:
    celery.send_task(
        DELIVER_TASK,
        args=[delivery_id],
        countdown=countdown,
        retry=True,
        retry_policy=PUBLISH_RETRY_POLICY,
    )


def publish(
    target: Session | sessionmaker[Session],
    celery: Celery,
    delivery_ids: Sequence[str],
    countdown: float | None = None,
) -> int:
    """Send the deliveries' messages, then record when (one transaction; given a `Session`, it
    is committed); stops at the first broker error (logged): the rest stay unpublished for
    `scan`. Returns how many were sent."""
    sent: list[str] = []
    for delivery_id in delivery_ids:
        try:
            _send(celery, delivery_id, countdown)
        except Exception:
            log.warning("could not publish webhook delivery %s; scan will", delivery_id)
            break
        sent.append(delivery_id)
    if sent:
        now = utcnow()
        with _transaction(target, commit=True) as session:
            for i in range(0, len(sent), _IN_BATCH):
                session.execute(
                    sa.update(WebhookDelivery)
                    .where(WebhookDelivery.id.in_(sent[i : i + _IN_BATCH]))
                    .values(published_at=now)
                )
    return len(sent)


def publish_recorded(
    target: Session | sessionmaker[Session], celery: Celery, subject_ids: Collection[str]
) -> list[str]:
    """After the commit that recorded them (a job's or a sweep's end): publish the subjects'
    first attempts not yet published (`unpublished`). Returns the ids sent. Never raises: the
    change is committed, and what is left unpublished `scan` publishes."""
    try:
        with _transaction(target, commit=True) as session:
            due = unpublished(session, subject_ids)
        sent = publish(target, celery, due)
        return due[:sent]
    except Exception:
        log.warning("webhook deliveries of %s left to the scan", list(subject_ids), exc_info=True)
        if isinstance(target, Session):
            target.rollback()  # the caller's session stays usable (its change was committed)
        return []


# -- the safety net ------------------------------------------------------------------------------


def _announced(subject_id: Any) -> sa.Exists:
    """The webhook already has the first delivery about the subject (a job or a sweep)."""
    return (
        sa.select(WebhookDelivery.id)
        .where(
            WebhookDelivery.webhook_id == Webhook.id,
            WebhookDelivery.subject_id == subject_id,
            WebhookDelivery.attempt == 1,
        )
        .exists()
    )


def finished_unannounced(
    session: Session, now: datetime, limit: int = SCAN_BATCH
) -> list[tuple[str, str]]:
    """(job id, status) of jobs that ended within `SCAN_WINDOW`, after a webhook of their
    owner's subscribed to their status was made, and have no delivery to it yet."""
    wanted = sa.literal('"job.', sa.String) + Job.status + sa.literal('"', sa.String)
    announced = _announced(Job.id)
    rows = session.execute(
        sa.select(Job.id, Job.status)
        .join(Webhook, Webhook.owner == Job.owner)
        .where(
            Job.status.in_(FINAL_STATUSES),
            Job.finished_at >= now - SCAN_WINDOW,
            Job.finished_at >= Webhook.created_at,
            sa.cast(Webhook.events, sa.Text).contains(wanted),
            ~announced,
        )
        .distinct()
        .limit(limit)
    ).all()
    return [(row.id, row.status) for row in rows]


def finished_unannounced_sweeps(
    session: Session, now: datetime, limit: int = SCAN_BATCH
) -> list[str]:
    """Ids of sweeps that ended within `SCAN_WINDOW`, after a webhook of their owner's
    subscribed to `sweep.finished` was made, and have no delivery to it yet."""
    announced = _announced(Sweep.id)
    return list(
        session.scalars(
            sa.select(Sweep.id)
            .join(Webhook, Webhook.owner == Sweep.owner)
            .where(
                Sweep.status.in_(FINAL_STATUSES),
                Sweep.finished_at >= now - SCAN_WINDOW,
                Sweep.finished_at >= Webhook.created_at,
                sa.cast(Webhook.events, sa.Text).contains('"sweep.finished"'),
                ~announced,
            )
            .distinct()
            .limit(limit)
        )
    )


def scan(
    factory: sessionmaker[Session],
    celery: Celery,
    settings: Settings,
    now: datetime | None = None,
) -> dict[str, int]:
    """The safety net, run periodically by the workers: record the deliveries of recently
    finished jobs and sweeps that have none (their end recorded none: an older version), then
    publish every due `pending` attempt whose message was never sent (the broker was down, the
    process that made the change was lost before it published, the maintenance loop's own
    changes) or is long overdue, and whose claim (if any) expired. Returns {"created": n,
    "published": m}."""
    created = _record_missing(factory, now or utcnow())
    published = _republish_due(factory, celery, settings, now or utcnow())
    return {"created": created, "published": published}


def _record_missing(factory: sessionmaker[Session], now: datetime) -> int:
    """Record the deliveries of the jobs and sweeps that ended unannounced; how many."""
    with factory() as session:
        jobs = finished_unannounced(session, now)
        swept = finished_unannounced_sweeps(session, now)
    created = 0
    for job_id, status in jobs:
        created += len(enqueue_for_job(factory, job_id, status))
    for sweep_id in swept:
        created += len(enqueue_for_sweep(factory, sweep_id))
    return created


def _republish_due(
    factory: sessionmaker[Session], celery: Celery, settings: Settings, now: datetime
) -> int:
    """Publish every due `pending` attempt never published or long overdue, and held by no
    live claim; stops at the first broker error. How many were published."""
    overdue = now - timedelta(seconds=settings.republish_after)
    lease = now - timedelta(seconds=lease_s(settings))
    D = WebhookDelivery
    with factory() as session:
        due = session.execute(
            sa.select(D.id, D.published_at)
            .where(
                D.status == "pending",
                D.next_attempt_at <= now,
                sa.or_(
                    D.published_at.is_(None),
                    sa.and_(D.published_at < overdue, D.next_attempt_at < overdue),
                ),
                sa.or_(D.claimed_at.is_(None), D.claimed_at < lease),
            )
            .order_by(D.next_attempt_at)
            .limit(SCAN_BATCH)
        ).all()
    published = 0
    for row in due:
        was = (
            D.published_at.is_(None)
            if row.published_at is None
            else D.published_at == (row.published_at)
        )
        # take it for this scan (another worker's scan then matches nothing), then send
        with factory() as session:
            taken = session.execute(
                sa.update(D)
                .where(D.id == row.id, D.status == "pending", was)
                .values(published_at=now)
            ).rowcount  # type: ignore[attr-defined]
            session.commit()
        if taken != 1:
            continue
        try:
            _send(celery, row.id)
        except Exception as exc:
            log.warning("webhooks: could not publish delivery %s: %s", row.id, exc)
            with factory() as session:
                session.execute(
                    sa.update(D)
                    .where(D.id == row.id, D.published_at == now)
                    .values(published_at=row.published_at)
                )
                session.commit()
            break
        published += 1
    return published
