"""core.training on its own: no Celery, no database."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any

import numpy as np
import pytest

from core.model import predict
from core.training import DivergedError, EpochCallback, TrainResult, split_indices, train
from engine import optim
from tests.workers.datasets import blobs, moons, regression

BINARY = {"layers": [16, 16, 1], "activation": "tanh"}


def spec(**overrides: object) -> dict[str, object]:
    base: dict[str, object] = {
        "loss": "binary_cross_entropy",
        "optimizer": "adam",
        "learning_rate": 0.03,
        "momentum": 0.0,
        "weight_decay": 0.0,
        "epochs": 60,
        "batch_size": 32,
        "seed": 0,
        "validation_split": 0.0,
    }
    base.update(overrides)
    return base


def classes_of(y: np.ndarray) -> list[int]:
    return sorted(int(v) for v in np.unique(y))


def train_moons(on_epoch: EpochCallback | None = None, **overrides: object) -> TrainResult:
    x, y = moons(200)
    return train(
        x,
        y.reshape(-1, 1).astype(float),
        BINARY,
        spec(**overrides),
        classes=classes_of(y),
        on_epoch=on_epoch,
    )


def test_binary_moons_learn_and_predict_agrees() -> None:
    x, y = moons(200)
    result = train(
        x, y.reshape(-1, 1).astype(float), BINARY, spec(), classes=classes_of(y), graph=False
    )
    assert result.completed
    assert len(result.loss_history) == 60
    assert result.loss_history[-1] < result.loss_history[0] / 3
    assert result.metrics["accuracy"] >= 0.95
    assert set(result.metrics) == {"loss", "accuracy"}
    labels = predict(result.architecture, result.state_dict, x)["predictions"]
    assert np.mean(np.asarray(labels) == y) == pytest.approx(result.metrics["accuracy"])


def test_three_classes_cross_entropy_learn() -> None:
    x, y = blobs(150)
    result = train(
        x,
        y.reshape(-1, 1).astype(float),
        {"layers": [8, 3], "activation": "relu"},
        spec(loss="cross_entropy", epochs=40),
        classes=[0, 1, 2],
        graph=False,
    )
    assert result.metrics["accuracy"] >= 0.95
    assert result.architecture["classes"] == [0, 1, 2]


def test_regression_with_sgd_momentum_and_full_batch() -> None:
    x, y = regression()
    result = train(
        x,
        y,
        {"layers": [16, 1]},
        spec(loss="mse", optimizer="sgd", momentum=0.9, learning_rate=0.05, batch_size=None),
        graph=False,
    )
    assert result.loss_history[-1] < 0.2 * result.loss_history[0]
    assert set(result.metrics) == {"loss"}
    assert result.architecture["classes"] is None


def test_same_seed_same_result_other_seed_differs() -> None:
    a = train_moons(epochs=5)
    b = train_moons(epochs=5)
    c = train_moons(epochs=5, seed=1)
    assert a.loss_history == b.loss_history
    for name, value in a.state_dict.items():
        np.testing.assert_array_equal(value, b.state_dict[name])
    assert a.loss_history != c.loss_history


def test_validation_split_reports_val_history_and_metrics() -> None:
    result = train_moons(epochs=10, validation_split=0.25)
    assert len(result.val_loss_history) == len(result.loss_history) == 10
    assert {"loss", "accuracy", "val_loss", "val_accuracy"} <= set(result.metrics)
    assert all(np.isfinite(result.val_loss_history))


def test_split_indices_are_disjoint_and_seeded() -> None:
    train_idx, val_idx, test_idx = split_indices(10, 0.3, np.random.default_rng(0))
    assert len(test_idx) == 0
    assert len(val_idx) == 3 and len(train_idx) == 7
    assert sorted([*train_idx, *val_idx]) == list(range(10))
    again = split_indices(10, 0.3, np.random.default_rng(0))
    np.testing.assert_array_equal(val_idx, again[1])
    # a tiny split still validates on one sample, and training always keeps one
    assert len(split_indices(5, 0.01, np.random.default_rng(0))[1]) == 1
    assert len(split_indices(2, 0.99, np.random.default_rng(0))[0]) == 1


def test_diverging_loss_raises_with_partial_history() -> None:
    x, y = regression()
    with pytest.raises(DivergedError) as info:
        train(
            x,
            y * 1e3,
            {"layers": [16, 16, 1]},
            spec(loss="mse", optimizer="sgd", learning_rate=1e6, epochs=50, batch_size=8),
            graph=False,
        )
    message = str(info.value)
    assert "NaN" in message or "inf" in message
    assert "smaller learning_rate" in message
    epoch = int(message.split("at epoch ")[1].split(";")[0])
    assert len(info.value.loss_history) == epoch - 1


def test_on_epoch_false_stops_training() -> None:
    seen: list[tuple[int, float, float | None]] = []

    def on_epoch(epoch: int, loss: float, val_loss: float | None) -> bool:
        seen.append((epoch, loss, val_loss))
        return epoch < 3

    result = train_moons(epochs=50, validation_split=0.2, on_epoch=on_epoch)
    assert not result.completed
    assert [e for e, _, _ in seen] == [1, 2, 3]
    assert result.loss_history == [loss for _, loss, _ in seen]
    assert result.val_loss_history == [v for _, _, v in seen]
    assert result.graph_svg is None and result.metrics == {}


def test_graph_svg_is_svg() -> None:
    result = train_moons(epochs=2)
    assert result.graph_svg is not None
    root = ET.fromstring(result.graph_svg)
    assert root.tag.endswith("svg")
    texts = [(t.text or "", float(t.get("y", "0"))) for t in root.iter() if t.tag.endswith("text")]
    # the forward pass and the loss, with the model's parameters and the input labelled
    words = {text for text, _ in texts}
    assert {"linear", "tanh", "weight", "bias", "loss", "x"} <= words
    # laid out top to bottom (so it reads in a browser): the loss below every parameter
    loss_y = max(y for text, y in texts if text == "loss")
    assert all(loss_y > y for text, y in texts if text in ("weight", "bias", "x"))


def test_string_labels_use_class_indices() -> None:
    x, y = blobs(90)
    names = ["ant", "bee", "cat"]
    result = train(
        x,
        y,  # stored as class indices into `classes` for string labels
        {"layers": [8, 3]},
        spec(loss="cross_entropy", epochs=20),
        target_kind="labels",
        classes=names,
        graph=False,
    )
    labels = predict(result.architecture, result.state_dict, x[:5])["predictions"]
    assert set(labels) <= set(names)


# ---- issue 13: splits, preprocessing in the model, early stopping, schedules, evaluation -----


def test_stratified_splits_keep_class_proportions_and_are_seeded() -> None:
    strata = np.array([0] * 80 + [1] * 20)
    train_idx, val_idx, test_idx = split_indices(
        100, 0.2, np.random.default_rng(5), test_split=0.25, strata=strata
    )
    assert (len(train_idx), len(val_idx), len(test_idx)) == (55, 20, 25)
    assert sorted([*train_idx, *val_idx, *test_idx]) == list(range(100))
    assert strata[test_idx].sum() == 5 and strata[val_idx].sum() == 4
    again = split_indices(100, 0.2, np.random.default_rng(5), test_split=0.25, strata=strata)
    np.testing.assert_array_equal(test_idx, again[2])


def test_early_stopping_restores_the_best_epoch() -> None:
    x, y = moons(200)
    result = train(
        x,
        y.reshape(-1, 1).astype(float),
        {"layers": [64, 64, 1], "activation": "relu"},
        spec(
            epochs=300,
            learning_rate=0.05,
            early_stopping={"patience": 5},
            dtype="float64",
        ),
        classes=classes_of(y),
        graph=False,
    )
    assert result.stop_reason == "early_stopping"
    assert result.stopped_epoch < 300 and result.stopped_epoch == len(result.loss_history)
    best = int(np.argmin(result.val_loss_history)) + 1
    assert result.best_epoch == best
    # the saved weights are the best epoch's: their validation loss is the minimum
    assert result.metrics["val_loss"] == pytest.approx(min(result.val_loss_history), rel=1e-9)
    assert result.evaluation["validation"]["loss"] == pytest.approx(result.metrics["val_loss"])


def test_test_split_is_held_out_and_scored() -> None:
    x, y = blobs()
    result = train(
        x,
        y.reshape(-1, 1).astype(float),
        {"layers": [16, 3], "activation": "tanh"},
        spec(loss="cross_entropy", epochs=30, test_split=0.25, validation_split=0.1),
        classes=classes_of(y),
        graph=False,
    )
    test = result.evaluation["test"]
    assert set(result.evaluation) == {"train", "validation", "test"}
    assert (
        sum(test["confusion_matrix"]["matrix"][i][j] for i in range(3) for j in range(3))
        == (test["n"])
    )
    assert test["n"] == round(len(x) * 0.25)
    assert result.evaluation["train"]["n"] + result.evaluation["validation"]["n"] + test["n"] == (
        len(x)
    )
    assert {"accuracy", "balanced_accuracy", "f1", "roc_auc", "log_loss"} <= set(test)
    # the preprocessing saw only the training rows
    assert result.architecture["preprocessing"]["steps"][0]["center"] != pytest.approx(
        float(x[:, 0].mean()), abs=1e-12
    )


def test_categorical_table_with_missing_cells_trains_and_predicts() -> None:
    from core.model import Model
    from core.table import table_from_matrix

    rng = np.random.default_rng(0)
    colours = rng.choice(["red", "green", "blue"], size=300)
    size = rng.normal(size=300)
    label = ((colours == "red") ^ (size > 0)).astype(int)
    rows = [
        [None if i % 17 == 0 else c, None if i % 13 == 0 else float(s)]
        for i, (c, s) in enumerate(zip(colours, size, strict=True))
    ]
    table = table_from_matrix(rows, ["colour", "size"])
    result = train(
        table,
        label.reshape(-1, 1).astype(float),
        {"layers": [16, 1], "activation": "relu"},
        spec(epochs=80, learning_rate=0.02),
        classes=[0, 1],
        graph=False,
    )
    assert result.architecture["nin"] == 4  # three colours one-hot + size
    assert result.metrics["accuracy"] > 0.9
    model = Model(result.architecture, result.state_dict)
    out = model.predict([["red", 1.0], ["purple", None], [None, -1.0]])
    assert len(out["predictions"]) == 3 and all(p in (0, 1) for p in out["predictions"])


def test_regression_target_is_standardized_and_predictions_in_its_units() -> None:
    from core.model import Model

    x, y = regression()
    y_big = y * 1000 + 5000
    result = train(
        x,
        y_big,
        {"layers": [32, 1], "activation": "tanh"},
        spec(loss="mse", epochs=100, learning_rate=0.01, test_split=0.2),
        graph=False,
    )
    assert result.evaluation["test"]["r2"] > 0.8
    predicted = np.asarray(Model(result.architecture, result.state_dict).predict(x)["predictions"])
    assert abs(predicted.mean() - y_big.mean()) < 0.1 * y_big.std()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_dtype_is_the_weights_dtype(dtype: str) -> None:
    result = train_moons(epochs=2, dtype=dtype)
    assert {v.dtype.name for v in result.state_dict.values()} == {dtype}
    assert result.architecture["dtype"] == dtype


def test_learning_rate_schedules() -> None:
    """The rate each epoch runs at (`lr` before the epoch, `after_epoch` once it finished)."""
    from core.training import LRSchedule
    from engine import Tensor

    def rates(spec: dict[str, object], epochs: int, losses: list[float] | None = None) -> list:
        opt = optim.SGD([Tensor(np.zeros(1))], lr=1.0)
        schedule = LRSchedule(spec, opt, epochs)
        out = []
        for epoch in range(epochs):
            out.append(schedule.lr)
            schedule.after_epoch(losses[epoch] if losses else 0.0)
        return out

    assert rates({"type": "constant"}, 3) == [1.0, 1.0, 1.0]
    assert rates({"type": "step", "step_size": 2, "gamma": 0.5}, 5) == [1, 1, 0.5, 0.5, 0.25]
    cosine = rates({"type": "cosine", "min_lr": 0.1}, 11)
    assert cosine[0] == pytest.approx(1.0) and cosine[-1] == pytest.approx(0.1)
    assert cosine[5] == pytest.approx(0.55)
    plateau = rates({"type": "plateau", "factor": 0.5, "patience": 1}, 5, [1.0, 0.9, 0.95, 0.95, 1])
    assert plateau == [1.0, 1.0, 1.0, 1.0, 0.5]


def test_balanced_class_weight_lifts_the_minority_class() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(400, 2))
    y = ((x[:, 0] + 0.5 * rng.normal(size=400)) > 1.3).astype(int)  # about 10% positives
    common = {"layers": [8, 1], "activation": "tanh"}
    targets = y.reshape(-1, 1).astype(float)

    def recall(**overrides: object) -> float:
        result = train(
            x, targets, common, spec(epochs=40, **overrides), classes=[0, 1], graph=False
        )
        return result.evaluation["train"]["recall"]["per_class"]["1"]

    assert recall(class_weight="balanced") > recall()


def test_loss_is_picked_from_the_targets_when_not_given() -> None:
    x, y = blobs()
    result = train(
        x,
        y.astype(np.int64),
        {"layers": [8, 3], "activation": "tanh"},
        spec(loss=None, epochs=2),
        target_kind="labels",
        classes=["a", "b", "c"],
        graph=False,
    )
    assert result.architecture["loss"] == "cross_entropy"


def test_a_model_predicts_named_rows_like_positional_ones() -> None:
    from core.model import Model
    from core.table import table_from_matrix

    rows = [["red", 1.0], ["blue", -1.0], ["red", 0.5], ["green", None]] * 10
    table = table_from_matrix(rows, ["colour", "size"])
    result = train(
        table,
        np.array([[0.0], [1.0], [0.0], [1.0]] * 10),
        {"layers": [4, 1]},
        spec(epochs=3),
        classes=[0, 1],
        graph=False,
    )
    model = Model(result.architecture, result.state_dict)
    named = model.predict([{"size": 1.0, "colour": "red"}, {"colour": "teal"}])
    positional = model.predict([["red", 1.0], ["teal", None]])
    assert named == positional
    with pytest.raises(ValueError, match="unknown column 'weight'"):
        model.predict([{"weight": 3}])


@pytest.mark.parametrize(
    ("kind", "classes", "width", "loss"),
    [
        ("labels", ["a", "b", "c"], 3, "cross_entropy"),
        ("labels", ["no", "yes"], 1, "binary_cross_entropy"),
        ("labels", ["no", "yes"], 2, "cross_entropy"),
        ("numeric", [0, 1], 1, "binary_cross_entropy"),
        ("numeric", list(range(10)), 10, "cross_entropy"),  # digits: one output per class
        ("numeric", list(range(10)), 1, "mse"),  # integers read as numbers
        ("numeric", None, 1, "mse"),
    ],
)
def test_default_loss_reads_the_targets_and_the_output_width(
    kind: str, classes: list[object] | None, width: int, loss: str
) -> None:
    from core.spec import default_loss

    assert default_loss(kind, 1, classes, width) == loss


def test_refit_trains_again_on_training_and_validation_rows_for_the_best_epoch_count() -> None:
    x, y = moons(200)
    targets = y.reshape(-1, 1).astype(float)
    base = spec(epochs=300, learning_rate=0.05, dtype="float64")
    stop = {"patience": 5}
    kept = train(x, targets, BINARY, {**base, "early_stopping": {**stop, "refit": False}},
                 classes=[0, 1], graph=False)  # fmt: skip
    refit = train(x, targets, BINARY, {**base, "early_stopping": stop}, classes=[0, 1],
                  graph=False)  # fmt: skip
    assert not kept.refit and refit.refit
    assert refit.best_epoch == kept.best_epoch and refit.stopped_epoch == kept.stopped_epoch
    # the validation scores are the selection run's best epoch in both
    assert refit.metrics["val_loss"] == pytest.approx(kept.metrics["val_loss"], rel=1e-12)
    # the saved weights are those of the second run, on all 200 rows for best_epoch epochs
    assert any(not np.allclose(refit.state_dict[k], kept.state_dict[k]) for k in kept.state_dict)
    assert refit.evaluation["train"]["n"] + refit.evaluation["validation"]["n"] == 200
    assert refit.evaluation["train"]["accuracy"] >= 0.9


def test_a_stopped_refit_keeps_the_model_early_stopping_selected() -> None:
    x, y = moons(200)
    targets = y.reshape(-1, 1).astype(float)
    base = spec(epochs=300, learning_rate=0.05, dtype="float64", early_stopping={"patience": 5})
    kept = train(x, targets, BINARY, {**base, "early_stopping": {"patience": 5, "refit": False}},
                 classes=[0, 1], graph=False)  # fmt: skip
    asked: list[int] = []

    def on_refit_epoch(epoch: int) -> bool:
        asked.append(epoch)
        return epoch < 3  # the time limit came during the third epoch of the refit

    stopped = train(x, targets, BINARY, base, classes=[0, 1], graph=False,
                    on_refit_epoch=on_refit_epoch)  # fmt: skip
    assert kept.best_epoch is not None and kept.best_epoch > 3
    assert asked == [1, 2, 3]
    assert not stopped.refit and stopped.refit_stopped_at == 3
    for k in kept.state_dict:  # exactly the selected model, not a third of a refit
        np.testing.assert_array_equal(stopped.state_dict[k], kept.state_dict[k])
    assert stopped.metrics == kept.metrics
    # a refit asked at every epoch and never stopped is a whole refit
    whole = train(x, targets, BINARY, base, classes=[0, 1], graph=False,
                  on_refit_epoch=lambda epoch: True)  # fmt: skip
    assert whole.refit and whole.refit_stopped_at is None


def test_dropout_trains_in_train_mode_and_predicts_in_eval_mode() -> None:
    from core.model import Model

    x, y = moons(200)
    model_spec = {"layers": [32, 32, 1], "activation": "relu", "dropout": 0.3}
    result = train(x, y.reshape(-1, 1).astype(float), model_spec, spec(epochs=40),
                   classes=[0, 1], graph=False)  # fmt: skip
    assert result.architecture["dropout"] == 0.3
    assert result.metrics["accuracy"] > 0.85
    model = Model(result.architecture, result.state_dict)
    assert model.mlp.dropout is not None and not model.mlp.training
    first, second = model.predict(x[:20]), model.predict(x[:20])
    assert first == second  # no dropout at predict time
    # the flat metrics are eval-mode numbers: they match the model's own predictions
    accuracy = np.mean(np.asarray(model.predict(x)["predictions"]) == y)
    assert accuracy == pytest.approx(result.metrics["accuracy"], abs=0.02)


def test_adamw_decays_the_weights_apart_from_the_gradient() -> None:
    plain = train_moons(epochs=20, optimizer="adamw", weight_decay=0.0, dtype="float64")
    decayed = train_moons(epochs=20, optimizer="adamw", weight_decay=0.5, dtype="float64")
    norm = lambda r: sum(float(np.sum(v**2)) for v in r.state_dict.values())  # noqa: E731
    assert norm(decayed) < norm(plain)
    assert decayed.metrics["accuracy"] > 0.8


# ---- issue 21: the split made in bounded memory deals the rows as ever ---------------------


def reference_split(
    n: int, validation_split: float, rng: Any, test_split: float, strata: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`split_indices` as it was written before it was made in pieces: whole-length arrays
    and a stable sort of every row's position."""
    from core.spec import split_sizes

    _, n_val, n_test = split_sizes(n, validation_split, test_split)
    order = rng.permutation(np.arange(n, dtype=np.int32))
    if strata is not None and (n_val or n_test):
        position = np.empty(n)
        labels = strata[order]
        for label in np.unique(labels):
            members = np.nonzero(labels == label)[0]
            offset = rng.uniform(0, 1 / len(members))
            position[members] = offset + np.arange(len(members)) / len(members)
        order = order[np.argsort(position, kind="stable")]
    test = order[:n_test]
    val = order[n_test : n_test + n_val]
    return np.sort(order[n_test + n_val :]), np.sort(val), np.sort(test)


