"""Hyperparameter sweeps: one spec, the values to try, and the life of the trials that try them.

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
                        once every trial is
`mark_running`          queued -> running                the task, when a trial starts
`cancel_sweep`          held and queued trials ->        API (`POST /sweeps/{id}/cancel`)
                        cancelled, running ones get
                        the cancel flag; the sweep ->
                        cancelled (or once they stop)
`label_sweep`           any: `name`, `tags`              API (`PATCH /sweeps/{id}`)
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

import copy
import itertools
import json
import logging
import math
import random
import secrets
import statistics
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from marshmallow import Schema, ValidationError, fields
from sqlalchemy.orm import Session, sessionmaker

from core.spec import effective_validation_split
from service import lifecycle
from service.config import Limits, Settings
from service.db import iso_utc, paginate, session_scope, utcnow
from service.errors import ApiError, InputError, flatten_messages
from service.jobs import check_active_jobs, check_spec, dataset_facts, normalized_specs, tag_filters
from service.lifecycle import FINAL_STATUSES
from service.schemas import JobInSchema, ModelSpecSchema, TrainingSpecSchema
from service.tables import Job, JobEpoch, Sweep, TrainedModel, is_id

if TYPE_CHECKING:
    from celery import Celery

log = logging.getLogger(__name__)

ACTIVE = ("queued", "running")
#: most `values` one parameter may list
MAX_VALUES = 1000

# -- metrics -----------------------------------------------------------------------------------

#: the flat `metrics` of a job, and the goal each one has by default
FLAT_METRICS = {
    "loss": "minimize",
    "val_loss": "minimize",
    "accuracy": "maximize",
    "val_accuracy": "maximize",
}
SPLITS = ("train", "validation", "test")
CLASSIFICATION_SCORES = {
    "loss": "minimize",
    "accuracy": "maximize",
    "balanced_accuracy": "maximize",
    "log_loss": "minimize",
    "roc_auc": "maximize",
    "f1.macro": "maximize",
    "precision.macro": "maximize",
    "recall.macro": "maximize",
}
REGRESSION_SCORES = {
    "loss": "minimize",
    "mse": "minimize",
    "rmse": "minimize",
    "mae": "minimize",
    "r2": "maximize",
}


def metric_goal(name: str, classification: bool) -> str | None:
    """The default goal of metric `name`, or None if no job of this kind reports it."""
    if name in FLAT_METRICS:
        return None if name.endswith("accuracy") and not classification else FLAT_METRICS[name]
    split, _, score = name.partition(".")
    if split in SPLITS:
        return (CLASSIFICATION_SCORES if classification else REGRESSION_SCORES).get(score)
    return None


def metric_value(
    name: str, metrics: Mapping[str, Any] | None, evaluation: Mapping[str, Any] | None
) -> float | None:
    """A job's value of metric `name` (`val_loss`, or dotted into `evaluation`:
    `validation.accuracy`, `test.f1.macro`); None when missing or not finite."""
    value: Any
    if "." in name:
        value = evaluation or {}
        for part in name.split("."):
            value = value.get(part) if isinstance(value, Mapping) else None
    else:
        value = (metrics or {}).get(name)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


@dataclass(frozen=True)
class Trial:
    """What the API shows of one trial."""

    job_id: str
    index: int
    params: dict[str, Any]
    status: str
    epoch: int
    epochs: int
    stop_reason: str | None
    metric_value: float | None
    model_id: str | None


def best_trial(trials: list[Trial], goal: str) -> Trial | None:
    """The succeeded trial with the best metric value; ties: the first trial."""
    sign = 1.0 if goal == "minimize" else -1.0
    candidates = [t for t in trials if t.status == "succeeded" and t.metric_value is not None]
    if not candidates:
        return None
    return min(candidates, key=lambda t: (sign * (t.metric_value or 0.0), t.index))


# -- parameters and expansion ------------------------------------------------------------------

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


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def check_parameters(parameters: Mapping[str, Any], method: str) -> dict[str, dict[str, Any]]:
    """The `parameters` of a sweep request, checked (422 naming `parameters.<path>`)."""
    if not parameters:
        raise InputError("parameters", "give at least one parameter")
    out: dict[str, dict[str, Any]] = {}
    for path, spec in parameters.items():
        where = f"parameters.{path}"
        if not is_spec_path(path):
            raise InputError(
                where, "is not a field of a job spec (model.<field> or training.<field>)"
            )
        if not isinstance(spec, Mapping):
            raise InputError(where, 'must be an object: {"values": [...]} or {"min", "max"}')
        keys = set(spec)
        if "values" in spec:
            if keys != {"values"}:
                raise InputError(where, f"values takes no {sorted(keys - {'values'})}")
            values = spec["values"]
            if not isinstance(values, list) or not values:
                raise InputError(f"{where}.values", "must be a non-empty list")
            if len(values) > MAX_VALUES:
                raise InputError(f"{where}.values", f"at most {MAX_VALUES} values")
            out[path] = {"values": list(values)}
            continue
        if method == "grid":
            raise InputError(where, 'grid takes {"values": [...]} only (min/max: method random)')
        unknown = keys - {"min", "max", "log", "int"}
        if unknown or not {"min", "max"} <= keys:
            raise InputError(where, 'give {"values": [...]} or {"min", "max", "log"?, "int"?}')
        lo, hi = spec["min"], spec["max"]
        if not _number(lo) or not _number(hi) or lo > hi:
            raise InputError(where, "min and max must be finite numbers, min <= max")
        log, integer = spec.get("log", False), spec.get("int", False)
        if not isinstance(log, bool) or not isinstance(integer, bool):
            raise InputError(where, "log and int must be booleans")
        if log and lo <= 0:
            raise InputError(f"{where}.min", "must be > 0 with log")
        if integer and math.ceil(lo) > math.floor(hi):
            raise InputError(where, "no integer between min and max")
        out[path] = {"min": lo, "max": hi, "log": log, "int": integer}
    return out


def _draw(rng: random.Random, spec: Mapping[str, Any]) -> Any:
    if "values" in spec:
        return copy.deepcopy(spec["values"][rng.randrange(len(spec["values"]))])
    lo, hi = spec["min"], spec["max"]
    if spec["int"] and not spec["log"]:
        return rng.randint(math.ceil(lo), math.floor(hi))
    x = math.exp(rng.uniform(math.log(lo), math.log(hi))) if spec["log"] else rng.uniform(lo, hi)
    if spec["int"]:
        return int(min(max(round(x), math.ceil(lo)), math.floor(hi)))
    return x


def grid_size(parameters: Mapping[str, Mapping[str, Any]]) -> int:
    return math.prod(len(spec["values"]) for spec in parameters.values())


def expand(
    method: str,
    parameters: Mapping[str, Mapping[str, Any]],
    max_trials: int | None,
    seed: int | None,
    limit: int,
) -> list[dict[str, Any]]:
    """Every trial's values (`{path: value}`), in trial order: the grid's product (parameters
    in the order given, the last one varying fastest; the first `max_trials`), or `max_trials`
    seeded draws. 422 past `limit` trials, or for random without `max_trials`."""
    if method == "random":
        if max_trials is None:
            raise InputError("max_trials", "is required with method random")
        if max_trials > limit:
            raise InputError("max_trials", f"is {max_trials}; the limit is {limit} trials")
        rng = random.Random(seed)
        return [
            {path: _draw(rng, spec) for path, spec in parameters.items()} for _ in range(max_trials)
        ]
    size = grid_size(parameters)
    n = size if max_trials is None else min(size, max_trials)
    if n > limit:
        raise InputError(
            "parameters", f"the grid has {size} trials; the limit is {limit} (or set max_trials)"
        )
    paths = list(parameters)
    combos = itertools.islice(itertools.product(*(parameters[p]["values"] for p in paths)), n)
    return [dict(zip(paths, copy.deepcopy(list(combo)), strict=True)) for combo in combos]


def apply(base: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
    """`base` with each dotted path set to its value (objects made where missing or null)."""
    spec = copy.deepcopy(dict(base))
    for path, value in params.items():
        node = spec
        parts = path.split(".")
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[parts[-1]] = copy.deepcopy(value)
    return spec


def _field_of(path: str, params: Mapping[str, Any]) -> str:
    """The sweep request's field for an error at `path` of a trial's spec."""
    for swept in params:
        if path == swept or path.startswith(swept + ".") or swept.startswith(path + "."):
            return f"parameters.{swept}"
    return f"base.{path}"


def _describe(index: int, n: int, params: Mapping[str, Any]) -> str:
    shown = json.dumps(params, separators=(", ", ": "), default=str)
    if len(shown) > 200:
        shown = shown[:197] + "..."
    return f"trial {index + 1} of {n} {shown}"


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
    body = {**apply(base, params), "dataset_id": dataset_id}
    try:
        data = JobInSchema().load(body)
    except ValidationError as exc:
        found = flatten_messages(exc.messages)
        path, text = next(iter(found.items()))
        raise InputError(
            _field_of(path, params), f"{_describe(index, n, params)}: {text}"
        ) from None
    model, training = normalized_specs(
        data, facts["target_kind"], facts["n_targets"], facts["classes"]
    )
    try:
        check_spec(model, training, limits=limits, **facts)
    except ApiError as exc:
        path, text = next(iter((exc.fields or {"base": exc.message}).items()))
        raise InputError(
            _field_of(path, params), f"{_describe(index, n, params)}: {text}"
        ) from None
    training["validation_split"] = effective_validation_split(training)
    return TrialSpec(dict(params), model, training, data.get("name"), data.get("tags"))


def resolve_metric(metric: Mapping[str, Any], trials: list[TrialSpec]) -> dict[str, str]:
    """`{"name", "goal"}`: the default name is `val_loss` when every trial has a validation
    split, else `loss`; a metric some trial would not report is a 422 naming `metric.name`."""
    name = metric.get("name") or (
        "val_loss" if all(t.training["validation_split"] > 0 for t in trials) else "loss"
    )
    goal: str | None = None
    for t in trials:
        classification = t.training["loss"] != "mse"
        goal = metric_goal(name, classification)
        if goal is None:
            kind = "classification" if classification else "regression"
            allowed = sorted(
                {*[k for k in FLAT_METRICS if metric_goal(k, classification)]}
                | {
                    f"<split>.{k}"
                    for k in (CLASSIFICATION_SCORES if classification else REGRESSION_SCORES)
                }
            )
            raise InputError(
                "metric.name",
                f"{name!r} is not a metric a {kind} job reports; one of {allowed}, "
                f"<split> one of {list(SPLITS)}",
            )
        split = name.partition(".")[0]
        if (name.startswith("val_") or split == "validation") and t.training[
            "validation_split"
        ] <= 0:
            raise InputError("metric.name", f"{name!r} needs a validation_split in every trial")
        if split == "test" and t.training["test_split"] <= 0:
            raise InputError("metric.name", f"{name!r} needs a test_split in every trial")
    return {"name": name, "goal": metric.get("goal") or goal or "minimize"}


# -- the API side (the request's Session) ------------------------------------------------------


def create_sweep(session: Session, data: dict[str, Any], limits: Limits, owner: str) -> Sweep:
    """Validate a sweep request, expand it and check every trial as a job; add the sweep
    `queued` and its trials held (flushed; the caller commits, then calls `advance`)."""
    check_active_jobs(session, owner, limits)
    base = data["base"]
    for key in base:
        if key not in ("model", "training", "name", "tags"):
            where = "the top level" if key in ("dataset_id", "dataset") else "a job request"
            raise InputError(f"base.{key}", f"is not a field of base (give it at {where})")
    facts = dataset_facts(session, data["dataset_id"], owner)
    method = data["method"]
    parameters = check_parameters(data["parameters"], method)
    seed = data.get("seed")
    if method == "random" and seed is None:
        seed = secrets.randbelow(2**31)
    assignments = expand(method, parameters, data.get("max_trials"), seed, limits.max_sweep_trials)
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
            sa.select(Sweep).where(Sweep.id == sweep_id, Sweep.owner == owner)
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
    where = [Sweep.owner == owner, *tag_filters(Sweep.tags, tags or [])]
    if status:
        where.append(Sweep.status == status)
    query = sa.select(Sweep).where(*where).order_by(Sweep.created_at.desc(), Sweep.id.desc())
    return paginate(session, query, page, page_size)


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
        .outerjoin(TrainedModel, TrainedModel.job_id == Job.id)
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
        progress = {"trials": len(mine), **dict.fromkeys(lifecycle.JOB_STATUSES, 0)}
        for t in mine:
            progress[t.status] += 1
        best = best_trial(mine, s.metric["goal"])
        item: dict[str, Any] = {
            "id": s.id,
            "name": s.name,
            "tags": s.tags or {},
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


def cancel_sweep(session: Session, sweep_id: str, owner: str) -> Sweep:
    """Cancel `owner`'s sweep: its held and queued trials never start, its running ones stop at
    their next epoch; the sweep is `cancelled` now if none runs, else once they stopped
    (`advance`). 409 once final; another owner's sweep is a 404. Commits."""
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
    running = lifecycle.cancel_trials(session, sweep_id, now)
    if not running:
        session.execute(
            sa.update(Sweep)
            .where(Sweep.id == sweep_id, Sweep.status.in_(ACTIVE))
            .values(status="cancelled", finished_at=now)
        )
    session.commit()
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


