"""The outbox: every event about a job or a sweep leaves the service from this module.

Two kinds of listeners hear of a change:

- **Live streams** (`service.events`, `service.sweep_events`). On PostgreSQL the database itself
  writes their notification in the transaction of the change: triggers (migration
  `b7d41e2c9a10`) `pg_notify('trainyard_jobs', job_id)` on every insert into `job_epochs` and
  every change of a job's `status` or `attempts`, sent at commit, so no writer can forget it
  and none is sent for a change rolled back. On SQLite the streams poll. Nothing to call here.
- **Webhooks.** An event is recorded as its deliveries' first attempts (`pending`, unpublished:
  the rows are the outbox) and then published as Celery messages (`DELIVER_TASK`) that send
  them (`service.webhook_delivery`):

::

    enqueue_for_job ──► pending, unpublished ── publish ──► pending, published ── deliver ──►
    enqueue_for_sweep   (attempt 1, unique per               (published_at)
                         webhook, event, subject)  ◄── scan: recorded if missing, published
                                                       again if lost or long overdue

- **Recording.** `enqueue_for_job` for a job that reached a final status: one delivery per
  webhook of the job's owner that subscribed to `job.<status>` and existed when the job ended;
  `enqueue_for_sweep` likewise for `sweep.finished`. Given a `Session` they write in the
  caller's transaction (the caller commits); given a `sessionmaker`, in one of their own.
  `job_ended` records both for a job that ended (the sweep's if it ended with it). Attempt 1 is
  unique per (webhook, event, subject), so recording twice (the worker that ended the job,
  `workers.webhooks.announce`, and `scan`) creates one.
- **Publishing.** `publish` sends the messages of recorded attempts and marks them
  `published_at`; a broker that is down leaves them unpublished.
- **The safety net.** `scan`, run periodically by the workers, records the deliveries of jobs
  and sweeps that ended within `SCAN_WINDOW` without them (their worker was lost before it
  could, a cancel from the API, a sweep's end) and publishes again every due `pending` attempt
  whose message was never sent (broker down) or is long overdue (`republish_after`), like the
  job reconciler. A job's final status reaches its webhooks however it ended and whichever
  process was lost on the way.

This module writes no job and no sweep: it reads them and writes delivery rows only.
Publishing takes the Celery app as an argument.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from service.config import Settings
from service.db import session_scope, utcnow
from service.tables import FINAL_STATUSES, Job, Sweep, new_id
from service.webhook_delivery import DELIVER_TASK, lease_s
from service.webhook_models import Webhook, WebhookDelivery
from service.webhooks import aware, insert_delivery, job_payload, sweep_payload

if TYPE_CHECKING:
    from celery import Celery

log = logging.getLogger(__name__)

#: `scan` announces jobs that finished at most this long ago (older ones are history).
SCAN_WINDOW = timedelta(days=1)
#: At most this many jobs are announced, and deliveries published, per scan.
SCAN_BATCH = 200
#: Publishing must not hang a worker when the broker is down (the row waits for `scan`).
PUBLISH_RETRY_POLICY = {"max_retries": 1, "interval_start": 0.0, "interval_step": 0.2}

__all__ = [
    "PUBLISH_RETRY_POLICY",
    "SCAN_BATCH",
    "SCAN_WINDOW",
    "enqueue_for_job",
    "enqueue_for_sweep",
    "finished_unannounced",
    "finished_unannounced_sweeps",
    "job_ended",
    "publish",
    "scan",
]


# -- recording -----------------------------------------------------------------------------------


@contextmanager
def _transaction(target: Session | sessionmaker[Session]) -> Iterator[Session]:
    """A sessionmaker: a transaction of its own, committed; a Session: it, flushed only (its
    caller commits)."""
    if isinstance(target, Session):
        yield target
        target.flush()
        return
    with session_scope(target) as session:
        yield session


def _record(
    session: Session,
    owner: str,
    subject_id: str,
    event: str,
    finished: datetime | None,
    payload_of: Callable[[str, datetime], str],
) -> list[str]:
    """The deliveries of one event: one per webhook of `owner` subscribed to it that existed
    when the subject ended (`finished`); attempt 1, unique, so a second call makes none."""
    finished = aware(finished)
    hooks = [
        w
        for w in session.scalars(sa.select(Webhook).where(Webhook.owner == owner))
        if event in w.events and (finished is None or aware(w.created_at) <= finished)
    ]
    if not hooks:
        return []
    now = utcnow()
    event_id = new_id()
    payload = payload_of(event_id, now)
    created = []
    for webhook in hooks:
        delivery_id = new_id()
        if insert_delivery(
            session,
            {
                "id": delivery_id,
                "webhook_id": webhook.id,
                "event": event,
                "subject_id": subject_id,
                "event_id": event_id,
                "payload": payload,
                "attempt": 1,
                "status": "pending",
                "created_at": now,
                "next_attempt_at": now,
            },
        ):
            created.append(delivery_id)
    return created


def enqueue_for_job(target: Session | sessionmaker[Session], job_id: str, status: str) -> list[str]:
    """Record (`pending`, unpublished) the deliveries of a job's final `status`: one per webhook
    of its owner that subscribed to `job.<status>` and existed when the job ended. Returns the
    ids created; a second call creates none. Publishing is `publish`'s (or `scan`'s)."""
    if status not in FINAL_STATUSES:
        return []
    event = f"job.{status}"
    with _transaction(target) as session:
        job = session.get(Job, job_id)
        if job is None or job.status != status:
            return []
        return _record(
            session,
            job.owner,
            job.id,
            event,
            job.finished_at,
            lambda event_id, now: job_payload(session, job, event, event_id, now),
        )


def enqueue_for_sweep(target: Session | sessionmaker[Session], sweep_id: str) -> list[str]:
    """As `enqueue_for_job`, for `sweep.finished` (a sweep that ended, whatever its status)."""
    with _transaction(target) as session:
        sweep = session.get(Sweep, sweep_id)
        if sweep is None or sweep.status not in FINAL_STATUSES:
            return []
        return _record(
            session,
            sweep.owner,
            sweep.id,
            "sweep.finished",
            sweep.finished_at,
            lambda event_id, now: sweep_payload(session, sweep, event_id, now),
        )


def job_ended(target: Session | sessionmaker[Session], job_id: str) -> list[str]:
    """Record the deliveries of job `job_id`'s final status and, if its sweep ended with it, of
    `sweep.finished` (one transaction: the caller's, given a `Session`); the ids created, none
    if the job has not ended."""
    with _transaction(target) as session:
        row = session.execute(sa.select(Job.status, Job.sweep_id).where(Job.id == job_id)).first()
        if row is None or row.status not in FINAL_STATUSES:
            return []
        made = enqueue_for_job(session, job_id, row.status)
        if row.sweep_id is not None:
            made += enqueue_for_sweep(session, row.sweep_id)
        return made


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
    factory: sessionmaker[Session],
    celery: Celery,
    delivery_ids: Sequence[str],
    countdown: float | None = None,
) -> int:
    """Send the deliveries' messages and record when; stops at the first broker error (logged):
    the rest stay unpublished for `scan`. Returns how many were sent."""
    sent = 0
    for delivery_id in delivery_ids:
        try:
            _send(celery, delivery_id, countdown)
        except Exception:
            log.warning("could not publish webhook delivery %s; scan will", delivery_id)
            break
        with factory() as session:
            session.execute(
                sa.update(WebhookDelivery)
                .where(WebhookDelivery.id == delivery_id)
                .values(published_at=utcnow())
            )
            session.commit()
        sent += 1
    return sent


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
    finished jobs and sweeps that have none (their worker was lost before it could, or nothing
    else announces them), then publish every due `pending` attempt whose message was never
    sent or is long overdue, and whose claim (if any) expired. Returns {"created": n,
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