class TiedOffsets:
    """A generator whose class offsets are all 0 (its draws still taken): the classes'
    positions tie often, so the ties go by the rows' places in the permutation."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def shuffle(self, x: np.ndarray) -> None:
        self.rng.shuffle(x)

    def permutation(self, x: np.ndarray) -> np.ndarray:
        return self.rng.permutation(x)

    def uniform(self, low: float, high: float) -> float:
        self.rng.uniform(low, high)
        return 0.0


@pytest.mark.parametrize("make_rng", [np.random.default_rng, TiedOffsets])
def test_split_indices_deal_the_rows_as_the_whole_array_sort_did(make_rng: Any) -> None:
    for case in range(150):
        r = np.random.default_rng(case)
        n = int(r.integers(1, 400))
        k = int(r.integers(1, 7))
        strata = r.choice(k, size=n, p=r.dirichlet(np.ones(k)))
        strata = strata.astype(r.choice([np.int64, np.int8, np.uint16]))
        validation, test = float(r.choice([0.0, 0.1, 0.3])), float(r.choice([0.0, 0.15, 0.4]))
        for given in (strata, None):
            rng_a, rng_b = make_rng(case), make_rng(case)
            expected = reference_split(n, validation, rng_a, test, given)
            got = split_indices(n, validation, rng_b, test_split=test, strata=given)
            for a, b in zip(expected, got, strict=True):
                assert a.dtype == b.dtype
                np.testing.assert_array_equal(a, b)
            # the generator is left where it was (the epochs' shuffles draw from it next)
            inner_a, inner_b = getattr(rng_a, "rng", rng_a), getattr(rng_b, "rng", rng_b)
            assert inner_a.random() == inner_b.random()


def test_split_indices_take_any_strata_and_mapped_arrays(monkeypatch: pytest.MonkeyPatch) -> None:
    from core import rows

    r = np.random.default_rng(9)
    n = 5000
    kinds = {
        "many classes": r.integers(0, 300, n),
        "negative": r.integers(-3, 3, n),
        "floats": r.choice([0.5, -1.25, 7.0], n),
        "labels as text": r.choice(np.array(["b", "a", "c"]), n),
        "one class": np.zeros(n, dtype=np.int64),
    }
    for strata in kinds.values():
        expected = reference_split(n, 0.2, np.random.default_rng(1), 0.1, strata)
        for limit in (rows.ARRAY_IN_MEMORY_BYTES, 0):
            monkeypatch.setattr(rows, "ARRAY_IN_MEMORY_BYTES", limit)
            got = split_indices(n, 0.2, np.random.default_rng(1), test_split=0.1, strata=strata)
            for a, b in zip(expected, got, strict=True):
                np.testing.assert_array_equal(a, b)
