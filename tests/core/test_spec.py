"""core.spec: one registry each (the tuples and defaults derived from them), and
`resolve_spec` filling every default once."""

from __future__ import annotations

import numpy as np
import pytest

import engine
from core import spec, training
from engine import nn


def test_the_tuples_and_defaults_come_from_the_registries() -> None:
    assert tuple(spec.OPTIMIZER_REGISTRY) == spec.OPTIMIZERS
    assert tuple(spec.LOSS_REGISTRY) == spec.LOSSES
    assert tuple(spec.ACTIVATION_REGISTRY) == spec.ACTIVATIONS
    assert tuple(spec.LR_SCHEDULE_REGISTRY) == spec.LR_SCHEDULES
    assert {
        name: e.learning_rate for name, e in spec.OPTIMIZER_REGISTRY.items()
    } == spec.DEFAULT_LEARNING_RATE
    assert {
        name: e.defaults for name, e in spec.LR_SCHEDULE_REGISTRY.items()
    } == spec.LR_SCHEDULE_DEFAULTS
    assert set(spec.LOSS_APPLIES) == {n for n, e in spec.LOSS_REGISTRY.items() if e.applies}
    # the engine knows every activation the spec offers
    assert set(spec.ACTIVATIONS) <= set(nn.ACTIVATIONS)
    assert spec.MODEL_DEFAULTS["activation"] in spec.ACTIVATIONS
    assert spec.TRAINING_DEFAULTS["optimizer"] in spec.OPTIMIZERS
    assert spec.TRAINING_DEFAULTS["dtype"] in spec.DTYPES
    assert spec.DEFAULT_LR_SCHEDULE in spec.LR_SCHEDULES


@pytest.mark.parametrize("name", spec.OPTIMIZERS)
def test_each_optimizer_is_built_from_its_entry(name: str) -> None:
    params = [engine.Tensor(np.ones(3), requires_grad=True)]
    resolved = spec.resolve_training({"optimizer": name})
    opt = training.make_optimizer(params, resolved)
    assert opt.lr == spec.DEFAULT_LEARNING_RATE[name]


@pytest.mark.parametrize("kind", spec.LR_SCHEDULES)
def test_each_schedule_is_built_from_its_entry(kind: str) -> None:
    opt = training.make_optimizer(
        [engine.Tensor(np.ones(3), requires_grad=True)], spec.resolve_training({})
    )
    schedule = training.LRSchedule({"type": kind}, opt, epochs=5)
    assert (schedule.scheduler is None) == (spec.LR_SCHEDULE_REGISTRY[kind].make is None)
    schedule.after_epoch(1.0)


def test_a_new_optimizer_is_one_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    entry = spec.OptimizerEntry(0.2, ("momentum",), lambda params, **kw: kw)
    monkeypatch.setitem(spec.OPTIMIZER_REGISTRY, "mine", entry)
    monkeypatch.setitem(spec.DEFAULT_LEARNING_RATE, "mine", 0.2)
    resolved = spec.resolve_training({"optimizer": "mine"})
    assert training.make_optimizer([], resolved) == {"lr": 0.2, "momentum": 0.0}


def test_resolve_spec_fills_every_default_once() -> None:
    model, t = spec.resolve_spec(
        {"layers": [4, 1]}, {"lr_schedule": {"type": "plateau", "patience": 2}}, "numeric", 1, None
    )
    assert model == {"layers": [4, 1], **spec.MODEL_DEFAULTS}
    assert list(t) == list(spec.TRAINING_KEYS)
    assert t["loss"] == "mse" and t["learning_rate"] == spec.DEFAULT_LEARNING_RATE["sgd"]
    assert t["lr_schedule"] == {"type": "plateau", "factor": 0.1, "patience": 2}
    assert t["dtype"] == spec.TRAINING_DEFAULTS["dtype"]
    # resolving a resolved spec changes nothing (a stored job reads as it was stored)
    assert spec.resolve_spec(dict(model), dict(t), "numeric", 1, None) == (model, t)


def test_defaults_is_plain_json() -> None:
    import json

    d = spec.defaults()
    assert json.loads(json.dumps(d)) == d
    assert d["choices"]["optimizer"] == list(spec.OPTIMIZERS)


def test_balanced_class_weights_match_scikit_learn_over_many_rows() -> None:
    """Counted a piece at a time (no whole int64 copy of the targets): the same weights as
    scikit-learn's `compute_class_weight("balanced")`, over more rows than one piece."""
    from sklearn.utils.class_weight import compute_class_weight

    rng = np.random.default_rng(0)
    y = rng.choice(3, size=(1 << 20) + 12_345, p=[0.7, 0.2, 0.1]).astype(np.uint8)
    expected = compute_class_weight("balanced", classes=np.arange(3), y=y)
    got = spec.class_weights("balanced", y, ["a", "b", "c"])
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    assert spec.class_weights({"b": 2.0}, y, ["a", "b", "c"]) == [1.0, 2.0, 1.0]
