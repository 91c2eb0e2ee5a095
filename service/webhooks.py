"""Webhooks: an owner's subscriptions to job (and sweep) events, and their deliveries.

A **delivery** is one row per attempt (`service.webhook_models.WebhookDelivery`), written
`pending` before anything is sent, so a worker lost mid-delivery drops nothing:

::

    enqueue_for_job ──► pending ── deliver: claim (lease), send ──► succeeded
       (attempt 1, unique per         │
        webhook, event, subject)      └──► failed ──► pending attempt + 1, due after the
                                                      backoff (until `webhook_max_attempts`)

- **Who creates them.** `enqueue_for_job` for a job that reached a final status: one delivery per
  webhook of the job's owner that subscribed to `job.<status>` and existed when the job ended;
  `enqueue_for_sweep` likewise for `sweep.finished` (the sweep as `GET /sweeps/{id}` gives it).
  Attempt 1 is unique per (webhook, event, job), so calling it twice (the worker that ended the
  job, and `scan`, the periodic safety net that looks at recently finished jobs) creates one.
- **Who sends them.** Always a worker (the Celery task `trainyard.deliver_webhook`, by name, like
  the training task), never the request that changed the job. `deliver` claims the attempt with
  a conditional UPDATE (a lease of `webhook_timeout` + 30 s), so two messages for one attempt
  send it once; a lease that expired belongs to a lost worker and the attempt may be sent again
  (receivers deduplicate by `X-Trainyard-Event-Id`).
- **Lost messages.** `scan` publishes again every due `pending` attempt whose message was never
  sent (broker down) or is long overdue (`republish_after`), like the job reconciler.
- **Busy workers.** A delivery's message is queued behind the training jobs already waiting,
  and a worker whose pool is training takes no message, so on a busy service it would wait for
  every job ahead of it (hours, maybe). Every worker's main process (idle while its pool
  trains) therefore also sends, from a few threads of its own, the attempts still `pending`
  `WAITING_AFTER_S` seconds after they were due (`waiting`, taken by the maintenance loop): a
  webhook arrives within seconds whatever the queue holds. The claim makes sure that the
  message, when a worker finally takes it, sends nothing twice.
- **What is sent.** `POST` of the event as JSON (`{"id", "type", "created_at", "data": {"job":
  ...}}`: the job as `GET /jobs/{id}` gives it, without its loss histories), with
  `X-Trainyard-Timestamp: <unix seconds>` and `X-Trainyard-Signature: sha256=<hex HMAC-SHA256 of
  "<timestamp>.<body>" with the secret>`; receivers check both and reject old timestamps
  (replays). Only a `2xx` answer succeeds; redirects are not followed. Each attempt waits at
  most `webhook_timeout` seconds in all, so a receiver that hangs costs one timeout.
- **Where it may go.** Only `http`/`https` URLs. Unless `webhooks_allow_private` (`auto`: in the
  embedded mode only), a host that resolves to any private, loopback, link-local, reserved or
  multicast address is refused at creation and again at every delivery, and the connection
  goes to the address that was checked (no second lookup: DNS rebinding cannot slip through).

This module writes no job: it reads them (`service.jobs.serialize_job`) and writes its own
tables only. Publishing takes the Celery app as an argument.
"""

from __future__ import annotations

import hmac
import http.client
import ipaddress
import json
import logging
import math
import secrets
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from service.config import Settings
from service.db import iso_utc, paginate, session_scope, utcnow
from service.tables import FINAL_STATUSES, Job, Sweep, is_id, new_id
from service.webhook_models import WEBHOOK_EVENTS, Webhook, WebhookDelivery

if TYPE_CHECKING:
    from celery import Celery

log = logging.getLogger(__name__)

