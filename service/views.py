"""The API's view of jobs and sweeps: what `GET /jobs/{id}` and `GET /sweeps/{id}` give, read
from the store.

One view for every reader: the API (`service.jobs`, `service.sweeps`), the live streams
(`service.events`, `service.sweep_events`) and the webhooks' events (`service.webhooks`, whose
bodies `service.outbox` builds inside the lifecycle's transactions). It reads only and imports
the store's tables and `core` alone, so the lifecycle, which records a job's events, never
imports (even through the outbox) the modules that call it.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from core.sweep import Trial, best_trial, metric_value
from service.db import iso_utc
from service.tables import JOB_STATUSES, Job, JobEpoch, Sweep, TrainedModel

__all__ = [
    "download_url",
    "serialize_job",
    "serialize_jobs",
    "serialize_sweep",
    "serialize_sweeps",
    "trials_of",
]

#: where a predict job's predictions are downloaded (`service.api.predictions`)
PREDICTIONS_DATA = "/api/v1/predictions/{job_id}/data"


def download_url(job_id: str) -> str:
    """The download of a predict job's predictions (usable once it succeeded)."""
    return PREDICTIONS_DATA.format(job_id=job_id)


def _import_view(job: Job) -> dict[str, Any]:
    """An import job: its source and options, its progress (bytes or rows), the dataset it made
    once succeeded (`dataset_id`; no training fields)."""
    options = dict(job.import_options or {})
    unit = options.pop("unit", "bytes")
    return {
        "id": job.id,
        "kind": job.kind,
        "name": job.name,
        "tags": job.tags or {},
        "status": job.status,
        "source": job.source,
        "options": options,
        "dataset_id": job.dataset_id,
        "progress": {"done": job.rows_done or 0, "total": job.rows_total, "unit": unit},
        "stop_reason": job.status if job.status in ("cancelled", "failed") else None,
        "error": job.error,
        "attempts": job.attempts,
        "cancel_requested": job.cancel_requested,
        "created_at": iso_utc(job.created_at),
        "started_at": iso_utc(job.started_at),
        "finished_at": iso_utc(job.finished_at),
    }


def _predict_view(job: Job) -> dict[str, Any]:
    """A predict job: its model and dataset, its rows done, its output once succeeded (no
    training fields)."""
    return {
        "id": job.id,
        "kind": job.kind,
        "name": job.name,
        "tags": job.tags or {},
        "status": job.status,
        "dataset_id": job.dataset_id,
        "model_id": job.model_id,
        "progress": {"rows_done": job.rows_done or 0, "rows_total": job.rows_total},
        "result": None
        if job.status != "succeeded"
        else {
            "rows": job.rows_done,
            "bytes": job.output_bytes,
            "location": job.output_location,
        },
        "download_url": download_url(job.id),
        "stop_reason": job.status if job.status in ("cancelled", "failed") else None,
        "error": job.error,
        "attempts": job.attempts,
        "cancel_requested": job.cancel_requested,
        "created_at": iso_utc(job.created_at),
        "started_at": iso_utc(job.started_at),
        "finished_at": iso_utc(job.finished_at),
    }


# -- jobs ----------------------------------------------------------------------------------------


def serialize_jobs(
    session: Session, jobs: list[Job], *, history: bool = True
) -> list[dict[str, Any]]:
    """The API view of jobs, with their model id and (`history`) their loss histories; two
    queries in all. Without `history` (`GET /jobs` unless `include=history`) the histories are
    left out and only each job's last epoch is read (`progress.loss`).

    The job rows were read before their epochs: an epoch committed in between (a worker
    training right now) is left out, so a job never shows more history than its
    `progress.epoch` (the row is the state the view describes)."""
    ids = [job.id for job in jobs]
    epoch_of = {job.id: job.epoch or 0 for job in jobs}
    losses: dict[str, list[float]] = {i: [] for i in ids}
    val_losses: dict[str, list[float]] = {i: [] for i in ids}
    last_loss: dict[str, float] = {}
    model_ids: dict[str, str] = {}
    if ids:
        if history:
            # plain rows, not ORM objects: a poll of a long job reads thousands of them
            for job_id, epoch, loss, val_loss in session.execute(
                sa.select(JobEpoch.job_id, JobEpoch.epoch, JobEpoch.loss, JobEpoch.val_loss)
                .where(JobEpoch.job_id.in_(ids))
                .order_by(JobEpoch.job_id, JobEpoch.epoch)
            ):
                if epoch > epoch_of[job_id]:
                    continue
                losses[job_id].append(loss)
                if val_loss is not None:
                    val_losses[job_id].append(val_loss)
            last_loss = {i: rows[-1] for i, rows in losses.items() if rows}
        elif caps := [
            sa.and_(JobEpoch.job_id == job_id, JobEpoch.epoch <= epoch)
            for job_id, epoch in epoch_of.items()
            if epoch > 0
        ]:  # one page of jobs at most
            latest = (
                sa.select(JobEpoch.job_id, sa.func.max(JobEpoch.epoch).label("epoch"))
                .where(sa.or_(*caps))
                .group_by(JobEpoch.job_id)
                .subquery()
            )
            last_loss = {
                row.job_id: row.loss
                for row in session.execute(
                    sa.select(JobEpoch.job_id, JobEpoch.loss).join(
                        latest,
                        sa.and_(
                            JobEpoch.job_id == latest.c.job_id, JobEpoch.epoch == latest.c.epoch
                        ),
                    )
                )
            }
        for job_id, model_id in session.execute(
            sa.select(TrainedModel.job_id, TrainedModel.id).where(
                TrainedModel.job_id.in_(ids), TrainedModel.deleted_at.is_(None)
            )
        ):
            model_ids[job_id] = model_id
    out = []
    for job in jobs:
        if job.kind == "predict":
            out.append(_predict_view(job))
            continue
        if job.kind == "import":
            out.append(_import_view(job))
            continue
        item: dict[str, Any] = {
            "id": job.id,
            "kind": job.kind,
            "name": job.name,
            "tags": job.tags or {},
            "register_as": job.register_as,
            "status": job.status,
            "dataset_id": job.dataset_id,
            "sweep_id": job.sweep_id,
            "params": job.params,
            "model": job.model_spec,
            "training": job.training_spec,
            "progress": {
                "epoch": job.epoch,
                "epochs": job.epochs,
                "loss": last_loss.get(job.id),
            },
        }
        if history:
            item["loss_history"] = losses[job.id]
            item["val_loss_history"] = val_losses[job.id]
        item.update(
            {
                "metrics": job.metrics or {},
                "evaluation": job.evaluation,
                "best_epoch": job.best_epoch,
                "stopped_epoch": job.stopped_epoch,
                "stop_reason": job.stop_reason
                or (job.status if job.status in ("cancelled", "failed") else None),
                "error": job.error,
                "model_id": model_ids.get(job.id),
                "attempts": job.attempts,
                "cancel_requested": job.cancel_requested,
                "created_at": iso_utc(job.created_at),
                "started_at": iso_utc(job.started_at),
                "finished_at": iso_utc(job.finished_at),
                "expires_at": iso_utc(job.expires_at),
            }
        )
        out.append(item)
    return out


