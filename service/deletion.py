"""Deleting datasets, jobs, models and sweeps, and what expired: a tombstone, then a sweep.

A delete is two steps, each idempotent, so one cut short anywhere is finished later and nothing
half-deleted is ever served:

1. **The tombstone** (the API's `DELETE`, or `expire`): one transaction checks the rules, sets
   `deleted_at` on the row and on what goes with it (a job's model, a sweep's trials and their
   models) and records the `dataset.deleted` / `model.deleted` webhook deliveries
   (`service.outbox.enqueue_deleted`). From its commit on, every lookup and list skips the row
   (`deleted_at IS NULL` in each resource's one finder: `find_dataset`, `get_job` /
   `list_jobs`, `trained_models._owned` / `list_models`, `get_sweep` / `list_sweeps`), so the
   API answers `404` for it and everything under it.
2. **The purge** (`purge`, from the workers' maintenance loop): the dataset's Parquet parts are
   removed from the store first, then the SQL rows (models with their weights, a job's epochs,
   jobs, sweeps). A dataset's row goes once no job, sweep or model names it; until then it stays
   as a tombstone of a few hundred bytes (its columns cleared), the models trained on it say
   `dataset_deleted: true`. A store that is down leaves the dataset for the next pass.

The rules (`DELETE` answers `409` when one is broken):

- a dataset used by a queued or running job (a sweep's held trials count): the jobs are named;
- a job or sweep that is queued or running: cancel it first (`POST .../cancel`);
- a job that is a sweep's trial: delete its sweep (a sweep's trials go with it);
- a job, model or sweep whose model is registered (`is_registered`).

Deleting a dataset keeps the jobs and models trained on it (a model carries its preprocessing).
A second `DELETE` of the same id is a `404`: the first one's effect stands, whatever step it is at.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from service import lifecycle, outbox, sweeps
from service.dataset_store import PREDICTIONS, DatasetStore, StoreError
from service.datasets import get_dataset
from service.db import session_scope, utcnow
from service.lifecycle import ACTIVE_STATUSES
from service.problems import ApiError
from service.tables import Dataset, DatasetData, Job, ModelVersion, Sweep, TrainedModel

if TYPE_CHECKING:
    from celery import Celery

log = logging.getLogger(__name__)

#: rows removed per transaction by `purge`
PURGE_BATCH = 200


def is_registered(session: Session, model_id: str) -> bool:
    """Is the model a version in the model registry (`service.registry`)? A registered model,
    its job and its sweep cannot be deleted (`409`) and do not expire."""
    found = session.scalar(
        sa.select(ModelVersion.id).where(ModelVersion.model_id == model_id).limit(1)
    )
    return found is not None


def _refuse_registered(session: Session, model_ids: Sequence[str], what: str) -> None:
    held = [m for m in model_ids if is_registered(session, m)]
    if held:
        raise ApiError(
            409,
            f"{what} cannot be deleted: its model {held[0]} is registered. "
            "Remove it from the registry first.",
            code="model_registered",
        )


def _live_model_ids(session: Session, job_ids: Sequence[str]) -> list[str]:
    if not job_ids:
        return []
    return list(
        session.scalars(
            sa.select(TrainedModel.id).where(
                TrainedModel.job_id.in_(job_ids), TrainedModel.deleted_at.is_(None)
            )
        )
    )


def _tombstone_models(session: Session, model_ids: Sequence[str], now: datetime) -> list[str]:
    """Tombstone models and record their `model.deleted` deliveries; the ids recorded about."""
    if not model_ids:
        return []
    session.execute(
        sa.update(TrainedModel)
        .where(TrainedModel.id.in_(model_ids), TrainedModel.deleted_at.is_(None))
        .values(deleted_at=now)
    )
    for model in session.scalars(sa.select(TrainedModel).where(TrainedModel.id.in_(model_ids))):
        outbox.enqueue_deleted(
            session,
            model.owner,
            "model.deleted",
            model.id,
            {"id": model.id, "job_id": model.job_id, "dataset_id": model.dataset_id},
        )
    return list(model_ids)


def delete_dataset(session: Session, dataset_id: str, owner: str) -> list[str]:
    """Tombstone `owner`'s dataset (flushed; the caller commits, then `publish`es the subjects
    returned). 404 if there is none, 409 naming the queued or running jobs that use it."""
    dataset = get_dataset(session, dataset_id, owner)
    using = list(
        session.scalars(
            sa.select(Job.id)
            .where(
                Job.dataset_id == dataset.id,
                Job.status.in_(ACTIVE_STATUSES),
                Job.deleted_at.is_(None),
            )
            .order_by(Job.created_at, Job.id)
        )
    )
    if using:
        shown = ", ".join(using[:20]) + (f" and {len(using) - 20} more" if len(using) > 20 else "")
        raise ApiError(
            409,
            f"Dataset {dataset.id} is used by {len(using)} queued or running job(s): {shown}. "
            "Cancel them (or wait for them to end) first.",
            {"jobs": shown},
            code="dataset_in_use",
        )
    session.execute(
        sa.update(Dataset)
        .where(Dataset.id == dataset.id, Dataset.deleted_at.is_(None))
        .values(deleted_at=utcnow())
    )
    outbox.enqueue_deleted(
        session, owner, "dataset.deleted", dataset.id, {"id": dataset.id, "name": dataset.name}
    )
    session.flush()
    return [dataset.id]


def _refuse_active(kind: str, row_id: str, status: str) -> None:
    if status in ACTIVE_STATUSES:
        raise ApiError(
            409,
            f"{kind} {row_id} is {status}: cancel it (POST .../cancel) before deleting it.",
            code="still_active",
        )


def delete_job(session: Session, job_id: str, owner: str) -> list[str]:
    """Tombstone `owner`'s job and its model (its epochs go with its row). 404 if none; 409
    while it is queued or running, for a sweep's trial, or when its model is registered."""
    from service.jobs import get_job

    job = get_job(session, job_id, owner)
    _refuse_active("Job", job.id, job.status)
    if job.sweep_id is not None:
        raise ApiError(
            409,
            f"Job {job.id} is a trial of sweep {job.sweep_id}: delete the sweep instead.",
            code="sweep_trial",
        )
    models = _live_model_ids(session, [job.id])
    _refuse_registered(session, models, f"Job {job.id}")
    now = utcnow()
    lifecycle.tombstone(session, now, job_id=job.id)
    subjects = _tombstone_models(session, models, now)
    session.flush()
    return subjects