#: The Celery task that sends one delivery attempt; its only argument is the delivery id.
DELIVER_TASK = "trainyard.deliver_webhook"
#: A claim outlives the attempt's timeout by this much; older, its worker was lost.
LEASE_MARGIN_S = 30.0
#: `scan` announces jobs that finished at most this long ago (older ones are history).
SCAN_WINDOW = timedelta(days=1)
#: At most this many jobs are announced, and deliveries published, per scan.
SCAN_BATCH = 200
MAX_BACKOFF_S = 3600.0
#: An attempt is due this long before its `next_attempt_at` (a countdown's rounding).
DUE_SLACK_S = 0.1
MAX_ERROR_LENGTH = 1000
#: A due attempt still `pending` (unclaimed) this long after it was due waits behind busy
#: workers: a worker's main process sends it itself (module docstring, "Busy workers").
WAITING_AFTER_S = 5.0
#: Bytes of a receiver's answer that are read (and dropped).
MAX_RESPONSE_BYTES = 4096
USER_AGENT = "trainyard-webhooks/1"
MAX_URL_LENGTH = 2000
SECRET_PREFIX = "whsec_"

__all__ = [
    "DELIVER_TASK",
    "WEBHOOK_EVENTS",
    "DeliveryOutcome",
    "UrlRefused",
    "allow_private",
    "backoff",
    "check_url",
    "create_webhook",
    "delete_webhook",
    "deliver",
    "enqueue_for_job",
    "enqueue_for_sweep",
    "get_webhook",
    "list_deliveries",
    "list_webhooks",
    "publish",
    "scan",
    "sign",
]


class UrlRefused(ValueError):
    """A webhook URL this service will not call; the message says why."""


# -- settings and rules --------------------------------------------------------------------------


def allow_private(settings: Settings) -> bool:
    """May webhooks reach private, loopback and link-local addresses? `auto`: only in the
    embedded mode (a SQLite database: one machine, the user's own)."""
    value = settings.webhooks_allow_private.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    return settings.database_url.startswith("sqlite")


def backoff(attempt: int, base: float) -> float:
    """Seconds before attempt `attempt + 1`, after attempt `attempt` failed."""
    return min(MAX_BACKOFF_S, base * 2 ** (attempt - 1))


def lease_s(settings: Settings) -> float:
    return settings.webhook_timeout + LEASE_MARGIN_S


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """`X-Trainyard-Signature`: `sha256=` + hex HMAC-SHA256 of `timestamp.body` with `secret`."""
    mac = hmac.new(secret.encode("utf-8"), timestamp.encode("ascii") + b"." + body, "sha256")
    return "sha256=" + mac.hexdigest()


# -- where a webhook may go --------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    scheme: str
    host: str
    port: int
    path: str


