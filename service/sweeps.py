"""Hyperparameter sweeps: one spec, the values to try, and the life of the trials that try them.

The search spaces, their expansion into trials, the metrics, the choice of the best trial and
the median rule are `core.sweep`'s (no framework); this module validates a request with the
job's schemas, stores the sweep and schedules its trials.

A sweep's trials are ordinary jobs (`Job.sweep_id`, `trial_index`, `params`), all made, each
validated as `POST /jobs` would, when the sweep is submitted. A trial is `held` (queued, never
published, claimed by no delivery) until its sweep *starts* it within `max_parallel`; from then
on it lives as every job does (`service.lifecycle`). This module writes the `sweeps` table
alone and a trial's row never: `lifecycle.submit`, `start_trials`, `send_trials` and
`cancel_trials` do, when this module says so. The sweep's own state::

    submit ──► queued ── a trial starts ──► running ── its last trial ends ──► succeeded (one
               │         (mark_running)       │          (advance)               succeeded) or
               │                              │                                  failed (none)
               └── cancel ──► cancelled ◄─────┘ cancel: at once when no trial runs, else when
                                                the running ones stopped (advance)

    trial:  held ── advance (a free slot) ──► queued, published ── claim ──► running ── ...
              └──── cancel (the sweep's) ──► cancelled

======================  ===============================  ======================================
function                transition                       who calls it
======================  ===============================  ======================================
`create_sweep`          (new) -> queued, its trials      API (`POST /sweeps`)
                        held (`lifecycle.submit`)
`advance`               trials held -> queued (as many   API after the submit; the task after
                        as `max_parallel` and the        each trial ends; maintenance
                        owner's `max_active_jobs` let),  (`advance_all`) for a step a lost
                        published; the sweep -> final    worker or broker never took
                        once every trial is (the best
                        model registered under
                        `register_as` when succeeded)
`mark_running`          queued -> running                the task, when a trial starts
`cancel_sweep`          held and queued trials ->        API (`POST /sweeps/{id}/cancel`)
                        cancelled, running ones get
                        the cancel flag; the sweep ->
                        cancelled (or once they stop)
`label_sweep`           any: `name`, `tags`              API (`PATCH /sweeps/{id}`)
`tombstone_sweep`       a final sweep -> deleted         `service.deletion` (API `DELETE`)
                        (`deleted_at`)
`purge_sweeps`          deleted sweeps without trials    `service.deletion.purge` (maintenance)
                        -> removed
======================  ===============================  ======================================

The rules:

- The SQL store is the only truth: a sweep's progress is its trials' rows. Nothing in the API
  process trains or waits; each trial's end starts the next one in the worker that ran it, and
  every worker's maintenance loop advances every unfinished sweep, so a step that a killed
  worker or a restarted Redis lost is taken again.
- `advance` first UPDATEs the sweep's row (a row lock on PostgreSQL, the write lock on SQLite),
  so two workers advancing one sweep at once count its running trials one after the other and
  never start more than `max_parallel`. Starting a trial is a conditional UPDATE (`held` ->
  not held), and a claim takes only an unheld queued trial: no trial starts twice.
- `early_termination` (`median`): at each epoch from `min_epochs` on, a trial whose best
  validation loss so far (the training loss without a validation split) is worse than the
  median of the other trials' at the same epoch (at least `min_trials` of them) stops; the task
  ends it `cancelled` with `stop_reason` `early_termination` (`lifecycle.cancel_attempt`).
- `best`: the succeeded trial with the best metric (NaN or missing values never count; ties go
  to the first trial); failed and cancelled trials are never best. It is read from the trials
  each time, so it is final once they are.
"""

from __future__ import annotations

import logging
import math
import secrets
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from marshmallow import Schema, ValidationError, fields
from sqlalchemy.orm import Session, sessionmaker

