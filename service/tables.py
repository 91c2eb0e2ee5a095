"""The SQL store's tables: datasets, training jobs (with their per-epoch history), trained
models, sweeps, API keys, idempotent answers. (Named `tables`: "model" elsewhere means a trained
network: `core.model`, `service.trained_models`, `/api/v1/models`.)

The store is the single source of truth for job state; Celery only carries job ids.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, column_property, mapped_column, relationship

from service.db import Base, utcnow

JOB_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
FINAL_STATUSES = ("succeeded", "failed", "cancelled")
#: What a job does: "train" a model on a dataset, "predict": a trained model's predictions
#: for every row of a dataset (batch predictions, written to the dataset store), or "import":
#: a dataset made from an object already in an object store (datasets by reference).
JOB_KINDS = ("train", "predict", "import")


# Rows made outside the API (scripts, worker tests) belong to the embedded default owner; the
# API always sets the owner of the key that made the request.
DEFAULT_OWNER = "local"


def new_id() -> str:
    return uuid.uuid4().hex


def is_id(value: str) -> bool:
    """Could `value` be a row id (32 lowercase hex digits)? Anything else is looked up nowhere:
    an id from a URL never reaches the database unless it has this form."""
    return len(value) == 32 and all(c in "0123456789abcdef" for c in value)


def _owner_of(table: str, fk: str) -> Any:
    """A column default: the owner of the row this one refers to (a job's dataset, a model's
    job), so code that inserts jobs and models (the workers) needs to know nothing of owners."""

    def default(context: Any) -> str:
        ref = context.get_current_parameters().get(fk)
        owner = context.connection.scalar(
            sa.text(f"SELECT owner FROM {table} WHERE id = :id"), {"id": ref}
        )
        return owner or DEFAULT_OWNER

    return default


class Dataset(Base):
    __tablename__ = "datasets"

    id: Mapped[str] = mapped_column(sa.String(32), primary_key=True, default=new_id)
    owner: Mapped[str] = mapped_column(sa.String(200), index=True, default=DEFAULT_OWNER)
    name: Mapped[str] = mapped_column(sa.String(200))
    n_samples: Mapped[int]
    n_features: Mapped[int]
    n_targets: Mapped[int]
    # "regression" (float targets, one column per output) or "labels" (class labels).
    target_kind: Mapped[str] = mapped_column(sa.String(16))
    # For labels: the sorted distinct labels, as submitted (ints or strings); index = class id.
    classes: Mapped[list[Any] | None] = mapped_column(sa.JSON, nullable=True)
    # the feature columns' names, in order (x0, x1, ... for a bare features matrix)
    feature_names: Mapped[list[str] | None] = mapped_column(sa.JSON, nullable=True)
    # one description per feature column: {"name", "type", "missing", ...} (core.table)
    columns: Mapped[list[dict[str, Any]] | None] = mapped_column(sa.JSON, nullable=True)
    # the target column's name, when the data came as a CSV file or named rows
    target_name: Mapped[str | None] = mapped_column(sa.String(200), nullable=True)
    # The rows live in the dataset store (service.dataset_store): this folder's Parquet parts,
    # their size in bytes and checksum. Null only for rows stored in `dataset_data` before the
    # store existed, until `service.migrate.upgrade` moves them.
    location: Mapped[str | None] = mapped_column(sa.String(1024), nullable=True)
    n_bytes: Mapped[int | None] = mapped_column(sa.BigInteger, nullable=True)
    checksum: Mapped[str | None] = mapped_column(sa.String(64), nullable=True)
    # what the upload's reader noticed (a column that became categorical, dropped rows)
    warnings: Mapped[list[dict[str, Any]] | None] = mapped_column(sa.JSON, nullable=True)
    data: Mapped[DatasetData | None] = relationship(
        cascade="all, delete-orphan", lazy="raise", uselist=False
    )
    created_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), default=utcnow)
    # set by a DELETE (or an expiry): from then on nothing serves the row; the workers'
    # maintenance frees what it holds and removes it (`service.deletion`)
    deleted_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True), index=True)
    # deleted (as by a DELETE) once past: `service.deletion.expire`
    expires_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True), index=True)


class DatasetData(Base):
    """A dataset's rows as stored before the dataset store (read once, by the move to the
    store in `service.migrate.upgrade`, and emptied by it): `features` a typed column table
    (`core.table.table_to_bytes`; rows stored before typed columns are a float64 `.npy`
    matrix, read the same way), `targets` a `.npy` array: float64 `(n_samples, n_targets)`,
    or int64 class indices `(n_samples,)` for labels."""

    __tablename__ = "dataset_data"

    dataset_id: Mapped[str] = mapped_column(
        sa.ForeignKey("datasets.id", ondelete="CASCADE"), primary_key=True
    )
    features: Mapped[bytes] = mapped_column(sa.LargeBinary)
    targets: Mapped[bytes] = mapped_column(sa.LargeBinary)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        sa.CheckConstraint(
            "status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')",
            name="status",
        ),
        sa.Index("ix_jobs_status_created_at", "status", "created_at"),
        # one job per trial of a sweep, however often a step that makes trials is repeated
        sa.UniqueConstraint("sweep_id", "trial_index", name="uq_jobs_sweep_id_trial_index"),
    )

    id: Mapped[str] = mapped_column(sa.String(32), primary_key=True, default=new_id)
    # the dataset's owner unless set (the API sets it; a job only uses its owner's datasets)
    owner: Mapped[str] = mapped_column(
        sa.String(200), index=True, default=_owner_of("datasets", "dataset_id")
    )
    status: Mapped[str] = mapped_column(sa.String(16), default="queued")
    # one of JOB_KINDS; the lifecycle is the same for every kind, the task that runs it is not
    kind: Mapped[str] = mapped_column(
        sa.String(16), default="train", server_default="train", index=True
    )
    # the dataset a training job learns from, or whose rows a predict job scores; the dataset
    # an import job made (null until it succeeded)
    dataset_id: Mapped[str | None] = mapped_column(
        sa.ForeignKey("datasets.id"), index=True, nullable=True
    )
    # An import job's source URL and its options: {"name", "target", "column_types",
    # "format" ("csv" or "parquet"), "unit" of its progress ("bytes" or "rows")}.
    source: Mapped[str | None] = mapped_column(sa.String(2048), nullable=True)
    import_options: Mapped[dict[str, Any] | None] = mapped_column(sa.JSON, nullable=True)
    # A predict job's model (no foreign key: `models.job_id` already points at jobs, and a
    # model row is never deleted); null for a training job, whose model is `model` below.
    model_id: Mapped[str | None] = mapped_column(sa.String(32), nullable=True, index=True)
    # A predict job's progress: the dataset's rows, and those of this attempt written so far
    # (an import job's: the source's bytes or rows, and those read so far).
    rows_total: Mapped[int | None] = mapped_column(sa.BigInteger, nullable=True)
    rows_done: Mapped[int | None] = mapped_column(sa.BigInteger, nullable=True)
    # A succeeded predict job's output: the folder of its Parquet parts in the dataset store
    # (`{store}/predictions/{job_id}/{attempt}`) and their size in bytes.
    output_location: Mapped[str | None] = mapped_column(sa.String(1024), nullable=True)
    output_bytes: Mapped[int | None] = mapped_column(sa.BigInteger, nullable=True)
    # a training job's specs ({} for other kinds)
    model_spec: Mapped[dict[str, Any]] = mapped_column(sa.JSON)
    training_spec: Mapped[dict[str, Any]] = mapped_column(sa.JSON)
    epoch: Mapped[int] = mapped_column(default=0)
    epochs: Mapped[int]
    metrics: Mapped[dict[str, Any] | None] = mapped_column(sa.JSON, nullable=True)
    # {"train": {...}, "validation": {...}, "test": {...}} (core.metrics), once succeeded
    evaluation: Mapped[dict[str, Any] | None] = mapped_column(sa.JSON, nullable=True)
    best_epoch: Mapped[int | None] = mapped_column(nullable=True)
    stopped_epoch: Mapped[int | None] = mapped_column(nullable=True)
    # "completed" or "early_stopping" once succeeded (cancelled and failed jobs: their status)
    stop_reason: Mapped[str | None] = mapped_column(sa.String(32), nullable=True)
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
    # labels of the owner's (settable at submit and by PATCH)
    name: Mapped[str | None] = mapped_column(sa.String(200), nullable=True)
    tags: Mapped[dict[str, str] | None] = mapped_column(sa.JSON, nullable=True)
    # A sweep's trial: its sweep, its place in the sweep and the values it was given. A trial is
    # `held` (queued, never published, claimable by no delivery) until its sweep starts it
    # within `max_parallel` (service.sweeps).
    sweep_id: Mapped[str | None] = mapped_column(
        sa.ForeignKey("sweeps.id", ondelete="CASCADE"), nullable=True, index=True
    )
    trial_index: Mapped[int | None] = mapped_column(nullable=True)
    params: Mapped[dict[str, Any] | None] = mapped_column(sa.JSON, nullable=True)
    held: Mapped[bool] = mapped_column(default=False, server_default=sa.false())
    # set by a DELETE (or an expiry): from then on nothing serves the row; the workers'
    # maintenance frees what it holds and removes it (`service.deletion`)
    deleted_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True), index=True)
    # deleted (as by a DELETE) once past: `service.deletion.expire`
    expires_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True), index=True)
    # a registered model's name: the model becomes its next version when the job succeeds
    register_as: Mapped[str | None] = mapped_column(sa.String(64), nullable=True)

    history: Mapped[list[JobEpoch]] = relationship(
        order_by="JobEpoch.epoch", cascade="all, delete-orphan", lazy="raise"
    )
    model: Mapped[TrainedModel | None] = relationship(back_populates="job", lazy="raise")


SWEEP_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")


class Sweep(Base):
    """A hyperparameter sweep: one spec (`base`) and the values to try; its trials are jobs
    (`Job.sweep_id`), made all at once when the sweep is submitted. Its life is
    `service.sweeps`'."""

    __tablename__ = "sweeps"
    __table_args__ = (
        sa.CheckConstraint(
            "status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')",
            name="status",
        ),
    )

    id: Mapped[str] = mapped_column(sa.String(32), primary_key=True, default=new_id)
    owner: Mapped[str] = mapped_column(sa.String(200), index=True, default=DEFAULT_OWNER)
    name: Mapped[str | None] = mapped_column(sa.String(200), nullable=True)
    tags: Mapped[dict[str, str] | None] = mapped_column(sa.JSON, nullable=True)
    status: Mapped[str] = mapped_column(sa.String(16), default="queued")
    dataset_id: Mapped[str] = mapped_column(sa.ForeignKey("datasets.id"), index=True)
    # the request's `base` as submitted ({"model", "training"}); each trial stores its own
    # complete spec
    base: Mapped[dict[str, Any]] = mapped_column(sa.JSON)
    method: Mapped[str] = mapped_column(sa.String(16))
    parameters: Mapped[dict[str, Any]] = mapped_column(sa.JSON)
    # {"name", "goal"}
    metric: Mapped[dict[str, Any]] = mapped_column(sa.JSON)
    max_trials: Mapped[int | None] = mapped_column(nullable=True)
    # null: as many trials at once as the workers take
    max_parallel: Mapped[int | None] = mapped_column(nullable=True)
    # the random draws' seed (drawn and stored when not given)
    seed: Mapped[int | None] = mapped_column(sa.BigInteger, nullable=True)
    # {"type": "median", "min_epochs", "min_trials"} or null
    early_termination: Mapped[dict[str, Any] | None] = mapped_column(sa.JSON, nullable=True)
    n_trials: Mapped[int]
    # a registered model's name: the best trial's model becomes its next version when the
    # sweep succeeds
    register_as: Mapped[str | None] = mapped_column(sa.String(64), nullable=True)
    cancel_requested: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(
        sa.DateTime(timezone=True), default=utcnow, index=True
    )
    started_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    # set by a DELETE (or an expiry): from then on nothing serves the row; the workers'
    # maintenance frees what it holds and removes it (`service.deletion`)
    deleted_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True), index=True)


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
    # the job's owner (the worker that saves the model need not know it)
    owner: Mapped[str] = mapped_column(
        sa.String(200), index=True, default=_owner_of("jobs", "job_id")
    )
    dataset_id: Mapped[str] = mapped_column(sa.ForeignKey("datasets.id"), index=True)
    # core.model's architecture: {"nin", "layers", "activation", "output_activation", "loss",
    # "target_kind", "classes", "dtype"?, "init"?, "preprocessing"?}
    architecture: Mapped[dict[str, Any]] = mapped_column(sa.JSON)
    weights: Mapped[bytes] = mapped_column(sa.LargeBinary, deferred=True)  # .npz
    graph_svg: Mapped[str] = mapped_column(sa.Text, deferred=True)
    metrics: Mapped[dict[str, Any]] = mapped_column(sa.JSON)
    evaluation: Mapped[dict[str, Any] | None] = mapped_column(sa.JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(
        sa.DateTime(timezone=True), default=utcnow, index=True
    )

    job: Mapped[Job] = relationship(back_populates="model", lazy="raise")
    # the dataset it was trained on was deleted (read with the row: one indexed EXISTS)
    dataset_gone: Mapped[bool] = column_property(
        ~sa.exists().where(Dataset.id == dataset_id, Dataset.deleted_at.is_(None))
    )
    # set by a DELETE (or an expiry): from then on nothing serves the row; the workers'
    # maintenance frees what it holds and removes it (`service.deletion`)
    deleted_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True), index=True)
    # deleted (as by a DELETE) once past: `service.deletion.expire`
    expires_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True), index=True)


