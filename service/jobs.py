"""Jobs, the API's view: validate and create training jobs, publish, cancel, look up any job (a
job's JSON is `service.views`, shared with the streams and the webhooks; predict jobs are made
by `service.predictions`).

What a job's state may become, and how, is `service.lifecycle`'s (submit, publish, cancel are
its transitions); this module validates requests and turns the outcomes into API answers.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from celery import Celery
from sqlalchemy.orm import Session

from core.spec import (
    SpecError,
    check_class_weight,
    check_fits,
    check_output_activation,
    check_splits,
    effective_validation_split,
    resolve_spec,
)
from service import lifecycle, outbox, quotas
from service.config import Limits
from service.datasets import find_dataset, new_dataset
from service.db import paginate
from service.ingest import ParsedDataset, parse_json_dataset
from service.lifecycle import FINAL_STATUSES
from service.problems import ApiError, InputError
from service.tables import Job, JobEpoch, is_id
from service.views import serialize_job as serialize_job  # the API's view, shared
from service.views import serialize_jobs as serialize_jobs


def parameter_count(nin: int, layers: list[int]) -> int:
    """Weights and biases of `MLP(nin, layers)`."""
    total, fan_in = 0, nin
    for width in layers:
        total += (fan_in + 1) * width
        fan_in = width
    return total


def check_limits(model: dict[str, Any], training: dict[str, Any], nin: int, limits: Limits) -> None:
    layers = model["layers"]
    if len(layers) > limits.max_layers:
        raise InputError(
            "model.layers", f"has {len(layers)} layers; the limit is {limits.max_layers}"
        )
    if max(layers) > limits.max_width:
        raise InputError(
            "model.layers", f"a layer of width {max(layers)}; the limit is {limits.max_width}"
        )
    n_params = parameter_count(nin, layers)
    if n_params > limits.max_parameters:
        raise InputError(
            "model.layers",
            f"the model would have {n_params} parameters; the limit is {limits.max_parameters}",
        )
    if training["epochs"] > limits.max_epochs:
        raise InputError(
            "training.epochs", f"is {training['epochs']}; the limit is {limits.max_epochs}"
        )


def encoded_width(columns: list[dict[str, Any]], preprocessing: dict[str, Any]) -> int:
    """The network's input width for these dataset columns (at most: one-hot over every level
    of the whole dataset; the training split may see fewer)."""
    onehot = preprocessing["categorical"] == "onehot"
    return sum(
        max(int(c.get("n_levels") or 1), 1) if c["type"] == "categorical" and onehot else 1
        for c in columns
    )


def check_spec(
    model: dict[str, Any],
    training: dict[str, Any],
    *,
    n_samples: int,
    columns: list[dict[str, Any]],
    n_targets: int,
    target_kind: str,
    classes: list[Any] | None,
    limits: Limits,
) -> None:
    """Raise a 422 unless the spec is within the limits, fits the dataset and can train."""
    nin = encoded_width(columns, training["preprocessing"])
    check_limits(model, training, nin, limits)
    try:
        check_fits(training["loss"], model["layers"], target_kind, n_targets, classes)
        check_output_activation(training["loss"], model["output_activation"])
        check_class_weight(training["class_weight"], training["loss"], classes)
        check_splits(training, n_samples)
    except SpecError as exc:
        raise InputError(exc.field, exc.message) from None
    if training["preprocessing"]["missing"] == "error":
        gappy = [c["name"] for c in columns if c.get("missing")]
        if gappy:
            raise InputError(
                "training.preprocessing.missing",
                f'is "error" but the columns {gappy} have missing cells; use "impute"',
            )


def normalized_specs(
    data: dict[str, Any], target_kind: str, n_targets: int, classes: list[Any] | None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The stored model and training specs (`core.spec.resolve_spec`: exactly these keys,
    every default filled, the loss, when not given, picked from the targets)."""
    model, training = resolve_spec(data["model"], data["training"], target_kind, n_targets, classes)
    return dict(model), dict(training)


def check_active_jobs(session: Session, owner: str, limits: Limits) -> None:
    """429 if the owner already has `max_active_jobs` queued or running jobs (a sweep's trial
    counts once its sweep has started it, not while it is held back by `max_parallel`), 413
    if it is over its stored-bytes quota (`service.quotas.check`).

    A check before the insert, not a lock: concurrent submissions may pass it together, so the
    cap can be overshot by the number of requests in flight at that moment.
    """
    quotas.check(session, owner, limits, jobs=True)


def dataset_facts(session: Session, dataset_id: str, owner: str) -> dict[str, Any]:
    """What `check_spec` needs to know of `owner`'s stored dataset (404 naming `dataset_id`)."""
    stored = find_dataset(session, dataset_id, owner)
    if stored is None:
        message = f"no dataset with id {dataset_id!r}"
        raise ApiError(404, message, {"dataset_id": message})
    return {
        "n_samples": stored.n_samples,
        "columns": stored.columns
        or [{"name": f"x{j}", "type": "numeric"} for j in range(stored.n_features)],
        "n_targets": stored.n_targets,
        "target_kind": stored.target_kind,
        "classes": stored.classes,
    }