from core import sweep as core_sweep
from core.spec import effective_validation_split
from core.sweep import (
    SweepError,
    describe_trial,
    field_of,
    final_status,
    free_slots,
    median_rule,
    median_rule_due,
)
from service import lifecycle, outbox, registry
from service.config import Limits, Settings
from service.db import paginate, session_scope, utcnow
from service.jobs import check_active_jobs, check_spec, dataset_facts, normalized_specs, tag_filters
from service.lifecycle import FINAL_STATUSES
from service.problems import ApiError, InputError, flatten_messages
from service.schemas import JobInSchema, ModelSpecSchema, TrainingSpecSchema
from service.tables import Job, JobEpoch, Sweep, is_id
from service.views import serialize_sweep as serialize_sweep  # the API's view, shared
from service.views import serialize_sweeps as serialize_sweeps
from service.views import trials_of as trials_of

if TYPE_CHECKING:
    from celery import Celery

log = logging.getLogger(__name__)

ACTIVE = ("queued", "running")


@contextmanager
def _as_input_error() -> Iterator[None]:
    """A `core.sweep.SweepError` is the request's fault: a 422 naming its field."""
    try:
        yield
    except SweepError as exc:
        raise InputError(exc.field, exc.message) from None


# -- parameters and expansion (the search spaces themselves are `core.sweep`'s) ----------------

_ROOTS: dict[str, type[Schema]] = {"model": ModelSpecSchema, "training": TrainingSpecSchema}


def is_spec_path(path: str) -> bool:
    """Is `path` (`training.learning_rate`, `training.early_stopping.patience`) a field of a
    job's spec?"""
    root, _, rest = path.partition(".")
    if root not in _ROOTS or not rest:
        return False
    schema: Schema = _ROOTS[root]()
    parts = rest.split(".")
    for i, part in enumerate(parts):
        field = schema.fields.get(part)
        if field is None:
            return False
        if i < len(parts) - 1:
            if not isinstance(field, fields.Nested):
                return False
            schema = field.schema
    return True


def check_parameters(parameters: Mapping[str, Any], method: str) -> dict[str, dict[str, Any]]:
    """The `parameters` of a sweep request, checked (422 naming `parameters.<path>`)."""
    with _as_input_error():
        return core_sweep.check_parameters(parameters, method, is_spec_path)


@dataclass(frozen=True)
class TrialSpec:
    params: dict[str, Any]
    model: dict[str, Any]
    training: dict[str, Any]
    name: str | None
    tags: dict[str, str] | None


def check_trial(
    index: int,
    n: int,
    base: Mapping[str, Any],
    params: Mapping[str, Any],
    dataset_id: str,
    facts: Mapping[str, Any],
    limits: Limits,
) -> TrialSpec:
    """One trial's spec, validated as `POST /jobs` validates a job: a 422 names the sweep's
    field (`parameters.<path>` when a swept value is at fault, else `base.<path>`)."""
    body = {**core_sweep.apply(base, params), "dataset_id": dataset_id}
    try:
        data = JobInSchema().load(body)
    except ValidationError as exc:
        found = flatten_messages(exc.messages)
        path, text = next(iter(found.items()))
        raise InputError(
            field_of(path, params), f"{describe_trial(index, n, params)}: {text}"
        ) from None
    model, training = normalized_specs(
        data, facts["target_kind"], facts["n_targets"], facts["classes"]
    )
    try:
        check_spec(model, training, limits=limits, **facts)
    except ApiError as exc:
        path, text = next(iter((exc.fields or {"base": exc.message}).items()))
        raise InputError(
            field_of(path, params), f"{describe_trial(index, n, params)}: {text}"
        ) from None
    training["validation_split"] = effective_validation_split(training)
    return TrialSpec(dict(params), model, training, data.get("name"), data.get("tags"))


def resolve_metric(metric: Mapping[str, Any], trials: list[TrialSpec]) -> dict[str, str]:
    """`{"name", "goal"}` of the sweep (`core.sweep.resolve_metric`; 422 naming
    `metric.name`)."""
    with _as_input_error():
        return core_sweep.resolve_metric(metric, [t.training for t in trials])


# -- the API side (the request's Session) ------------------------------------------------------


