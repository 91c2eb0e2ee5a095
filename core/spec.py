"""What a job may ask for: the choices, the defaults, and the rules a spec must meet to train.

The API's schemas take their choices and defaults from here, and the training loop reads the
same defaults, so a default is written once. `SpecError.field` names the offending field in
the API's dotted form (`training.loss`).
"""

from __future__ import annotations

from typing import Any

from core import preprocessing

LOSSES = ("mse", "binary_cross_entropy", "cross_entropy")
OPTIMIZERS = ("sgd", "adam", "adamw")
ACTIVATIONS = ("tanh", "relu", "sigmoid")
DTYPES = ("float32", "float64")
LR_SCHEDULES = ("constant", "step", "cosine", "plateau")
DEFAULT_LEARNING_RATE = {"sgd": 0.05, "adam": 0.01, "adamw": 0.01}
#: with early stopping on and no validation split, this fraction of the rows validates
EARLY_STOPPING_SPLIT = 0.1
EARLY_STOPPING_DEFAULTS: dict[str, Any] = {
    "patience": 10,
    "min_delta": 0.0,
    "restore_best": True,
    "refit": True,
}
LR_SCHEDULE_DEFAULTS: dict[str, dict[str, Any]] = {
    "constant": {},
    "step": {"step_size": 30, "gamma": 0.1},
    "cosine": {"min_lr": 0.0},
    "plateau": {"factor": 0.1, "patience": 10},
}
#: training-spec defaults (the learning rate depends on the optimizer: DEFAULT_LEARNING_RATE)
TRAINING_DEFAULTS: dict[str, Any] = {
    "loss": None,  # None: picked from the targets (see `default_loss`)
    "optimizer": "sgd",
    "momentum": 0.0,
    "weight_decay": 0.0,
    "epochs": 100,
    "batch_size": 32,
    "seed": 0,
    "validation_split": 0.0,
    "test_split": 0.0,
    "early_stopping": None,
    "lr_schedule": {"type": "constant"},
    "class_weight": None,
    "dtype": "float32",
    "preprocessing": dict(preprocessing.DEFAULTS),
}
#: what each loss already applies to the last layer's output
LOSS_APPLIES = {"binary_cross_entropy": "sigmoid", "cross_entropy": "softmax"}


class SpecError(ValueError):
    """A spec that does not fit its dataset; `field` names the offending field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def default_loss(
    target_kind: str, n_targets: int, classes: list[Any] | None, out_width: int | None = None
) -> str:
    """The loss for a job that names none, from the targets and the last layer's width:
    string or boolean labels are classes (cross_entropy for more than 2, or for 2 with two
    outputs; else binary_cross_entropy); one column of integers is read as class labels when
    the last layer has one output per class (or one output for 2 classes), else as numbers;
    anything else trains mse."""
    k = len(classes) if classes is not None else 0
    if target_kind == "labels" and classes is not None:
        return "cross_entropy" if k > 2 or out_width == 2 else "binary_cross_entropy"
    if classes is not None and n_targets == 1 and k >= 2:
        if k == 2 and out_width in (None, 1):
            return "binary_cross_entropy"
        if out_width == k:
            return "cross_entropy"
    return "mse"


def output_width(loss: str, n_targets: int, classes: list[Any] | None) -> int:
    """The last layer width that a loss needs for this dataset, or raise `SpecError`."""
    if loss == "mse":
        return n_targets
    if classes is None or n_targets != 1:
        raise SpecError(
            "training.loss",
            f"{loss} needs one column of class labels (ints or strings) as targets",
        )
    if loss == "binary_cross_entropy":
        if len(classes) != 2:
            raise SpecError(
                "training.loss",
                f"binary_cross_entropy needs exactly 2 classes, the dataset has {len(classes)}; "
                "use cross_entropy",
            )
        return 1
    if loss == "cross_entropy":
        if len(classes) < 2:
            raise SpecError("training.loss", "cross_entropy needs at least 2 classes")
        return len(classes)
    raise SpecError("training.loss", f"unknown loss {loss!r}; expected one of {list(LOSSES)}")


def check_fits(
    loss: str, layers: list[int], target_kind: str, n_targets: int, classes: list[Any] | None
) -> None:
    """Raise `SpecError` unless `loss` and the last layer width fit the dataset's targets."""
    if loss == "mse" and target_kind != "numeric":
        raise SpecError("training.loss", "mse needs numeric targets; these are string labels")
    want = output_width(loss, n_targets, classes)
    if layers[-1] != want:
        raise SpecError(
            "model.layers",
            f"the last layer width must be {want} for {loss} on this dataset, not {layers[-1]}",
        )


