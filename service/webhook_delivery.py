"""Sending one webhook delivery attempt: claim it, `POST` it, record the outcome and the retry.

::

    pending ── deliver: claim (lease), send ──► succeeded
                  │
                  └──► failed ──► pending attempt + 1, due after the backoff
                                  (until `webhook_max_attempts`)

- **Who sends.** Always a worker (the Celery task `DELIVER_TASK`, by name, like the training
  task), never the request that changed the job. `deliver` claims the attempt with a conditional
  UPDATE (a lease of `webhook_timeout` + `LEASE_MARGIN_S`), so two messages for one attempt send
  it once; a lease that expired belongs to a lost worker and the attempt may be sent again
  (receivers deduplicate by `X-Trainyard-Event-Id`).
- **Busy workers.** A delivery's message is queued behind the training jobs already waiting,
  and a worker whose pool is training takes no message, so on a busy service it would wait for
  every job ahead of it (hours, maybe). Every worker's main process (idle while its pool
  trains) therefore also sends, from a few threads of its own, the attempts still `pending`
  `WAITING_AFTER_S` seconds after they were due (`waiting`, taken by the maintenance loop): a
  webhook arrives within seconds whatever the queue holds. The claim makes sure that the
  message, when a worker finally takes it, sends nothing twice.
- **What is sent.** `POST` of the event as JSON, signed (`service.webhook_signing`), to the
  address that was checked (`service.webhook_urls`). Only a `2xx` answer succeeds; redirects
  are not followed. Each attempt waits at most `webhook_timeout` seconds in all, so a receiver
  that hangs costs one timeout.

Recording the first attempt of an event, and publishing messages, is `service.outbox`'s.
"""

from __future__ import annotations

import http.client
import logging
import socket
import threading
import time
from contextlib import suppress
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from service.config import Settings
from service.db import utcnow
from service.tables import new_id
from service.webhook_models import Webhook, WebhookDelivery
from service.webhook_signing import signed_headers
from service.webhook_urls import UrlRefused, allow_private, parse_url, pinned_connection
from service.webhooks import aware, insert_delivery

log = logging.getLogger(__name__)

#: The Celery task that sends one delivery attempt; its only argument is the delivery id.
DELIVER_TASK = "trainyard.deliver_webhook"
#: A claim outlives the attempt's timeout by this much; older, its worker was lost.
LEASE_MARGIN_S = 30.0
MAX_BACKOFF_S = 3600.0
#: An attempt is due this long before its `next_attempt_at` (a countdown's rounding).
DUE_SLACK_S = 0.1
MAX_ERROR_LENGTH = 1000
#: A due attempt still `pending` (unclaimed) this long after it was due waits behind busy
#: workers: a worker's main process sends it itself (module docstring, "Busy workers").
WAITING_AFTER_S = 5.0
#: At most this many waiting attempts are taken per pass.
WAITING_BATCH = 200
#: Bytes of a receiver's answer that are read (and dropped).
MAX_RESPONSE_BYTES = 4096


def backoff(attempt: int, base: float) -> float:
    """Seconds before attempt `attempt + 1`, after attempt `attempt` failed."""
    return min(MAX_BACKOFF_S, base * 2 ** (attempt - 1))


def lease_s(settings: Settings) -> float:
    """How long a claim holds an attempt; older, its worker was lost."""
    return settings.webhook_timeout + LEASE_MARGIN_S


# -- the request ---------------------------------------------------------------------------------


def post(url: str, body: bytes, headers: dict[str, str], timeout: float, private_ok: bool) -> int:
    """POST `body` to `url` (its address checked as `check_url` does, and connected to as
    checked); the answer's status. At most `timeout` seconds in all: a receiver that answers
    slowly is cut off. Raises `UrlRefused` or `OSError` (including timeouts)."""
    target = parse_url(url)
    conn = pinned_connection(target, private_ok, timeout)
    expired = threading.Event()

    def cut() -> None:
        expired.set()
        sock = conn.sock
        if sock is not None:
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    timer = threading.Timer(timeout, cut)
    timer.daemon = True
    timer.start()
    try:
        conn.request("POST", target.path, body=body, headers=headers)
        response = conn.getresponse()
        response.read(MAX_RESPONSE_BYTES)
        return int(response.status)
    except OSError as exc:
        if expired.is_set() or isinstance(exc, TimeoutError):
            raise TimeoutError(f"no answer within {timeout:g} s") from None
        raise
    except http.client.HTTPException as exc:
        if expired.is_set():
            raise TimeoutError(f"no answer within {timeout:g} s") from None
        raise OSError(f"bad HTTP answer: {exc!r}") from None
    finally:
        timer.cancel()
        conn.close()


# -- one attempt ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeliveryOutcome:
    """What `deliver` did: `status` ("succeeded", "failed"; "skipped": claimed elsewhere,
    finished or gone; "early": not due yet) and the attempt to publish next with its countdown
    (a failed one's next attempt, after the backoff; an early one itself, when it is due)."""

    status: str
    next_id: str | None = None
    countdown: float = 0.0


@dataclass(frozen=True)
class _Sent:
    """What the receiver made of one attempt (`error` None: it succeeded)."""

    status_code: int | None
    error: str | None
    duration_ms: float


