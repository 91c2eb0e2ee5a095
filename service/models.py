"""The SQL store: datasets, training jobs (with their per-epoch history) and trained models.

The store is the single source of truth for job state; Celery only carries job ids.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column, relationship

from service.db import Base, utcnow

JOB_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
FINAL_STATUSES = ("succeeded", "failed", "cancelled")


def new_id() -> str:
    return uuid.uuid4().hex


class Dataset(Base):
    __tablename__ = "datasets"

    id: Mapped[str] = mapped_column(sa.String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(sa.String(200))
    n_samples: Mapped[int]
    n_features: Mapped[int]
    n_targets: Mapped[int]
    # "regression" (float targets, one column per output) or "labels" (class labels).
    target_kind: Mapped[str] = mapped_column(sa.String(16))
    # For labels: the sorted distinct labels, as submitted (ints or strings); index = class id.
    classes: Mapped[list[Any] | None] = mapped_column(sa.JSON, nullable=True)
    feature_names: Mapped[list[str] | None] = mapped_column(sa.JSON, nullable=True)
    # float64 arrays, stored as .npy bytes: features (n_samples, n_features); targets
    # (n_samples, n_targets) for regression, class indices (n_samples,) for labels.
    features: Mapped[bytes] = mapped_column(sa.LargeBinary, deferred=True)
    targets: Mapped[bytes] = mapped_column(sa.LargeBinary, deferred=True)
    created_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), default=utcnow)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        sa.CheckConstraint(
            "status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')",
            name="status",
        ),
        sa.Index("ix_jobs_status_created_at", "status", "created_at"),
    )

    id: Mapped[str] = mapped_column(sa.String(32), primary_key=True, default=new_id)
    status: Mapped[str] = mapped_column(sa.String(16), default="queued")
    dataset_id: Mapped[str] = mapped_column(sa.ForeignKey("datasets.id"), index=True)
    model_spec: Mapped[dict[str, Any]] = mapped_column(sa.JSON)
    training_spec: Mapped[dict[str, Any]] = mapped_column(sa.JSON)
    epoch: Mapped[int] = mapped_column(default=0)
    epochs: Mapped[int]
    metrics: Mapped[dict[str, Any] | None] = mapped_column(sa.JSON, nullable=True)
    error: Mapped[str | None] = mapped_column(sa.Text, nullable=True)
    attempts: Mapped[int] = mapped_column(default=0)
    cancel_requested: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(
        sa.DateTime(timezone=True), default=utcnow, index=True
    )
    started_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    # When the job's message was last handed to the broker (null: never, e.g. broker down);
    # a reconciler publishes queued jobs again whose message may have been lost.
    published_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    # Last sign of life from the worker running the job (a reaper can fail stale jobs).
    heartbeat_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))

    history: Mapped[list[JobEpoch]] = relationship(
        order_by="JobEpoch.epoch", cascade="all, delete-orphan", lazy="raise"
    )
    model: Mapped[TrainedModel | None] = relationship(back_populates="job", lazy="raise")


class JobEpoch(Base):
    """One finished epoch of a job: appended once per epoch, so history writes stay O(1)."""

    __tablename__ = "job_epochs"

    job_id: Mapped[str] = mapped_column(
        sa.ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
    )
    epoch: Mapped[int] = mapped_column(primary_key=True)  # 1-based
    loss: Mapped[float] = mapped_column(sa.Float(precision=53))
    val_loss: Mapped[float | None] = mapped_column(sa.Float(precision=53), nullable=True)


class TrainedModel(Base):
    __tablename__ = "models"

    id: Mapped[str] = mapped_column(sa.String(32), primary_key=True, default=new_id)
    # unique: a job has at most one model, however often its message is delivered.
    job_id: Mapped[str] = mapped_column(sa.ForeignKey("jobs.id"), unique=True)
    dataset_id: Mapped[str] = mapped_column(sa.ForeignKey("datasets.id"), index=True)
    # {"nin", "layers", "activation", "output_activation"?, "loss", "target_kind", "classes"?}
    architecture: Mapped[dict[str, Any]] = mapped_column(sa.JSON)
    weights: Mapped[bytes] = mapped_column(sa.LargeBinary, deferred=True)  # .npz
    graph_svg: Mapped[str] = mapped_column(sa.Text, deferred=True)
    metrics: Mapped[dict[str, Any]] = mapped_column(sa.JSON)
    created_at: Mapped[datetime] = mapped_column(
        sa.DateTime(timezone=True), default=utcnow, index=True
    )

    job: Mapped[Job] = relationship(back_populates="model", lazy="raise")