def create_sweep(session: Session, data: dict[str, Any], limits: Limits, owner: str) -> Sweep:
    """Validate a sweep request, expand it and check every trial as a job; add the sweep
    `queued` and its trials held (flushed; the caller commits, then calls `advance`)."""
    check_active_jobs(session, owner, limits)
    base = data["base"]
    for key in base:
        if key not in ("model", "training", "name", "tags"):
            top = ("dataset_id", "dataset", "register_as")
            where = "the top level" if key in top else "a job request"
            raise InputError(f"base.{key}", f"is not a field of base (give it at {where})")
    facts = dataset_facts(session, data["dataset_id"], owner)
    method = data["method"]
    parameters = check_parameters(data["parameters"], method)
    seed = data.get("seed")
    if method == "random" and seed is None:
        seed = secrets.randbelow(2**31)
    with _as_input_error():
        assignments = core_sweep.expand(
            method, parameters, data.get("max_trials"), seed, limits.max_sweep_trials
        )
    n = len(assignments)
    trials = [
        check_trial(i, n, base, params, data["dataset_id"], facts, limits)
        for i, params in enumerate(assignments)
    ]
    metric = resolve_metric(data.get("metric") or {}, trials)
    tags = data.get("tags")
    sweep = Sweep(
        owner=owner,
        name=data.get("name"),
        tags=dict(tags) if tags else None,
        status="queued",
        dataset_id=data["dataset_id"],
        base=base,
        method=method,
        parameters=parameters,
        metric=metric,
        max_trials=data.get("max_trials"),
        max_parallel=data.get("max_parallel"),
        seed=seed,
        early_termination=data.get("early_termination"),
        n_trials=n,
        register_as=data.get("register_as"),
    )
    session.add(sweep)
    session.flush()
    for i, trial in enumerate(trials):
        lifecycle.submit(
            session,
            owner=owner,
            dataset_id=data["dataset_id"],
            model_spec=trial.model,
            training_spec=trial.training,
            name=trial.name,
            tags={**(trial.tags or {}), **(tags or {})} or None,
            trial={"sweep_id": sweep.id, "trial_index": i, "params": trial.params},
        )
    return sweep


def get_sweep(session: Session, sweep_id: str, owner: str) -> Sweep:
    sweep = None
    if is_id(sweep_id):
        sweep = session.scalars(
            sa.select(Sweep).where(
                Sweep.id == sweep_id, Sweep.owner == owner, Sweep.deleted_at.is_(None)
            )
        ).one_or_none()
    if sweep is None:
        raise ApiError(404, f"No sweep with id {sweep_id!r}.")
    return sweep


def list_sweeps(
    session: Session,
    owner: str,
    page: int,
    page_size: int,
    status: str | None = None,
    tags: list[str] | None = None,
) -> tuple[list[Sweep], int]:
    where = [Sweep.owner == owner, Sweep.deleted_at.is_(None), *tag_filters(Sweep.tags, tags or [])]
    if status:
        where.append(Sweep.status == status)
    query = sa.select(Sweep).where(*where).order_by(Sweep.created_at.desc(), Sweep.id.desc())
    return paginate(session, query, page, page_size)


def cancel_sweep(
    session: Session, sweep_id: str, owner: str, celery: Celery | None = None
) -> Sweep:
    """Cancel `owner`'s sweep: its held and queued trials never start, its running ones stop at
    their next epoch; the sweep is `cancelled` now if none runs, else once they stopped
    (`advance`). 409 once final; another owner's sweep is a 404. Commits; the webhook
    deliveries of what ended (recorded in that transaction) are published then, given `celery`
    (else the workers' scan publishes them)."""
    if not is_id(sweep_id):
        raise ApiError(404, f"No sweep with id {sweep_id!r}.")
    now = utcnow()
    flagged = session.execute(
        sa.update(Sweep)
        .where(Sweep.id == sweep_id, Sweep.owner == owner, Sweep.status.in_(ACTIVE))
        .values(cancel_requested=True)
    )
    if flagged.rowcount == 0:
        session.rollback()
        status = session.scalar(
            sa.select(Sweep.status).where(Sweep.id == sweep_id, Sweep.owner == owner)
        )
        if status is None:
            raise ApiError(404, f"No sweep with id {sweep_id!r}.")
        raise ApiError(409, f"Sweep {sweep_id} is already {status}.")
    # the sweep's row is locked until the commit: no `advance` starts a trial meanwhile
    running = lifecycle.cancel_trials(session, sweep_id, now)  # records the trials' events
    if not running:
        session.execute(
            sa.update(Sweep)
            .where(Sweep.id == sweep_id, Sweep.status.in_(ACTIVE))
            .values(status="cancelled", finished_at=now)
        )
        outbox.enqueue_for_sweep(session, sweep_id)  # `sweep.finished`, in this transaction
    session.commit()
    if celery is not None:
        trials = session.scalars(sa.select(Job.id).where(Job.sweep_id == sweep_id)).all()
        outbox.publish_recorded(session, celery, [sweep_id, *trials])
    session.expire_all()
    return get_sweep(session, sweep_id, owner)