def deliver(
    factory: sessionmaker[Session], delivery_id: str, settings: Settings
) -> DeliveryOutcome:
    """Send one pending attempt: claim it, POST it, record the outcome and, when it failed and
    attempts are left, record the next attempt (due after the backoff) in the same
    transaction."""
    claimed_at = utcnow()
    with factory() as session:
        refused = _claim(session, delivery_id, claimed_at, settings)
        if refused is not None:
            return refused
        row = session.execute(
            sa.select(WebhookDelivery, Webhook.url, Webhook.secret)
            .join(Webhook, Webhook.id == WebhookDelivery.webhook_id)
            .where(WebhookDelivery.id == delivery_id)
        ).first()
    if row is None:
        return DeliveryOutcome("skipped")  # the webhook was deleted meanwhile
    delivery: WebhookDelivery = row[0]
    sent = _send_attempt(delivery, row.url, row.secret, settings)
    return _record_outcome(factory, delivery, claimed_at, sent, settings)


def _claim(
    session: Session, delivery_id: str, claimed_at: datetime, settings: Settings
) -> DeliveryOutcome | None:
    """Take the attempt (committed); None if taken, else what to do instead: "early" (not due
    yet: the task sends it again later) or "skipped" (held, finished or gone)."""
    D = WebhookDelivery
    lease = claimed_at - timedelta(seconds=lease_s(settings))
    taken = session.execute(
        sa.update(D)
        .where(
            D.id == delivery_id,
            D.status == "pending",
            D.next_attempt_at <= claimed_at + timedelta(seconds=DUE_SLACK_S),
            sa.or_(D.claimed_at.is_(None), D.claimed_at < lease),
        )
        .values(claimed_at=claimed_at)
    ).rowcount  # type: ignore[attr-defined]
    session.commit()
    if taken == 1:
        return None
    due = session.scalar(
        sa.select(D.next_attempt_at).where(D.id == delivery_id, D.status == "pending")
    )
    wait = (aware(due) - claimed_at).total_seconds() if due is not None else 0.0
    if wait > DUE_SLACK_S:
        # a message that came early (another clock): the task sends it again later
        return DeliveryOutcome("early", delivery_id, wait)
    return DeliveryOutcome("skipped")


def _send_attempt(delivery: WebhookDelivery, url: str, secret: str, settings: Settings) -> _Sent:
    """POST the attempt, signed; what came of it (never raises for the receiver's faults)."""
    body = delivery.payload.encode("utf-8")
    headers = signed_headers(delivery, secret, body)
    status_code: int | None = None
    error: str | None = None
    started = time.monotonic()
    try:
        status_code = post(url, body, headers, settings.webhook_timeout, allow_private(settings))
        if not 200 <= status_code < 300:
            error = f"answered HTTP {status_code}" + (
                " (redirects are not followed)" if 300 <= status_code < 400 else ""
            )
    except UrlRefused as exc:
        error = f"URL refused: {exc}"
    except (OSError, ValueError) as exc:
        error = str(exc) or exc.__class__.__name__
    return _Sent(status_code, error, round((time.monotonic() - started) * 1000, 1))


def _record_outcome(
    factory: sessionmaker[Session],
    delivery: WebhookDelivery,
    claimed_at: datetime,
    sent: _Sent,
    settings: Settings,
) -> DeliveryOutcome:
    """Record the attempt's outcome, if its claim still holds, and a failed one's next attempt
    (one transaction)."""
    D = WebhookDelivery
    status = "succeeded" if sent.error is None else "failed"
    now = utcnow()
    next_id: str | None = None
    delay = 0.0
    with factory() as session:
        done = session.execute(
            sa.update(D)
            .where(D.id == delivery.id, D.status == "pending", D.claimed_at == claimed_at)
            .values(
                status=status,
                status_code=sent.status_code,
                error=None if sent.error is None else sent.error[:MAX_ERROR_LENGTH],
                duration_ms=sent.duration_ms,
                sent_at=now,
            )
        ).rowcount  # type: ignore[attr-defined]
        if done == 1 and status == "failed" and delivery.attempt < settings.webhook_max_attempts:
            delay = backoff(delivery.attempt, settings.webhook_retry_base)
            next_id = _record_retry(session, delivery, now, delay)
        session.commit()
    if done != 1:
        # the lease expired and another worker took the attempt over: its outcome stands
        return DeliveryOutcome("skipped")
    log.info(
        "webhook delivery %s (%s, attempt %s): %s%s",
        delivery.id,
        delivery.event,
        delivery.attempt,
        status,
        f" ({sent.error})" if sent.error else "",
    )
    return DeliveryOutcome(status, next_id, delay)


def _record_retry(
    session: Session, delivery: WebhookDelivery, now: datetime, delay: float
) -> str | None:
    """The next attempt of `delivery`, due in `delay` seconds; its id, None if it exists."""
    candidate = new_id()
    made = insert_delivery(
        session,
        {
            "id": candidate,
            "webhook_id": delivery.webhook_id,
            "event": delivery.event,
            "subject_id": delivery.subject_id,
            "event_id": delivery.event_id,
            "payload": delivery.payload,
            "attempt": delivery.attempt + 1,
            "status": "pending",
            "created_at": now,
            "next_attempt_at": now + timedelta(seconds=delay),
        },
    )
    return candidate if made else None


def waiting(
    factory: sessionmaker[Session],
    settings: Settings,
    now: datetime | None = None,
    limit: int = WAITING_BATCH,
) -> list[str]:
    """Ids of the `pending` attempts due more than `WAITING_AFTER_S` seconds ago that nobody
    holds (never claimed, or a claim whose lease expired: a worker lost mid-delivery), the
    longest waiting first."""
    now = now or utcnow()
    lease = now - timedelta(seconds=lease_s(settings))
    D = WebhookDelivery
    with factory() as session:
        return list(
            session.scalars(
                sa.select(D.id)
                .where(
                    D.status == "pending",
                    D.next_attempt_at <= now - timedelta(seconds=WAITING_AFTER_S),
                    sa.or_(D.claimed_at.is_(None), D.claimed_at < lease),
                )
                .order_by(D.next_attempt_at)
                .limit(limit)
            )
        )