def check_output_activation(loss: str, output_activation: str | None) -> None:
    """The classification losses take logits: an output activation would be applied twice."""
    applied = LOSS_APPLIES.get(loss)
    if applied is not None and output_activation is not None:
        raise SpecError(
            "model.output_activation",
            f"must be null for {loss}: the loss already applies {applied} to the outputs "
            f"(a {output_activation} before it trains a model that cannot fit)",
        )


def check_class_weight(class_weight: Any, loss: str, classes: list[Any] | None) -> None:
    if class_weight is None:
        return
    if loss == "mse":
        raise SpecError("training.class_weight", "only applies to classification losses")
    if class_weight == "balanced":
        return
    if not isinstance(class_weight, dict):
        raise SpecError("training.class_weight", 'must be null, "balanced" or {label: weight}')
    known = {str(c): c for c in classes or []}
    for key, weight in class_weight.items():
        if str(key) not in known:
            raise SpecError(
                "training.class_weight",
                f"{key!r} is not a class of this dataset; the classes are {classes}",
            )
        if not isinstance(weight, int | float) or isinstance(weight, bool) or not weight >= 0:
            raise SpecError("training.class_weight", f"the weight of {key!r} must be >= 0")


def class_weights(class_weight: Any, y: Any, classes: list[Any]) -> list[float] | None:
    """Per-class weights (index order) for `class_weight`, given training class indices `y`:
    "balanced" is n_samples / (n_classes * count), as scikit-learn's."""
    import numpy as np

    if class_weight is None:
        return None
    k = len(classes)
    if class_weight == "balanced":
        counts = np.bincount(np.asarray(y, dtype=np.int64).reshape(-1), minlength=k)
        counts = np.maximum(counts, 1)
        return (len(np.asarray(y).reshape(-1)) / (k * counts)).tolist()
    given = {str(key): float(w) for key, w in class_weight.items()}
    return [given.get(str(c), 1.0) for c in classes]


def split_sizes(n_samples: int, validation_split: float, test_split: float) -> tuple[int, int, int]:
    """(train, validation, test) row counts: a non-zero fraction holds at least one row, and
    training always keeps one (`check_splits` refuses specs where that is not enough)."""
    n_test = min(_count(n_samples, test_split), max(n_samples - 1, 0))
    rest = n_samples - n_test
    fraction = validation_split / (1 - test_split) if test_split else validation_split
    n_val = min(_count(rest, fraction), max(rest - 1, 0))
    return rest - n_val, n_val, n_test


def _count(n: int, fraction: float) -> int:
    if not fraction:
        return 0
    return max(1, round(n * fraction))


def effective_validation_split(training: dict[str, Any]) -> float:
    split = float(training.get("validation_split") or 0.0)
    if training.get("early_stopping") is not None and not split:
        return EARLY_STOPPING_SPLIT
    return split


def check_splits(training: dict[str, Any], n_samples: int) -> None:
    """Every split that is asked for holds a row, and at least one row is left to train on."""
    test_split = float(training.get("test_split") or 0.0)
    validation_split = effective_validation_split(training)
    if test_split + validation_split >= 1:
        raise SpecError(
            "training.test_split",
            f"test_split {test_split:g} plus validation_split {validation_split:g} leaves no "
            "rows to train on",
        )
    n_train, n_val, n_test = split_sizes(n_samples, validation_split, test_split)
    short = (validation_split and n_val < 1) or (test_split and n_test < 1)
    if n_train < 1 or short or n_train + n_val + n_test < n_samples:
        field = "training.validation_split"
        if training.get("early_stopping") is not None and not training.get("validation_split"):
            field = "training.early_stopping"
            raise SpecError(
                field,
                f"needs a validation split ({EARLY_STOPPING_SPLIT:g} of the rows by default) "
                f"but {n_samples} rows leave none to train on; add rows or turn it off",
            )
        raise SpecError(
            field, f"leaves no training rows out of {n_samples} (validation {n_val}, test {n_test})"
        )


def resolve_training(training: dict[str, Any]) -> dict[str, Any]:
    """A training spec with every default filled in (stored specs from before a field existed
    read as its default)."""
    out = {k: v for k, v in TRAINING_DEFAULTS.items()}
    out.update({k: v for k, v in training.items() if v is not None or k in ("batch_size",)})
    if out.get("learning_rate") is None:
        out["learning_rate"] = DEFAULT_LEARNING_RATE[out["optimizer"]]
    if out.get("early_stopping") is not None:
        out["early_stopping"] = {**EARLY_STOPPING_DEFAULTS, **out["early_stopping"]}
    schedule = dict(out.get("lr_schedule") or {"type": "constant"})
    schedule = {"type": schedule.get("type", "constant"), **schedule}
    out["lr_schedule"] = {**LR_SCHEDULE_DEFAULTS.get(schedule["type"], {}), **schedule}
    out["preprocessing"] = preprocessing.resolve(out.get("preprocessing"))
    return out
