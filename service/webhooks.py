"""Webhooks: an owner's subscriptions to job (and sweep) events, what an event says, and the
delivery rows (`service.webhook_models`).

A **delivery** is one row per attempt, written `pending` before anything is sent, so a worker
lost mid-delivery drops nothing. The modules around it, one concern each:

- `service.outbox` records the first attempt of each event (one per webhook of the subject's
  owner subscribed to it) in the transaction of the change it reports, and publishes the
  messages that send them after its commit; every event leaves from there.
- `service.webhook_delivery` sends one attempt (claim, `POST`, record, the retry after a
  backoff), from a worker.
- `service.webhook_signing` signs it; `service.webhook_urls` decides where it may go.

This module holds the API side (create, list, get, delete, serialise), the body of each event
(`job_payload`, `sweep_payload`, `alias_payload`: `{"id", "type", "created_at", "data":
{"job": ...}}`, the job as `GET /jobs/{id}` gives it without its loss histories, or
`{"sweep": ...}`, or `{"move": ...}` for a registry alias's move) and the one
INSERT of a delivery row. It writes no job: it reads them (`service.views`, the API's view).
"""

from __future__ import annotations

import json
import math
import secrets
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from service.config import Settings
from service.db import iso_utc, paginate
from service.tables import Sweep, is_id
from service.views import serialize_sweep
from service.webhook_models import WEBHOOK_EVENTS, Webhook, WebhookDelivery
from service.webhook_urls import allow_private, check_url

SECRET_PREFIX = "whsec_"


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


# -- events and deliveries ---------------------------------------------------------------------


def aware(value: datetime | None) -> datetime | None:
    """`value` as an aware datetime (SQLite gives naive ones back; everything stored is UTC)."""
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


def job_payload(view: Mapping[str, Any], event: str, event_id: str, now: datetime) -> str:
    """The body of a job event: the job's view (`service.views.serialize_jobs`, as `GET
    /jobs/{id}` gives it) less its histories."""
    data = {k: v for k, v in view.items() if k not in ("loss_history", "val_loss_history")}
    body = {
        "id": event_id,
        "type": event,
        "created_at": now.isoformat(),
        "data": {"job": _finite(data)},
    }
    return json.dumps(body, separators=(",", ":"), allow_nan=False)


def sweep_payload(session: Session, sweep: Sweep, event_id: str, now: datetime) -> str:
    """The body of `sweep.finished`: the sweep as `GET /sweeps/{id}` gives it."""
    data = serialize_sweep(session, sweep)
    body = {
        "id": event_id,
        "type": "sweep.finished",
        "created_at": now.isoformat(),
        "data": {"sweep": _finite(data)},
    }
    return json.dumps(body, separators=(",", ":"), allow_nan=False)


def alias_payload(data: Mapping[str, Any], event_id: str, now: datetime) -> str:
    """The body of `registry.alias_moved`: the move (`name`, `alias`, `from`, `to`, `at`,
    `key_id`, and `model_id`, the model `to` names; `to` null: the alias was deleted)."""
    body = {
        "id": event_id,
        "type": "registry.alias_moved",
        "created_at": now.isoformat(),
        "data": {"move": dict(data)},
    }
    return json.dumps(body, separators=(",", ":"), allow_nan=False)


def insert_delivery(session: Session, *rows: Mapping[str, Any]) -> list[str]:
    """INSERT deliveries (each a row's values; one statement, executed for many rows in
    batches), skipping those whose (webhook, event, subject, attempt) exists; the ids
    inserted."""
    if not rows:
        return []
    if session.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    statement = insert(WebhookDelivery).on_conflict_do_nothing().returning(WebhookDelivery.id)
    return list(session.scalars(statement, [dict(row) for row in rows]))