def parse_url(url: str) -> Target:
    """The parts of an `http`/`https` URL this service calls; `UrlRefused` otherwise."""
    if len(url) > MAX_URL_LENGTH:
        raise UrlRefused(f"is longer than {MAX_URL_LENGTH} characters")
    if any(ord(c) < 33 or ord(c) == 127 for c in url):
        raise UrlRefused("holds spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UrlRefused(f"is not a valid URL ({exc})") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise UrlRefused("must be an http:// or https:// URL")
    if parts.username is not None or parts.password is not None:
        raise UrlRefused("must not hold credentials (use the secret to authenticate)")
    host = parts.hostname
    if not host:
        raise UrlRefused("has no host")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return Target(scheme, host, port or (443 if scheme == "https" else 80), path)


def _refusal(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Why `address` is no public internet address, or None."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    for what, flag in (
        ("loopback", address.is_loopback),
        ("link-local", address.is_link_local),
        ("multicast", address.is_multicast),
        ("unspecified", address.is_unspecified),
        ("private", address.is_private),
        ("reserved", address.is_reserved),
    ):
        if flag:
            return what
    if not address.is_global:
        return "not public"
    return None


def resolve(host: str, port: int) -> list[str]:
    """The addresses `host` resolves to (a literal address is itself); `UrlRefused` if none."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise UrlRefused(f"host {host!r} does not resolve ({exc})") from None
    addresses: list[str] = []
    for info in infos:
        address = str(info[4][0]).split("%", 1)[0]
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise UrlRefused(f"host {host!r} does not resolve")
    return addresses


def checked_address(target: Target, private_ok: bool) -> str:
    """The address to connect to: the host's first address, after checking every one of them
    (a name with one private address among public ones is refused)."""
    addresses = resolve(target.host, target.port)
    if not private_ok:
        for address in addresses:
            why = _refusal(ipaddress.ip_address(address))
            if why is not None:
                raise UrlRefused(
                    f"host {target.host!r} resolves to {address}, a {why} address; "
                    "set TRAINYARD_WEBHOOKS_ALLOW_PRIVATE=true to allow such addresses"
                )
    return addresses[0]


def check_url(url: str, private_ok: bool) -> None:
    """Raise `UrlRefused` unless `url` is one this service would deliver to now."""
    target = parse_url(url)
    if private_ok:
        return
    checked_address(target, private_ok)


# -- the API side --------------------------------------------------------------------------------


def create_webhook(
    session: Session,
    owner: str,
    url: str,
    events: Iterable[str],
    secret: str | None,
    settings: Settings,
) -> Webhook:
    """A new webhook of `owner` (flushed; the caller commits). `UrlRefused` for a URL it may not
    call; a missing secret is generated (the caller shows it once)."""
    chosen = sorted(set(events))
    unknown = [e for e in chosen if e not in WEBHOOK_EVENTS]
    if unknown or not chosen:
        raise ValueError(f"unknown events {unknown}")
    check_url(url, allow_private(settings))
    webhook = Webhook(
        owner=owner,
        url=url,
        events=chosen,
        secret=secret or SECRET_PREFIX + secrets.token_urlsafe(32),
    )
    session.add(webhook)
    session.flush()
    return webhook


def get_webhook(session: Session, webhook_id: str, owner: str) -> Webhook | None:
    if not is_id(webhook_id):
        return None
    return session.scalars(
        sa.select(Webhook).where(Webhook.id == webhook_id, Webhook.owner == owner)
    ).one_or_none()


def list_webhooks(
    session: Session, owner: str, page: int, page_size: int
) -> tuple[list[Webhook], int]:
    """A page of `owner`'s webhooks, newest first, and their total."""
    query = (
        sa.select(Webhook)
        .where(Webhook.owner == owner)
        .order_by(Webhook.created_at.desc(), Webhook.id.desc())
    )
    return paginate(session, query, page, page_size)


def delete_webhook(session: Session, webhook_id: str, owner: str) -> bool:
    """Delete `owner`'s webhook and its deliveries (commits); False if there is none."""
    webhook = get_webhook(session, webhook_id, owner)
    if webhook is None:
        return False
    session.execute(sa.delete(WebhookDelivery).where(WebhookDelivery.webhook_id == webhook.id))
    session.execute(sa.delete(Webhook).where(Webhook.id == webhook.id))
    session.commit()
    return True


def list_deliveries(
    session: Session, webhook_id: str, page: int, page_size: int
) -> tuple[list[WebhookDelivery], int]:
    """A page of one webhook's delivery attempts, newest first, and their total."""
    D = WebhookDelivery
    query = (
        sa.select(D)
        .where(D.webhook_id == webhook_id)
        .order_by(D.created_at.desc(), D.attempt.desc(), D.id.desc())
    )
    return paginate(session, query, page, page_size)


def serialize_webhook(webhook: Webhook, *, with_secret: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": webhook.id,
        "url": webhook.url,
        "events": list(webhook.events),
        "created_at": iso_utc(webhook.created_at),
    }
    if with_secret:
        out["secret"] = webhook.secret
    return out


def serialize_delivery(delivery: WebhookDelivery) -> dict[str, Any]:
    return {
        "id": delivery.id,
        "event": delivery.event,
        "event_id": delivery.event_id,
        "subject_id": delivery.subject_id,
        "attempt": delivery.attempt,
        "status": delivery.status,
        "status_code": delivery.status_code,
        "error": delivery.error,
        "duration_ms": delivery.duration_ms,
        "created_at": iso_utc(delivery.created_at),
        "next_attempt_at": iso_utc(delivery.next_attempt_at),
        "sent_at": iso_utc(delivery.sent_at),
    }


# -- creating deliveries -----------------------------------------------------------------------


def _aware(value: datetime | None) -> datetime | None:
    # SQLite gives naive datetimes back; everything stored is UTC.
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def _finite(value: Any) -> Any:
    """`value` with every non-finite float as None (JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def job_payload(session: Session, job: Job, event: str, event_id: str, now: datetime) -> str:
    """The body of a job event: the job as `GET /jobs/{id}` gives it, less its histories."""
    from service.jobs import serialize_job

    data = serialize_job(session, job)
    for key in ("loss_history", "val_loss_history"):
        data.pop(key, None)
    body = {
        "id": event_id,
        "type": event,
        "created_at": now.isoformat(),
        "data": {"job": _finite(data)},
    }
    return json.dumps(body, separators=(",", ":"), allow_nan=False)


def _insert_ignore(session: Session, values: dict[str, Any]) -> bool:
    """INSERT a delivery unless its (webhook, event, subject, attempt) exists; True if new."""
    if session.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    statement = insert(WebhookDelivery).values(**values).on_conflict_do_nothing()
    return session.execute(statement.returning(WebhookDelivery.id)).first() is not None


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
    finished = _aware(finished)
    hooks = [
        w
        for w in session.scalars(sa.select(Webhook).where(Webhook.owner == owner))
        if event in w.events and (finished is None or _aware(w.created_at) <= finished)
    ]
    if not hooks:
        return []
    now = utcnow()
    event_id = new_id()
    payload = payload_of(event_id, now)
    created = []
    for webhook in hooks:
        delivery_id = new_id()
        if _insert_ignore(
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


def sweep_payload(session: Session, sweep: Sweep, event_id: str, now: datetime) -> str:
    """The body of `sweep.finished`: the sweep as `GET /sweeps/{id}` gives it."""
    from service.sweeps import serialize_sweep

    data = serialize_sweep(session, sweep)
    body = {
        "id": event_id,
        "type": "sweep.finished",
        "created_at": now.isoformat(),
        "data": {"sweep": _finite(data)},
    }
    return json.dumps(body, separators=(",", ":"), allow_nan=False)


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


#: Publishing must not hang a worker when the broker is down (the row waits for `scan`).
PUBLISH_RETRY_POLICY = {"max_retries": 1, "interval_start": 0.0, "interval_step": 0.2}


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
    given = now
    now = now or utcnow()
    with factory() as session:
        jobs = finished_unannounced(session, now)
        swept = finished_unannounced_sweeps(session, now)
    created = 0
    for job_id, status in jobs:
        created += len(enqueue_for_job(factory, job_id, status))
    for sweep_id in swept:
        created += len(enqueue_for_sweep(factory, sweep_id))
    now = given or utcnow()  # the deliveries just recorded are due

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
    return {"created": created, "published": published}


def waiting(
    factory: sessionmaker[Session],
    settings: Settings,
    now: datetime | None = None,
    limit: int = SCAN_BATCH,
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


# -- sending -----------------------------------------------------------------------------------


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """HTTP to `address` (checked), with `Host:` the URL's host."""

    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self._address, self.port), self.timeout)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS to `address` (checked); the certificate is verified for the URL's host (SNI)."""

    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout, context=ssl.create_default_context())
        self._address = address

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)  # type: ignore[attr-defined]