def create_job(
    session: Session, data: dict[str, Any], limits: Limits, owner: str, store_url: str
) -> Job:
    """Validate a job request (and its inline dataset, stored in the dataset store at
    `store_url`) and add it as `queued` for `owner` (flushed; the caller commits). A
    `dataset_id` must name one of the owner's datasets."""
    check_active_jobs(session, owner, limits)
    parsed: ParsedDataset | None = None
    if "dataset" in data:
        parsed = parse_json_dataset(data["dataset"], limits, prefix="dataset.")
        facts = {
            "n_samples": parsed.n_samples,
            "columns": parsed.table.describe(),
            "n_targets": parsed.n_targets,
            "target_kind": parsed.target_kind,
            "classes": parsed.classes,
        }
    else:
        facts = dataset_facts(session, data["dataset_id"], owner)
    model, training = normalized_specs(
        data, facts["target_kind"], facts["n_targets"], facts["classes"]
    )
    check_spec(model, training, limits=limits, **facts)
    # early stopping with no split of its own validates on EARLY_STOPPING_SPLIT: say so
    training["validation_split"] = effective_validation_split(training)

    if parsed is not None:
        dataset_id = new_dataset(session, parsed, owner, store_url).id
    else:
        dataset_id = data["dataset_id"]
    job = lifecycle.submit(
        session,
        owner=owner,
        dataset_id=dataset_id,
        model_spec=model,
        training_spec=training,
        name=data.get("name"),
        tags=data.get("tags"),
        expires_at=data.get("expires_at"),
        register_as=data.get("register_as"),
    )
    return job


def publish(session: Session, celery: Celery, job_id: str, kind: str = "train") -> bool:
    """Send the job's message (to the task of its `kind`) and record when; False (logged) if
    the broker is unreachable."""
    return lifecycle.publish(session, celery, job_id, kind)


def get_job(session: Session, job_id: str, owner: str) -> Job:
    job = None
    if is_id(job_id):
        job = session.scalars(
            sa.select(Job).where(Job.id == job_id, Job.owner == owner, Job.deleted_at.is_(None))
        ).one_or_none()
    if job is None:
        raise ApiError(404, f"No job with id {job_id!r}.")
    return job


def cancel_job(session: Session, job_id: str, owner: str, celery: Celery | None = None) -> Job:
    """Cancel a queued job now, or ask a running one to stop (`lifecycle.cancel`); 409 once it
    is final. Another owner's job is a 404. A queued job's `job.cancelled` deliveries, recorded
    in the cancel's transaction, are published once it is committed, given `celery` (else the
    workers' scan publishes them); a running job's are its worker's, when it stops."""
    if not is_id(job_id):
        raise ApiError(404, f"No job with id {job_id!r}.")
    result = lifecycle.cancel(session, job_id, owner)
    if not result.done:
        if result.status is None:
            raise ApiError(404, f"No job with id {job_id!r}.")
        if result.status in FINAL_STATUSES:
            raise ApiError(409, f"Job {job_id} is already {result.status}.")
        raise ApiError(409, f"Job {job_id} changed state while being cancelled; try again.")
    if celery is not None:
        outbox.publish_recorded(session, celery, [job_id])
    session.expire_all()
    return get_job(session, job_id, owner)


def label_job(session: Session, job_id: str, owner: str, data: dict[str, Any]) -> Job:
    """`PATCH /jobs/{id}`: set the `name` and/or `tags` given in `data` (`tags` replaces them
    all; null clears); another owner's job is a 404."""
    if not is_id(job_id) or not lifecycle.label(
        session,
        job_id,
        owner,
        name=data.get("name"),
        tags=data.get("tags"),
        fields=frozenset(data) & {"name", "tags", "expires_at"},
        expires_at=data.get("expires_at"),
    ):
        raise ApiError(404, f"No job with id {job_id!r}.")
    session.expire_all()
    return get_job(session, job_id, owner)


def tag_filters(column: Any, tags: list[str]) -> list[sa.ColumnElement[bool]]:
    """`key:value` filters on a JSON `tags` column (every one must match)."""
    where = []
    for tag in tags:
        key, _, value = tag.partition(":")
        where.append(column[key].as_string() == value)
    return where


def list_jobs(
    session: Session,
    owner: str,
    page: int,
    page_size: int,
    status: str | None = None,
    *,
    tags: list[str] | None = None,
    dataset_id: str | None = None,
    sweep_id: str | None = None,
    kind: str | None = None,
) -> tuple[list[Job], int]:
    """A page of `owner`'s jobs, newest first (a sweep's trials in trial order), filtered by
    `status`, `tags` (`key:value`, all of them), `dataset_id`, `sweep_id` and `kind`."""
    where = [Job.owner == owner, Job.deleted_at.is_(None), *tag_filters(Job.tags, tags or [])]
    if status:
        where.append(Job.status == status)
    if kind:
        where.append(Job.kind == kind)
    if dataset_id is not None:
        where.append(Job.dataset_id == dataset_id)
    if sweep_id is not None:
        where.append(Job.sweep_id == sweep_id)
    order = (
        (Job.trial_index, Job.id)
        if sweep_id is not None
        else (Job.created_at.desc(), Job.id.desc())
    )
    return paginate(session, sa.select(Job).where(*where).order_by(*order), page, page_size)


def history_since(session: Session, job_id: str, since_epoch: int) -> list[dict[str, Any]]:
    """The job's epochs after `since_epoch`: `{"epoch", "loss", "val_loss"}` each."""
    rows = session.execute(
        sa.select(JobEpoch.epoch, JobEpoch.loss, JobEpoch.val_loss)
        .where(JobEpoch.job_id == job_id, JobEpoch.epoch > since_epoch)
        .order_by(JobEpoch.epoch)
    )
    return [{"epoch": r.epoch, "loss": r.loss, "val_loss": r.val_loss} for r in rows]
