"""Hyperparameter sweeps without a server: search spaces, their trials' values, metrics and the
rules that pick the best trial and stop a poor one.

A sweep's `parameters` map a dotted path of a job's spec (`training.learning_rate`) to a
search space: `{"values": [...]}` (grid or random) or `{"min", "max", "log"?, "int"?}`
(random only). `expand` turns them into every trial's values, in trial order; `apply` sets
one trial's values into the base spec. What is stored and when a trial starts is
`service.sweeps`' business; this module knows no database, web or task framework.

Errors are `SweepError`s naming the request's field (`parameters.training.learning_rate`),
which the service answers with a 422.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import random
import statistics
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

#: most `values` one parameter may list
MAX_VALUES = 1000


class SweepError(ValueError):
    """A sweep request that cannot run: `field` names the request's field at fault."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


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


def resolve_metric(metric: Mapping[str, Any], trainings: list[Mapping[str, Any]]) -> dict[str, str]:
    """`{"name", "goal"}` for the trials' (resolved) training specs: the default name is
    `val_loss` when every trial has a validation split, else `loss`; a metric some trial would
    not report is a `SweepError` naming `metric.name`."""
    name = metric.get("name") or (
        "val_loss" if all(t["validation_split"] > 0 for t in trainings) else "loss"
    )
    goal: str | None = None
    for training in trainings:
        classification = training["loss"] != "mse"
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
            raise SweepError(
                "metric.name",
                f"{name!r} is not a metric a {kind} job reports; one of {allowed}, "
                f"<split> one of {list(SPLITS)}",
            )
        split = name.partition(".")[0]
        if (name.startswith("val_") or split == "validation") and training["validation_split"] <= 0:
            raise SweepError("metric.name", f"{name!r} needs a validation_split in every trial")
        if split == "test" and training["test_split"] <= 0:
            raise SweepError("metric.name", f"{name!r} needs a test_split in every trial")
    return {"name": name, "goal": metric.get("goal") or goal or "minimize"}


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


# -- search spaces and expansion ---------------------------------------------------------------


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def check_parameters(
    parameters: Mapping[str, Any], method: str, is_spec_path: Callable[[str], bool]
) -> dict[str, dict[str, Any]]:
    """The `parameters` of a sweep request, checked (`SweepError` naming `parameters.<path>`);
    `is_spec_path` says whether a dotted path is a field of a job's spec."""
    if not parameters:
        raise SweepError("parameters", "give at least one parameter")
    out: dict[str, dict[str, Any]] = {}
    for path, spec in parameters.items():
        where = f"parameters.{path}"
        if not is_spec_path(path):
            raise SweepError(
                where, "is not a field of a job spec (model.<field> or training.<field>)"
            )
        if not isinstance(spec, Mapping):
            raise SweepError(where, 'must be an object: {"values": [...]} or {"min", "max"}')
        keys = set(spec)
        if "values" in spec:
            if keys != {"values"}:
                raise SweepError(where, f"values takes no {sorted(keys - {'values'})}")
            values = spec["values"]
            if not isinstance(values, list) or not values:
                raise SweepError(f"{where}.values", "must be a non-empty list")
            if len(values) > MAX_VALUES:
                raise SweepError(f"{where}.values", f"at most {MAX_VALUES} values")
            out[path] = {"values": list(values)}
            continue
        if method == "grid":
            raise SweepError(where, 'grid takes {"values": [...]} only (min/max: method random)')
        unknown = keys - {"min", "max", "log", "int"}
        if unknown or not {"min", "max"} <= keys:
            raise SweepError(where, 'give {"values": [...]} or {"min", "max", "log"?, "int"?}')
        lo, hi = spec["min"], spec["max"]
        if not _number(lo) or not _number(hi) or lo > hi:
            raise SweepError(where, "min and max must be finite numbers, min <= max")
        log, integer = spec.get("log", False), spec.get("int", False)
        if not isinstance(log, bool) or not isinstance(integer, bool):
            raise SweepError(where, "log and int must be booleans")
        if log and lo <= 0:
            raise SweepError(f"{where}.min", "must be > 0 with log")
        if integer and math.ceil(lo) > math.floor(hi):
            raise SweepError(where, "no integer between min and max")
        out[path] = {"min": lo, "max": hi, "log": log, "int": integer}
    return out


def draw(rng: random.Random, spec: Mapping[str, Any]) -> Any:
    """One random value of a checked search space."""
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
    """How many trials the full grid of `parameters` (each one `{"values"}`) has."""
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
    seeded draws. `SweepError` past `limit` trials, or for random without `max_trials`."""
    if method == "random":
        if max_trials is None:
            raise SweepError("max_trials", "is required with method random")
        if max_trials > limit:
            raise SweepError("max_trials", f"is {max_trials}; the limit is {limit} trials")
        rng = random.Random(seed)
        return [
            {path: draw(rng, spec) for path, spec in parameters.items()} for _ in range(max_trials)
        ]
    size = grid_size(parameters)
    n = size if max_trials is None else min(size, max_trials)
    if n > limit:
        raise SweepError(
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


def field_of(path: str, params: Mapping[str, Any]) -> str:
    """The sweep request's field for an error at `path` of a trial's spec: the swept
    parameter when its value is at fault, else `base.<path>`."""
    for swept in params:
        if path == swept or path.startswith(swept + ".") or swept.startswith(path + "."):
            return f"parameters.{swept}"
    return f"base.{path}"


def describe_trial(index: int, n: int, params: Mapping[str, Any]) -> str:
    """`trial 2 of 6 {"training.learning_rate": 0.01}` (values cut to 200 characters)."""
    shown = json.dumps(params, separators=(", ", ": "), default=str)
    if len(shown) > 200:
        shown = shown[:197] + "..."
    return f"trial {index + 1} of {n} {shown}"


# -- scheduling and early termination ----------------------------------------------------------


def final_status(succeeded: int, cancel_requested: bool) -> str:
    """A sweep's status once every trial has ended."""
    if cancel_requested:
        return "cancelled"
    return "succeeded" if succeeded else "failed"


def free_slots(held: int, active: int, max_parallel: int | None, owner_room: int) -> int:
    """How many held trials may start now: within the sweep's `max_parallel` (`active` trials
    queued or running) and the owner's room under `max_active_jobs`."""
    free = held if max_parallel is None else min(held, max_parallel - active)
    return min(free, owner_room)


def median_rule_due(rule: Mapping[str, Any], epoch: int) -> bool:
    """Does the (median) early-termination `rule` look at trials at `epoch`?"""
    return rule.get("type") == "median" and epoch >= rule.get("min_epochs", 10)


def median_rule(
    rule: Mapping[str, Any], epoch: int, mine: float | None, others: list[float]
) -> str | None:
    """Why a trial whose best loss by `epoch` is `mine` should stop, against the other trials'
    best losses at the same epoch (`others`, finite), or None: it stops when it is worse than
    their median and there are at least `min_trials` of them."""
    if not median_rule_due(rule, epoch):
        return None
    if mine is None or len(others) < rule.get("min_trials", 3):
        return None
    median = statistics.median(others)
    if mine > median:
        return (
            f"best validation loss {mine:.6g} by epoch {epoch} is worse than the median "
            f"{median:.6g} of {len(others)} other trials"
        )
    return None