def delete_model(session: Session, model_id: str, owner: str) -> list[str]:
    """Tombstone `owner`'s model (its job stays, with `model_id` null). 404 if none; 409 when
    it is registered."""
    from service.trained_models import get_model

    model = get_model(session, model_id, owner)
    _refuse_registered(session, [model.id], f"Model {model.id}")
    predicting = list(
        session.scalars(
            sa.select(Job.id).where(
                Job.model_id == model.id,
                Job.status.in_(ACTIVE_STATUSES),
                Job.deleted_at.is_(None),
            )
        )
    )
    if predicting:
        raise ApiError(
            409,
            f"Model {model.id} is used by queued or running batch predictions: "
            f"{', '.join(predicting[:20])}. Cancel them (or wait for them to end) first.",
            {"jobs": ", ".join(predicting[:20])},
            code="model_in_use",
        )
    subjects = _tombstone_models(session, [model.id], utcnow())
    session.flush()
    return subjects


def delete_sweep(session: Session, sweep_id: str, owner: str) -> list[str]:
    """Tombstone `owner`'s sweep, its trials and their models. 404 if none; 409 while it is
    queued or running, or when a trial's model is registered."""
    sweep = sweeps.get_sweep(session, sweep_id, owner)
    _refuse_active("Sweep", sweep.id, sweep.status)
    trials = list(session.scalars(sa.select(Job.id).where(Job.sweep_id == sweep.id)))
    models = _live_model_ids(session, trials)
    _refuse_registered(session, models, f"Sweep {sweep.id}")
    now = utcnow()
    sweeps.tombstone_sweep(session, sweep.id, now)
    lifecycle.tombstone(session, now, sweep_id=sweep.id)
    subjects = _tombstone_models(session, models, now)
    session.flush()
    return subjects


def publish(session: Session, celery: Celery | None, subjects: Sequence[str]) -> None:
    """After the tombstone's commit: send its webhook deliveries (else the workers' scan does)."""
    if celery is not None and subjects:
        outbox.publish_recorded(session, celery, list(subjects))


# -- retention ---------------------------------------------------------------------------------


def default_expiry(retention_days: float, now: datetime | None = None) -> datetime | None:
    """When a new job expires by default (`TRAINYARD_RETENTION_DAYS`; 0: never)."""
    if retention_days <= 0:
        return None
    return (now or utcnow()) + timedelta(days=retention_days)


def expire(
    factory: sessionmaker[Session], celery: Celery | None = None, now: datetime | None = None
) -> list[str]:
    """Tombstone what is past its `expires_at` (datasets, jobs, models), through the same
    rules as a `DELETE`: what one forbids now (a dataset in use, a job still running, a
    registered model, a sweep's trial) is left and tried again next pass. The ids deleted."""
    now = now or utcnow()
    done: list[str] = []
    kinds: list[tuple[Any, Any]] = [(Dataset, delete_dataset), (Job, delete_job)]
    kinds.append((TrainedModel, delete_model))
    for table, delete in kinds:
        with factory() as session:
            due = session.execute(
                sa.select(table.id, table.owner)
                .where(table.expires_at <= now, table.deleted_at.is_(None))
                .limit(PURGE_BATCH)
            ).all()
        for row_id, owner in due:
            with factory() as session:
                try:
                    subjects = delete(session, row_id, owner)
                    session.commit()
                except ApiError as exc:
                    session.rollback()
                    log.info("%s %s expired but stays for now: %s", table.__name__, row_id, exc)
                    continue
                done.append(row_id)
                publish(session, celery, subjects)
    return done


