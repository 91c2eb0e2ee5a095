"""`core.sweep` without a server: search spaces and their expansion, metrics, the best trial,
the scheduling arithmetic and the median rule."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest

from core.sweep import (
    MAX_VALUES,
    SweepError,
    Trial,
    apply,
    best_trial,
    check_parameters,
    describe_trial,
    expand,
    field_of,
    final_status,
    free_slots,
    median_rule,
    metric_goal,
    metric_value,
    resolve_metric,
)
from tests.support import ROOT


def any_path(path: str) -> bool:
    return True


def test_importing_core_sweep_loads_no_framework() -> None:
    code = (
        "import sys, core.sweep\n"
        "print(sorted(m for m in ('flask', 'celery', 'sqlalchemy', 'marshmallow', 'service') "
        "if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


def test_expand_grid_and_random() -> None:
    grid = {"a.x": {"values": [1, 2]}, "a.y": {"values": ["p", "q", "r"]}}
    assert expand("grid", grid, None, None, 1000) == [
        {"a.x": x, "a.y": y} for x in (1, 2) for y in ("p", "q", "r")
    ]
    assert len(expand("grid", grid, 4, None, 1000)) == 4
    spec = {"a.x": {"min": 1, "max": 3, "log": False, "int": True}}
    draws = expand("random", spec, 200, 1, 1000)
    assert {d["a.x"] for d in draws} == {1, 2, 3}
    assert draws == expand("random", spec, 200, 1, 1000)
    assert draws != expand("random", spec, 200, 2, 1000)


def test_random_draws_stay_in_their_space() -> None:
    spec = {
        "lr": {"min": 1e-4, "max": 1e-1, "log": True, "int": False},
        "units": {"min": 2, "max": 64, "log": True, "int": True},
        "act": {"values": ["tanh", "relu"]},
    }
    draws = expand("random", spec, 300, 7, 1000)
    assert all(1e-4 <= d["lr"] <= 1e-1 for d in draws)
    assert all(isinstance(d["units"], int) and 2 <= d["units"] <= 64 for d in draws)
    assert {d["act"] for d in draws} == {"tanh", "relu"}
    logs = [math.log10(d["lr"]) for d in draws]
    assert min(logs) < -3 and max(logs) > -2  # spread over the decades


def test_expansion_limits() -> None:
    grid = {"a": {"values": list(range(10))}, "b": {"values": list(range(10))}}
    with pytest.raises(SweepError) as exc:
        expand("grid", grid, None, None, 50)
    assert exc.value.field == "parameters"
    assert len(expand("grid", grid, 50, None, 50)) == 50
    with pytest.raises(SweepError) as exc:
        expand("random", {"a": {"values": [1]}}, None, 1, 50)
    assert exc.value.field == "max_trials"
    with pytest.raises(SweepError) as exc:
        expand("random", {"a": {"values": [1]}}, 51, 1, 50)
    assert exc.value.field == "max_trials"


@pytest.mark.parametrize(
    ("parameters", "method", "field"),
    [
        ({}, "grid", "parameters"),
        ({"a": [1, 2]}, "grid", "parameters.a"),
        ({"a": {"values": []}}, "grid", "parameters.a.values"),
        ({"a": {"values": list(range(MAX_VALUES + 1))}}, "grid", "parameters.a.values"),
        ({"a": {"values": [1], "min": 0}}, "grid", "parameters.a"),
        ({"a": {"min": 0, "max": 1}}, "grid", "parameters.a"),
        ({"a": {"min": 2, "max": 1}}, "random", "parameters.a"),
        ({"a": {"min": 0, "max": 1, "log": True}}, "random", "parameters.a.min"),
        ({"a": {"min": 0.2, "max": 0.8, "int": True}}, "random", "parameters.a"),
        ({"a": {"min": 0, "max": 1, "log": "yes"}}, "random", "parameters.a"),
        ({"a": {"max": 1}}, "random", "parameters.a"),
    ],
)
def test_bad_parameters_name_their_field(
    parameters: dict[str, object], method: str, field: str
) -> None:
    with pytest.raises(SweepError) as exc:
        check_parameters(parameters, method, any_path)
    assert exc.value.field == field
    assert str(exc.value).startswith(f"{field}: ")


def test_parameters_are_checked_against_the_spec_paths() -> None:
    with pytest.raises(SweepError) as exc:
        check_parameters({"training.lr": {"values": [1]}}, "grid", lambda p: p != "training.lr")
    assert exc.value.field == "parameters.training.lr"
    checked = check_parameters({"a": {"min": 1, "max": 2}}, "random", any_path)
    assert checked == {"a": {"min": 1, "max": 2, "log": False, "int": False}}


def test_apply_sets_dotted_paths() -> None:
    base = {"model": {"layers": [4, 1]}, "training": {"early_stopping": None}}
    spec = apply(base, {"training.early_stopping.patience": 3, "model.layers": [8, 1]})
    assert spec == {"model": {"layers": [8, 1]}, "training": {"early_stopping": {"patience": 3}}}
    assert base == {"model": {"layers": [4, 1]}, "training": {"early_stopping": None}}


def test_errors_name_the_sweep_field() -> None:
    params = {"training.early_stopping": {"patience": 3}, "model.layers": [4, 1]}
    assert field_of("training.early_stopping.patience", params) == (
        "parameters.training.early_stopping"
    )
    assert field_of("model", params) == "parameters.model.layers"
    assert field_of("training.epochs", params) == "base.training.epochs"
    assert describe_trial(1, 6, {"a": 1}) == 'trial 2 of 6 {"a": 1}'
    assert describe_trial(0, 1, {"a": "x" * 500}).endswith("...")


def trial(index: int, status: str, value: float | None) -> Trial:
    return Trial(f"j{index}", index, {}, status, 5, 5, None, value, None)


def test_best_selection() -> None:
    trials = [
        trial(0, "failed", None),
        trial(1, "succeeded", 0.5),
        trial(2, "succeeded", 0.2),
        trial(3, "succeeded", 0.2),  # a tie: the first trial wins
        trial(4, "cancelled", None),
        trial(5, "succeeded", None),  # no value (NaN): never best
        trial(6, "running", None),
    ]
    best = best_trial(trials, "minimize")
    assert best is not None and best.job_id == "j2"
    best = best_trial(trials, "maximize")
    assert best is not None and best.job_id == "j1"
    assert best_trial([trial(0, "failed", None), trial(1, "cancelled", None)], "minimize") is None
    assert best_trial([], "maximize") is None


def test_metric_values() -> None:
    metrics = {"loss": 0.5, "val_loss": float("nan")}
    evaluation = {"test": {"accuracy": 0.9, "f1": {"macro": 0.8}}, "validation": {"n": 3}}
    assert metric_value("loss", metrics, evaluation) == 0.5
    assert metric_value("val_loss", metrics, evaluation) is None
    assert metric_value("test.accuracy", metrics, evaluation) == 0.9
    assert metric_value("test.f1.macro", metrics, evaluation) == 0.8
    assert metric_value("validation.accuracy", metrics, evaluation) is None
    assert metric_value("test.accuracy", None, None) is None


def test_metric_goals_and_resolution() -> None:
    assert metric_goal("val_accuracy", classification=True) == "maximize"
    assert metric_goal("val_accuracy", classification=False) is None
    assert metric_goal("test.r2", classification=False) == "maximize"
    assert metric_goal("test.roc_auc", classification=False) is None
    clf = {"loss": "cross_entropy", "validation_split": 0.2, "test_split": 0.0}
    reg = {"loss": "mse", "validation_split": 0.0, "test_split": 0.2}
    assert resolve_metric({}, [clf]) == {"name": "val_loss", "goal": "minimize"}
    assert resolve_metric({}, [clf, reg]) == {"name": "loss", "goal": "minimize"}
    assert resolve_metric({"name": "test.r2"}, [reg]) == {"name": "test.r2", "goal": "maximize"}
    for metric, trainings in (
        ({"name": "accuracy"}, [reg]),
        ({"name": "val_loss"}, [reg]),
        ({"name": "test.accuracy"}, [clf]),
    ):
        with pytest.raises(SweepError) as exc:
            resolve_metric(metric, trainings)
        assert exc.value.field == "metric.name"


def test_scheduling_arithmetic() -> None:
    assert final_status(succeeded=2, cancel_requested=False) == "succeeded"
    assert final_status(succeeded=0, cancel_requested=False) == "failed"
    assert final_status(succeeded=2, cancel_requested=True) == "cancelled"
    assert free_slots(held=5, active=1, max_parallel=None, owner_room=10) == 5
    assert free_slots(held=5, active=1, max_parallel=3, owner_room=10) == 2
    assert free_slots(held=5, active=1, max_parallel=3, owner_room=1) == 1
    assert free_slots(held=5, active=3, max_parallel=3, owner_room=10) <= 0


def test_median_rule() -> None:
    rule = {"type": "median", "min_epochs": 3, "min_trials": 2}
    assert median_rule(rule, 3, 0.9, [0.5, 0.6]) is not None
    assert median_rule(rule, 2, 0.9, [0.5, 0.6]) is None  # too early
    assert median_rule(rule, 3, 0.9, [0.5]) is None  # too few others
    assert median_rule(rule, 3, 0.4, [0.5, 0.6]) is None  # better than the median
    assert median_rule(rule, 3, None, [0.5, 0.6]) is None
    assert median_rule({"type": "none"}, 30, 0.9, [0.5, 0.6]) is None
    assert median_rule({"type": "median"}, 10, 0.9, [0.1, 0.2, 0.3]) is not None  # defaults