# An API key's scopes, from least to most: `read` keys make no mutating request
KEY_SCOPES = ("read", "write")


class ApiKey(Base):
    """An API key: only its SHA-256 is stored; `prefix` (the first characters) identifies it."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(sa.String(32), primary_key=True, default=new_id)
    owner: Mapped[str] = mapped_column(sa.String(200), index=True)
    name: Mapped[str] = mapped_column(sa.String(200), default="")
    key_hash: Mapped[str] = mapped_column(sa.String(64), unique=True)  # hex SHA-256
    prefix: Mapped[str] = mapped_column(sa.String(16), index=True)
    created_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    # this key's quotas (`service.quotas`); null: the settings' defaults
    quota_bytes: Mapped[int | None] = mapped_column(sa.BigInteger, nullable=True)
    max_active_jobs: Mapped[int | None] = mapped_column(nullable=True)
    # `read` (no mutating request) or `write`; set at most once a minute (service.auth);
    # a key past `expires_at` is refused (401)
    scope: Mapped[str] = mapped_column(sa.String(16), default="write", server_default="write")
    last_used_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    expires_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))


class IdempotentRequest(Base):
    """The first answer to a POST with an `Idempotency-Key`, replayed for the same key and body.

    Unique per (owner, key), and inserted in the same transaction as what the request created,
    so of concurrent requests with one key exactly one commits; the others replay its answer.
    """

    __tablename__ = "idempotent_requests"
    __table_args__ = (sa.UniqueConstraint("owner", "key", name="uq_idempotent_requests_owner_key"),)

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    owner: Mapped[str] = mapped_column(sa.String(200))
    key: Mapped[str] = mapped_column(sa.String(255))
    # SHA-256 of method, path, content type and body: another request under the same key is 422
    fingerprint: Mapped[str] = mapped_column(sa.String(64))
    status_code: Mapped[int]
    body: Mapped[str] = mapped_column(sa.Text)
    location: Mapped[str | None] = mapped_column(sa.String(500))
    created_at: Mapped[datetime] = mapped_column(
        sa.DateTime(timezone=True), default=utcnow, index=True
    )


class Upload(Base):
    """A resumable (tus) upload: its bytes are chunk objects in the dataset store
    (`service.upload_store`), listed in `chunks` in order; `offset` is how many bytes were
    accepted, advanced only by a conditional UPDATE (`service.uploads`)."""

    __tablename__ = "uploads"

    id: Mapped[str] = mapped_column(sa.String(32), primary_key=True, default=new_id)
    owner: Mapped[str] = mapped_column(sa.String(200), index=True, default=DEFAULT_OWNER)
    length: Mapped[int] = mapped_column(sa.BigInteger)
    offset: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    # the decoded `Upload-Metadata` pairs (`name`, `target`, `column_types`, ...)
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", sa.JSON)
    # the store the chunks are written to (`TRAINYARD_STORE_URL` when the upload was created)
    store_url: Mapped[str] = mapped_column(sa.String(1024))
    # the accepted chunks in order: [start offset, bytes, object name]
    chunks: Mapped[list[list[Any]]] = mapped_column(sa.JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), index=True)
    # while one request makes the dataset (claimed by a conditional UPDATE, so that a retry
    # cannot make it twice); cleared when the store could not be reached
    completing_since: Mapped[datetime | None] = mapped_column(
        sa.DateTime(timezone=True), nullable=True
    )
    # set once the last byte made the dataset, or once the data was refused
    dataset_id: Mapped[str | None] = mapped_column(sa.String(32), nullable=True)
    error: Mapped[str | None] = mapped_column(sa.Text, nullable=True)


class RegisteredModel(Base):
    """A name of an owner's for a series of models (`service.registry`): its versions
    (`ModelVersion`) count from 1; `last_version` is the counter a registration increments."""

    __tablename__ = "registered_models"
    __table_args__ = (sa.UniqueConstraint("owner", "name", name="uq_registered_models_owner_name"),)

    id: Mapped[str] = mapped_column(sa.String(32), primary_key=True, default=new_id)
    owner: Mapped[str] = mapped_column(sa.String(200), default=DEFAULT_OWNER)
    name: Mapped[str] = mapped_column(sa.String(64))
    last_version: Mapped[int] = mapped_column(default=0)
    created_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), default=utcnow)


class ModelVersion(Base):
    """Version `version` of a registered model: a trained model (never deleted while it is)."""

    __tablename__ = "model_versions"
    __table_args__ = (
        sa.UniqueConstraint(
            "registered_model_id", "version", name="uq_model_versions_registered_model_id_version"
        ),
    )

    id: Mapped[str] = mapped_column(sa.String(32), primary_key=True, default=new_id)
    registered_model_id: Mapped[str] = mapped_column(
        sa.ForeignKey("registered_models.id", ondelete="CASCADE")
    )
    version: Mapped[int]
    model_id: Mapped[str] = mapped_column(sa.ForeignKey("models.id"), index=True)
    # the API key that registered it (null: a job's or a sweep's `register_as`)
    key_id: Mapped[str | None] = mapped_column(sa.String(32), nullable=True)
    created_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), default=utcnow)


class ModelAlias(Base):
    """A movable name for one version (`champion` -> 3): moved by one UPDATE."""

    __tablename__ = "model_aliases"
    __table_args__ = (
        sa.UniqueConstraint(
            "registered_model_id", "alias", name="uq_model_aliases_registered_model_id_alias"
        ),
    )

    id: Mapped[str] = mapped_column(sa.String(32), primary_key=True, default=new_id)
    registered_model_id: Mapped[str] = mapped_column(
        sa.ForeignKey("registered_models.id", ondelete="CASCADE")
    )
    alias: Mapped[str] = mapped_column(sa.String(64))
    version: Mapped[int]
    updated_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), default=utcnow)


class AliasMove(Base):
    """One move of an alias (append-only; kept when the alias is deleted): `from_version` null
    when it was created, `to_version` null when it was deleted."""

    __tablename__ = "alias_moves"
    __table_args__ = (
        sa.Index("ix_alias_moves_registered_model_id_alias", "registered_model_id", "alias"),
    )

    seq: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(sa.String(32), unique=True, default=new_id)
    registered_model_id: Mapped[str] = mapped_column(
        sa.ForeignKey("registered_models.id", ondelete="CASCADE")
    )
    alias: Mapped[str] = mapped_column(sa.String(64))
    from_version: Mapped[int | None] = mapped_column(nullable=True)
    to_version: Mapped[int | None] = mapped_column(nullable=True)
    key_id: Mapped[str | None] = mapped_column(sa.String(32), nullable=True)
    at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), default=utcnow)


class AuditEntry(Base):
    """One mutating API request: who (key, owner), what (method, route, action, the resources'
    ids), when and its outcome. Append-only: `service.audit` inserts rows and nothing updates
    them; only the retention sweep (`TRAINYARD_AUDIT_RETENTION_DAYS`, off by default) deletes."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), default=utcnow, index=True)
    owner: Mapped[str] = mapped_column(sa.String(200), index=True)
    key_id: Mapped[str | None] = mapped_column(sa.String(32), index=True)
    method: Mapped[str] = mapped_column(sa.String(10))
    route: Mapped[str] = mapped_column(sa.String(300))
    action: Mapped[str] = mapped_column(sa.String(100), index=True)
    # the route's ids (`{"job_id": ...}`) and a created resource's (`{"id": ...}`)
    resource_ids: Mapped[dict[str, str]] = mapped_column(sa.JSON, default=dict)
    status_code: Mapped[int]
    request_id: Mapped[str | None] = mapped_column(sa.String(200))
