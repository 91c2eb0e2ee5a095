"""The webhook tables: an owner's subscriptions (`webhooks`) and one row per delivery attempt
(`webhook_deliveries`). What they mean is `service.webhooks`'; how a delivery is
recorded and published, `service.outbox`'; how it is sent, `service.webhook_delivery`'.

Kept apart from `service.tables` (same `Base`, so Alembic's `target_metadata` and the schema
check see both).
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from service.db import Base, utcnow
from service.tables import DEFAULT_OWNER, new_id

#: the events a webhook may subscribe to
WEBHOOK_EVENTS = (
    "job.succeeded",
    "job.failed",
    "job.cancelled",
    "sweep.finished",
    "dataset.deleted",
    "model.deleted",
    "registry.alias_moved",
)
DELIVERY_STATUSES = ("pending", "succeeded", "failed")


class Webhook(Base):
    """A subscription of `owner`'s: POST the events in `events` to `url`, signed with
    `secret` (kept in the clear: it signs every delivery; it is shown once, at creation)."""

    __tablename__ = "webhooks"

    id: Mapped[str] = mapped_column(sa.String(32), primary_key=True, default=new_id)
    owner: Mapped[str] = mapped_column(sa.String(200), index=True, default=DEFAULT_OWNER)
    url: Mapped[str] = mapped_column(sa.String(2000))
    # a sorted list of WEBHOOK_EVENTS
    events: Mapped[list[str]] = mapped_column(sa.JSON)
    secret: Mapped[str] = mapped_column(sa.String(200))
    created_at: Mapped[datetime] = mapped_column(
        sa.DateTime(timezone=True), default=utcnow, index=True
    )


class WebhookDelivery(Base):
    """One attempt at sending one event to one webhook, recorded (`pending`) before it is sent.

    The attempts of one event share `event_id` (`X-Trainyard-Event-Id`, for receivers that
    deduplicate) and `payload` (the exact body). Attempt 1 is unique per (webhook, event,
    subject): however often a finished job is seen, it is announced once. `claimed_at` is the
    lease of the worker sending it (an expired lease: that worker was lost, send it again);
    `published_at` when its message last went to the broker.
    """

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        sa.CheckConstraint("status IN ('pending', 'succeeded', 'failed')", name="status"),
        sa.UniqueConstraint(
            "webhook_id",
            "event",
            "subject_id",
            "attempt",
            name="uq_webhook_deliveries_webhook_id_event_subject_id_attempt",
        ),
        sa.Index("ix_webhook_deliveries_status_next_attempt_at", "status", "next_attempt_at"),
        sa.Index("ix_webhook_deliveries_webhook_id_created_at", "webhook_id", "created_at"),
    )

    id: Mapped[str] = mapped_column(sa.String(32), primary_key=True, default=new_id)
    webhook_id: Mapped[str] = mapped_column(sa.ForeignKey("webhooks.id", ondelete="CASCADE"))
    event: Mapped[str] = mapped_column(sa.String(32))
    # the job (or sweep) the event is about; no foreign key: a delivery outlives nothing
    subject_id: Mapped[str] = mapped_column(sa.String(32), index=True)
    event_id: Mapped[str] = mapped_column(sa.String(32))
    payload: Mapped[str] = mapped_column(sa.Text)
    attempt: Mapped[int] = mapped_column(default=1)  # 1-based
    status: Mapped[str] = mapped_column(sa.String(16), default="pending")
    status_code: Mapped[int | None] = mapped_column(nullable=True)
    error: Mapped[str | None] = mapped_column(sa.Text, nullable=True)
    duration_ms: Mapped[float | None] = mapped_column(sa.Float(precision=53), nullable=True)
    created_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), default=utcnow)
    # when this attempt is due (the backoff of a retry)
    next_attempt_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), default=utcnow)
    published_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    claimed_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    # when the attempt was sent (its outcome recorded)
    sent_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