def post(url: str, body: bytes, headers: dict[str, str], timeout: float, private_ok: bool) -> int:
    """POST `body` to `url` (its address checked as `check_url` does, and connected to as
    checked); the answer's status. At most `timeout` seconds in all: a receiver that answers
    slowly is cut off. Raises `UrlRefused` or `OSError` (including timeouts)."""
    target = parse_url(url)
    address = checked_address(target, private_ok)
    cls = _PinnedHTTPSConnection if target.scheme == "https" else _PinnedHTTPConnection
    conn = cls(target.host, target.port, address, timeout)
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


@dataclass(frozen=True)
class DeliveryOutcome:
    """What `deliver` did: `status` ("succeeded", "failed"; "skipped": claimed elsewhere,
    finished or gone; "early": not due yet) and the attempt to publish next with its countdown
    (a failed one's next attempt, after the backoff; an early one itself, when it is due)."""

    status: str
    next_id: str | None = None
    countdown: float = 0.0


def deliver(
    factory: sessionmaker[Session], delivery_id: str, settings: Settings
) -> DeliveryOutcome:
    """Send one pending attempt: claim it, POST it, record the outcome and, when it failed and
    attempts are left, record the next attempt (due after the backoff) in the same
    transaction."""
    D = WebhookDelivery
    claimed_at = utcnow()
    lease = claimed_at - timedelta(seconds=lease_s(settings))
    with factory() as session:
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
        if taken != 1:
            due = session.scalar(
                sa.select(D.next_attempt_at).where(D.id == delivery_id, D.status == "pending")
            )
            wait = (_aware(due) - claimed_at).total_seconds() if due is not None else 0.0
            if wait > DUE_SLACK_S:
                # a message that came early (another clock): the task sends it again later
                return DeliveryOutcome("early", delivery_id, wait)
            return DeliveryOutcome("skipped")
        row = session.execute(
            sa.select(D, Webhook.url, Webhook.secret)
            .join(Webhook, Webhook.id == D.webhook_id)
            .where(D.id == delivery_id)
        ).first()
    if row is None:
        return DeliveryOutcome("skipped")  # the webhook was deleted meanwhile
    delivery, url, secret = row[0], row.url, row.secret

    body = delivery.payload.encode("utf-8")
    timestamp = str(int(time.time()))
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "X-Trainyard-Event": delivery.event,
        "X-Trainyard-Event-Id": delivery.event_id,
        "X-Trainyard-Delivery": delivery.id,
        "X-Trainyard-Attempt": str(delivery.attempt),
        "X-Trainyard-Timestamp": timestamp,
        "X-Trainyard-Signature": sign(secret, timestamp, body),
    }
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
    duration_ms = round((time.monotonic() - started) * 1000, 1)
    status = "succeeded" if error is None else "failed"

    now = utcnow()
    next_id: str | None = None
    delay = 0.0
    with factory() as session:
        done = session.execute(
            sa.update(D)
            .where(D.id == delivery_id, D.status == "pending", D.claimed_at == claimed_at)
            .values(
                status=status,
                status_code=status_code,
                error=None if error is None else error[:MAX_ERROR_LENGTH],
                duration_ms=duration_ms,
                sent_at=now,
            )
        ).rowcount  # type: ignore[attr-defined]
        if done == 1 and status == "failed" and delivery.attempt < settings.webhook_max_attempts:
            delay = backoff(delivery.attempt, settings.webhook_retry_base)
            candidate = new_id()
            if _insert_ignore(
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
            ):
                next_id = candidate
        session.commit()
    if done != 1:
        # the lease expired and another worker took the attempt over: its outcome stands
        return DeliveryOutcome("skipped")
    log.info(
        "webhook delivery %s (%s, attempt %s): %s%s",
        delivery_id,
        delivery.event,
        delivery.attempt,
        status,
        f" ({error})" if error else "",
    )
    return DeliveryOutcome(status, next_id, delay)