def label_sweep(session: Session, sweep_id: str, owner: str, data: Mapping[str, Any]) -> Sweep:
    """`PATCH /sweeps/{id}`: set `name` and/or `tags` (`tags` replaces them all)."""
    sweep = get_sweep(session, sweep_id, owner)
    values: dict[str, Any] = {}
    if "name" in data:
        values["name"] = data["name"]
    if "tags" in data:
        values["tags"] = dict(data["tags"]) if data["tags"] else None
    session.execute(sa.update(Sweep).where(Sweep.id == sweep.id).values(**values))
    session.commit()
    session.expire_all()
    return get_sweep(session, sweep_id, owner)


def tombstone_sweep(session: Session, sweep_id: str, now: datetime) -> None:
    """Mark the sweep deleted (`service.deletion` checked that it has ended; its trials are
    tombstoned through `service.lifecycle.tombstone`)."""
    session.execute(
        sa.update(Sweep)
        .where(Sweep.id == sweep_id, Sweep.deleted_at.is_(None))
        .values(deleted_at=now)
    )


def purge_sweeps(session: Session, limit: int) -> int:
    """Remove up to `limit` deleted sweeps whose trials' rows are gone; how many."""
    trials = sa.select(Job.id).where(Job.sweep_id == Sweep.id).exists()
    gone = list(
        session.scalars(
            sa.select(Sweep.id).where(Sweep.deleted_at.is_not(None), ~trials).limit(limit)
        )
    )
    session.execute(sa.delete(Sweep).where(Sweep.id.in_(gone)))
    return len(gone)


# -- scheduling (any process with a sessionmaker and the Celery app) ---------------------------


def advance(
    factory: sessionmaker[Session], celery: Celery, sweep_id: str, limits: Limits
) -> list[str]:
    """Start as many held trials as the sweep's `max_parallel` and the owner's
    `max_active_jobs` allow (published; a publish that fails leaves the trial to `reconcile`),
    and end the sweep once every trial has ended (its `sweep.finished` deliveries recorded in
    that transaction, published after it). Returns the ids of the trials started."""
    now = utcnow()
    ids: list[str] = []
    with session_scope(factory) as session:
        # The lock: concurrent advances of this sweep wait here for each other's commit.
        row = session.execute(
            sa.update(Sweep)
            .where(Sweep.id == sweep_id, Sweep.status.in_(ACTIVE))
            .values(status=Sweep.status)
            .returning(
                Sweep.owner,
                Sweep.status,
                Sweep.max_parallel,
                Sweep.cancel_requested,
                Sweep.register_as,
            )
        ).first()
        if row is None:
            return []
        counts: dict[tuple[str, bool], int] = {
            (status, bool(held)): int(n)
            for status, held, n in session.execute(
                sa.select(Job.status, Job.held, sa.func.count())
                .where(Job.sweep_id == sweep_id)
                .group_by(Job.status, Job.held)
            )
        }
        held = counts.get(("queued", True), 0)
        active = counts.get(("queued", False), 0) + sum(
            n for (status, _), n in counts.items() if status == "running"
        )
        ended = held == 0 and active == 0
        if ended:
            succeeded = sum(n for (status, _), n in counts.items() if status == "succeeded")
            final = final_status(succeeded, bool(row.cancel_requested))
            session.execute(
                sa.update(Sweep)
                .where(Sweep.id == sweep_id)
                .values(
                    status=final,
                    finished_at=now,
                    started_at=sa.func.coalesce(Sweep.started_at, now),
                )
            )
            if final == "succeeded" and row.register_as:
                _register_best(session, sweep_id, row.owner, row.register_as)
            outbox.enqueue_for_sweep(session, sweep_id)  # `sweep.finished`, in this transaction
            log.info("sweep %s: %s", sweep_id, final)
        else:
            started_any = active or any(s in FINAL_STATUSES for s, _ in counts)
            if row.status == "queued" and started_any:
                session.execute(
                    sa.update(Sweep)
                    .where(Sweep.id == sweep_id, Sweep.status == "queued")
                    .values(status="running", started_at=now)
                )
            if not row.cancel_requested and held > 0:
                free = _free_slots(session, row.owner, held, active, row.max_parallel, limits)
                if free > 0:
                    ids = lifecycle.start_trials(session, sweep_id, free, now)
    if ended:
        outbox.publish_recorded(factory, celery, [sweep_id])
    elif ids:
        # the broker may be down: `reconcile` publishes the trials it could not once it is back
        lifecycle.send_trials(factory, celery, sweep_id, ids, now)
    return ids