# -- the purge ---------------------------------------------------------------------------------


def _ids(session: Session, query: sa.Select[Any]) -> list[str]:
    return list(session.scalars(query.limit(PURGE_BATCH)))


def purge(factory: sessionmaker[Session]) -> dict[str, int]:
    """Free what tombstoned rows hold: a dataset's parts in the store, then the rows (models,
    jobs with their epochs, sweeps, datasets no row names any more). Idempotent; each batch
    its own transaction. The counts removed."""
    counts = {"models": 0, "jobs": 0, "sweeps": 0, "datasets": 0, "dataset_parts": 0}
    counts["prediction_parts"] = 0
    while True:
        with session_scope(factory) as session:
            # a model registered in a race with its delete stays (tombstoned: unserved)
            registered = sa.select(ModelVersion.id).where(ModelVersion.model_id == TrainedModel.id)
            gone = _ids(
                session,
                sa.select(TrainedModel.id).where(
                    sa.or_(
                        TrainedModel.deleted_at.is_not(None),
                        TrainedModel.job_id.in_(
                            sa.select(Job.id).where(Job.deleted_at.is_not(None))
                        ),
                    ),
                    ~registered.exists(),
                ),
            )
            session.execute(sa.delete(TrainedModel).where(TrainedModel.id.in_(gone)))
        counts["models"] += len(gone)
        if len(gone) < PURGE_BATCH:
            break
    with factory() as session:
        outputs = session.execute(
            sa.select(Job.id, Job.output_location)
            .where(Job.deleted_at.is_not(None), Job.output_location.is_not(None))
            .limit(PURGE_BATCH)
        ).all()
    for job_id, location in outputs:  # a predict job's parts first, then its row
        try:
            store, _ = DatasetStore.at(location, PREDICTIONS)
            store.delete(job_id, PREDICTIONS)  # every attempt's folder
        except (StoreError, ValueError) as exc:
            log.warning("job %s: predictions not deleted yet: %s", job_id, exc)
            continue
        with session_scope(factory) as session:
            lifecycle.forget_output(session, job_id)
        counts["prediction_parts"] += 1
    while True:
        with session_scope(factory) as session:
            has_model = sa.select(TrainedModel.id).where(TrainedModel.job_id == Job.id).exists()
            gone = _ids(
                session,
                sa.select(Job.id).where(
                    Job.deleted_at.is_not(None), Job.output_location.is_(None), ~has_model
                ),
            )
            lifecycle.purge(session, gone)
        counts["jobs"] += len(gone)
        if len(gone) < PURGE_BATCH:
            break
    with session_scope(factory) as session:
        counts["sweeps"] += sweeps.purge_sweeps(session, PURGE_BATCH)
    with factory() as session:
        stored = session.execute(
            sa.select(Dataset.id, Dataset.location)
            .where(Dataset.deleted_at.is_not(None), Dataset.location.is_not(None))
            .limit(PURGE_BATCH)
        ).all()
    for dataset_id, location in stored:
        try:
            store, key = DatasetStore.at(location)
            store.delete(key)
        except (StoreError, ValueError) as exc:
            log.warning("dataset %s: parts not deleted yet: %s", dataset_id, exc)
            continue
        with session_scope(factory) as session:
            session.execute(
                sa.update(Dataset)
                .where(Dataset.id == dataset_id)
                .values(location=None, columns=None, warnings=None, n_bytes=0)
            )
        counts["dataset_parts"] += 1
    with session_scope(factory) as session:
        named = sa.or_(
            sa.select(Job.id).where(Job.dataset_id == Dataset.id).exists(),
            sa.select(Sweep.id).where(Sweep.dataset_id == Dataset.id).exists(),
            sa.select(TrainedModel.id).where(TrainedModel.dataset_id == Dataset.id).exists(),
        )
        gone = _ids(
            session,
            sa.select(Dataset.id).where(
                Dataset.deleted_at.is_not(None), Dataset.location.is_(None), ~named
            ),
        )
        session.execute(sa.delete(DatasetData).where(DatasetData.dataset_id.in_(gone)))
        session.execute(sa.delete(Dataset).where(Dataset.id.in_(gone)))
        counts["datasets"] += len(gone)
    return counts


def vacuum(factory: sessionmaker[Session]) -> None:
    """On SQLite, give the pages freed by the purge back to the file system when the database
    uses `auto_vacuum=INCREMENTAL` (otherwise they are reused by later writes: the file does not
    shrink). Nothing to do on PostgreSQL (its autovacuum reuses the space)."""
    with factory() as session:
        if session.get_bind().dialect.name != "sqlite":
            return
        if session.execute(sa.text("PRAGMA auto_vacuum")).scalar() == 2:
            session.commit()
            # sqlite3's execute() steps a statement once, and this one frees a page per step:
            # executescript runs it to the end (measured: one page per call otherwise)
            session.connection().connection.dbapi_connection.executescript(  # type: ignore[union-attr]
                "PRAGMA incremental_vacuum;"
            )