# -- scheduling (any process with a sessionmaker and the Celery app) ---------------------------


def advance(
    factory: sessionmaker[Session], celery: Celery, sweep_id: str, limits: Limits
) -> list[str]:
    """Start as many held trials as the sweep's `max_parallel` and the owner's
    `max_active_jobs` allow (published; a publish that fails leaves the trial to `reconcile`),
    and end the sweep once every trial has ended. Returns the ids of the trials started."""
    now = utcnow()
    with session_scope(factory) as session:
        # The lock: concurrent advances of this sweep wait here for each other's commit.
        row = session.execute(
            sa.update(Sweep)
            .where(Sweep.id == sweep_id, Sweep.status.in_(ACTIVE))
            .values(status=Sweep.status)
            .returning(Sweep.owner, Sweep.status, Sweep.max_parallel, Sweep.cancel_requested)
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
        if held == 0 and active == 0:
            succeeded = sum(n for (status, _), n in counts.items() if status == "succeeded")
            final = (
                "cancelled" if row.cancel_requested else ("succeeded" if succeeded else "failed")
            )
            session.execute(
                sa.update(Sweep)
                .where(Sweep.id == sweep_id)
                .values(
                    status=final,
                    finished_at=now,
                    started_at=sa.func.coalesce(Sweep.started_at, now),
                )
            )
            log.info("sweep %s: %s", sweep_id, final)
            return []
        started_any = active or any(s in FINAL_STATUSES for s, _ in counts)
        if row.status == "queued" and started_any:
            session.execute(
                sa.update(Sweep)
                .where(Sweep.id == sweep_id, Sweep.status == "queued")
                .values(status="running", started_at=now)
            )
        if row.cancel_requested or held == 0:
            return []
        free = held if row.max_parallel is None else min(held, row.max_parallel - active)
        owner_active = session.scalar(
            sa.select(sa.func.count())
            .select_from(Job)
            .where(Job.owner == row.owner, Job.status.in_(ACTIVE), Job.held.is_(False))
        )
        free = min(free, limits.max_active_jobs - int(owner_active or 0))
        if free <= 0:
            return []
        ids = lifecycle.start_trials(session, sweep_id, free, now)
    # the broker may be down: `reconcile` publishes the trials it could not once it is back
    lifecycle.send_trials(factory, celery, sweep_id, ids, now)
    return ids


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
    if rule.get("type") != "median" or epoch < rule.get("min_epochs", 10):
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
    if mine is None or len(values) < rule.get("min_trials", 3):
        return None
    median = statistics.median(values.values())
    if mine > median:
        return (
            f"best validation loss {mine:.6g} by epoch {epoch} is worse than the median "
            f"{median:.6g} of {len(values)} other trials"
        )
    return None