def _register_best(session: Session, sweep_id: str, owner: str, name: str) -> None:
    """Register the best trial's model as `name`'s next version (in the transaction that ends
    the sweep: the sweep's success and the version commit together)."""
    sweep = session.get(Sweep, sweep_id)
    assert sweep is not None
    best = core_sweep.best_trial(trials_of(session, [sweep])[sweep_id], sweep.metric["goal"])
    if best is not None and best.model_id is not None:
        registry.register_version(session, owner, name, best.model_id)


def _free_slots(
    session: Session, owner: str, held: int, active: int, max_parallel: int | None, limits: Limits
) -> int:
    """How many held trials may start now: within `max_parallel` and the owner's
    `max_active_jobs`."""
    owner_active = session.scalar(
        sa.select(sa.func.count())
        .select_from(Job)
        .where(Job.owner == owner, Job.status.in_(ACTIVE), Job.held.is_(False))
    )
    return free_slots(held, active, max_parallel, limits.max_active_jobs - int(owner_active or 0))


def advance_all(factory: sessionmaker[Session], celery: Celery, settings: Settings) -> None:
    """`advance` every unfinished sweep (the maintenance loop: steps a lost worker or a
    restarted broker never took)."""
    with session_scope(factory) as session:
        ids = list(session.scalars(sa.select(Sweep.id).where(Sweep.status.in_(ACTIVE))))
    for sweep_id in ids:
        try:
            advance(factory, celery, sweep_id, settings.limits)
        except Exception:
            log.warning("could not advance sweep %s", sweep_id, exc_info=True)


def mark_running(factory: sessionmaker[Session], sweep_id: str) -> None:
    """A trial of the sweep started: `queued` -> `running`."""
    with session_scope(factory) as session:
        session.execute(
            sa.update(Sweep)
            .where(Sweep.id == sweep_id, Sweep.status == "queued")
            .values(status="running", started_at=utcnow())
        )


def trial_of(
    factory: sessionmaker[Session], job_id: str
) -> tuple[str, dict[str, Any] | None] | None:
    """(sweep id, its `early_termination`) when the job is a trial, else None."""
    with session_scope(factory) as session:
        row = session.execute(
            sa.select(Job.sweep_id, Sweep.early_termination)
            .join(Sweep, Sweep.id == Job.sweep_id)
            .where(Job.id == job_id)
        ).first()
    return None if row is None else (row.sweep_id, row.early_termination)


def should_terminate(
    factory: sessionmaker[Session],
    job_id: str,
    sweep_id: str,
    epoch: int,
    rule: Mapping[str, Any],
) -> str | None:
    """The median rule at `epoch`: why this trial should stop, or None."""
    if not median_rule_due(rule, epoch):
        return None
    best = sa.func.min(sa.func.coalesce(JobEpoch.val_loss, JobEpoch.loss))
    with session_scope(factory) as session:
        rows = session.execute(
            sa.select(JobEpoch.job_id, best)
            .join(Job, Job.id == JobEpoch.job_id)
            .where(Job.sweep_id == sweep_id, JobEpoch.epoch <= epoch)
            .group_by(JobEpoch.job_id)
            .having(sa.func.max(JobEpoch.epoch) >= epoch)
        ).all()
    values = {r[0]: r[1] for r in rows if r[1] is not None and math.isfinite(r[1])}
    mine = values.pop(job_id, None)
    return median_rule(rule, epoch, mine, list(values.values()))