def serialize_job(session: Session, job: Job) -> dict[str, Any]:
    return serialize_jobs(session, [job])[0]


# -- sweeps --------------------------------------------------------------------------------------


def trials_of(session: Session, sweeps: list[Sweep]) -> dict[str, list[Trial]]:
    """Each sweep's trials, in trial order (one query)."""
    out: dict[str, list[Trial]] = {s.id: [] for s in sweeps}
    if not sweeps:
        return out
    names = {s.id: s.metric["name"] for s in sweeps}
    rows = session.execute(
        sa.select(
            Job.id,
            Job.sweep_id,
            Job.trial_index,
            Job.params,
            Job.status,
            Job.epoch,
            Job.epochs,
            Job.stop_reason,
            Job.metrics,
            Job.evaluation,
            TrainedModel.id.label("model_id"),
        )
        .outerjoin(
            TrainedModel,
            sa.and_(TrainedModel.job_id == Job.id, TrainedModel.deleted_at.is_(None)),
        )
        .where(Job.sweep_id.in_(list(out)))
        .order_by(Job.sweep_id, Job.trial_index)
    )
    for r in rows:
        value = (
            metric_value(names[r.sweep_id], r.metrics, r.evaluation)
            if r.status == "succeeded"
            else None
        )
        out[r.sweep_id].append(
            Trial(
                job_id=r.id,
                index=r.trial_index,
                params=r.params or {},
                status=r.status,
                epoch=r.epoch,
                epochs=r.epochs,
                stop_reason=r.stop_reason
                or (r.status if r.status in ("cancelled", "failed") else None),
                metric_value=value,
                model_id=r.model_id,
            )
        )
    return out


def serialize_sweeps(
    session: Session, sweeps: list[Sweep], with_trials: bool = True
) -> list[dict[str, Any]]:
    """The API view of sweeps: progress, best and (`with_trials`) every trial."""
    trials = trials_of(session, sweeps)
    out = []
    for s in sweeps:
        mine = trials[s.id]
        progress = {"trials": len(mine), **dict.fromkeys(JOB_STATUSES, 0)}
        for t in mine:
            progress[t.status] += 1
        best = best_trial(mine, s.metric["goal"])
        item: dict[str, Any] = {
            "id": s.id,
            "name": s.name,
            "tags": s.tags or {},
            "register_as": s.register_as,
            "status": s.status,
            "dataset_id": s.dataset_id,
            "method": s.method,
            "base": s.base,
            "parameters": s.parameters,
            "metric": s.metric,
            "max_trials": s.max_trials,
            "max_parallel": s.max_parallel,
            "seed": s.seed,
            "early_termination": s.early_termination,
            "progress": progress,
            "best": None
            if best is None
            else {
                "job_id": best.job_id,
                "model_id": best.model_id,
                "params": best.params,
                "metric_value": best.metric_value,
            },
            "cancel_requested": s.cancel_requested,
            "created_at": iso_utc(s.created_at),
            "started_at": iso_utc(s.started_at),
            "finished_at": iso_utc(s.finished_at),
        }
        if with_trials:
            item["trials"] = [
                {
                    "job_id": t.job_id,
                    "index": t.index,
                    "params": t.params,
                    "status": t.status,
                    "metric_value": t.metric_value,
                    "epoch": t.epoch,
                    "epochs": t.epochs,
                    "stop_reason": t.stop_reason,
                    "model_id": t.model_id,
                }
                for t in mine
            ]
        out.append(item)
    return out


def serialize_sweep(session: Session, sweep: Sweep) -> dict[str, Any]:
    return serialize_sweeps(session, [sweep])[0]
