"""What a job may ask for: the choices, the defaults, and the rules a spec must meet to train.

Every default a job's spec can take is written here once, and every choice (optimizers,
losses, activations, learning-rate schedules) comes from one registry each, so adding one is
one entry: the API's schemas, the training loop, the ONNX export, the client and the
dashboard (`GET /api/v1/spec/defaults`, `defaults()`) all read them from here.
`resolve_spec` turns what a user sent into the complete spec that is stored with the job and
trained (`resolve_training` also reads a stored spec from before a field existed as its
default). `SpecError.field` names the offending field in the API's dotted form
(`training.loss`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypedDict

from core import preprocessing
from engine import optim
from engine.optim import lr_scheduler


@dataclass(frozen=True)
class OptimizerEntry:
    """An optimizer: its default learning rate, the spec fields it takes besides the rate,
    and the engine class (called as `make(params, lr=..., **those fields)`)."""

    learning_rate: float
    params: tuple[str, ...]
    make: Callable[..., Any]


@dataclass(frozen=True)
class LossEntry:
    """A loss: what it applies to the last layer's output itself (`None`: nothing), and
    whether it trains on class labels."""

    applies: str | None
    classification: bool


@dataclass(frozen=True)
class ActivationEntry:
    """An activation (the engine's `Tensor.<name>()`) and its ONNX operator."""

    onnx_op: str


@dataclass(frozen=True)
class ScheduleEntry:
    """A learning-rate schedule: its parameters' defaults and the engine scheduler
    (`make(optimizer, resolved schedule, epochs)`; None: the rate stays); `monitors`: it steps
    on the monitored loss (a plateau), not once per epoch."""

    defaults: dict[str, Any]
    make: Callable[[Any, dict[str, Any], int], Any] | None
    monitors: bool = False


OPTIMIZER_REGISTRY: dict[str, OptimizerEntry] = {
    "sgd": OptimizerEntry(0.05, ("momentum", "weight_decay"), optim.SGD),
    "adam": OptimizerEntry(0.01, ("weight_decay",), optim.Adam),
    # decoupled weight decay (Loshchilov and Hutter)
    "adamw": OptimizerEntry(0.01, ("weight_decay",), optim.AdamW),
}
LOSS_REGISTRY: dict[str, LossEntry] = {
    "mse": LossEntry(applies=None, classification=False),
    "binary_cross_entropy": LossEntry(applies="sigmoid", classification=True),
    "cross_entropy": LossEntry(applies="softmax", classification=True),
}
ACTIVATION_REGISTRY: dict[str, ActivationEntry] = {
    "tanh": ActivationEntry("Tanh"),
    "relu": ActivationEntry("Relu"),
    "sigmoid": ActivationEntry("Sigmoid"),
}
LR_SCHEDULE_REGISTRY: dict[str, ScheduleEntry] = {
    "constant": ScheduleEntry({}, None),
    "step": ScheduleEntry(
        {"step_size": 30, "gamma": 0.1},
        lambda opt, s, epochs: lr_scheduler.StepLR(
            opt, step_size=int(s["step_size"]), gamma=float(s["gamma"])
        ),
    ),
    "cosine": ScheduleEntry(
        {"min_lr": 0.0},
        lambda opt, s, epochs: lr_scheduler.CosineAnnealingLR(
            opt, T_max=max(epochs - 1, 1), eta_min=float(s["min_lr"])
        ),
    ),
    "plateau": ScheduleEntry(
        {"factor": 0.1, "patience": 10},
        lambda opt, s, epochs: lr_scheduler.ReduceLROnPlateau(
            opt, factor=float(s["factor"]), patience=int(s["patience"])
        ),
        monitors=True,
    ),
}

LOSSES = tuple(LOSS_REGISTRY)
OPTIMIZERS = tuple(OPTIMIZER_REGISTRY)
ACTIVATIONS = tuple(ACTIVATION_REGISTRY)
DTYPES = ("float32", "float64")
LR_SCHEDULES = tuple(LR_SCHEDULE_REGISTRY)
DEFAULT_LEARNING_RATE = {name: entry.learning_rate for name, entry in OPTIMIZER_REGISTRY.items()}
#: with early stopping on and no validation split, this fraction of the rows validates
EARLY_STOPPING_SPLIT = 0.1
EARLY_STOPPING_DEFAULTS: dict[str, Any] = {
    "patience": 10,
    "min_delta": 0.0,
    "restore_best": True,
    "refit": True,
}
LR_SCHEDULE_DEFAULTS: dict[str, dict[str, Any]] = {
    name: dict(entry.defaults) for name, entry in LR_SCHEDULE_REGISTRY.items()
}
#: the schedule a job that names none trains with
DEFAULT_LR_SCHEDULE = "constant"
#: model-spec defaults (`layers` has none: a job must give it)
MODEL_DEFAULTS: dict[str, Any] = {
    "activation": "tanh",
    "output_activation": None,
    "dropout": 0.0,
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
    "lr_schedule": {"type": DEFAULT_LR_SCHEDULE},
    "class_weight": None,
    "dtype": "float32",
    "preprocessing": dict(preprocessing.DEFAULTS),
}
#: a model saved before its architecture recorded a dtype trained (and predicts) in this one;
#: a job's spec without one trains in `TRAINING_DEFAULTS["dtype"]`
LEGACY_MODEL_DTYPE = "float64"
#: what each loss already applies to the last layer's output
LOSS_APPLIES = {name: e.applies for name, e in LOSS_REGISTRY.items() if e.applies is not None}
#: the stored model spec's keys, in order
MODEL_KEYS = ("layers", "activation", "output_activation", "dropout")
#: the stored training spec's keys, in order (every default filled)
TRAINING_KEYS = (
    "loss",
    "optimizer",
    "learning_rate",
    "momentum",
    "weight_decay",
    "epochs",
    "batch_size",
    "seed",
    "validation_split",
    "test_split",
    "early_stopping",
    "lr_schedule",
    "class_weight",
    "dtype",
    "preprocessing",
)


class ModelSpec(TypedDict):
    """A resolved model spec (what a job stores)."""

    layers: list[int]
    activation: str
    output_activation: str | None
    dropout: float


class TrainingSpec(TypedDict):
    """A resolved training spec (what a job stores and trains with)."""

    loss: str | None
    optimizer: str
    learning_rate: float
    momentum: float
    weight_decay: float
    epochs: int
    batch_size: int | None
    seed: int
    validation_split: float
    test_split: float
    early_stopping: dict[str, Any] | None
    lr_schedule: dict[str, Any]
    class_weight: Any
    dtype: str
    preprocessing: dict[str, str]


def defaults() -> dict[str, Any]:
    """Every choice and default of a spec, as JSON (`GET /api/v1/spec/defaults`)."""
    return {
        "choices": {
            "loss": list(LOSSES),
            "optimizer": list(OPTIMIZERS),
            "activation": list(ACTIVATIONS),
            "dtype": list(DTYPES),
            "lr_schedule": list(LR_SCHEDULES),
            "preprocessing": {k: list(v) for k, v in preprocessing.CHOICES.items()},
        },
        "model": dict(MODEL_DEFAULTS),
        "training": {**TRAINING_DEFAULTS, "preprocessing": dict(preprocessing.DEFAULTS)},
        "learning_rate": dict(DEFAULT_LEARNING_RATE),
        "optimizer_params": {name: list(e.params) for name, e in OPTIMIZER_REGISTRY.items()},
        "lr_schedule": {name: dict(d) for name, d in LR_SCHEDULE_DEFAULTS.items()},
        "early_stopping": dict(EARLY_STOPPING_DEFAULTS),
        "early_stopping_split": EARLY_STOPPING_SPLIT,
        "loss_applies": dict(LOSS_APPLIES),
    }


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
        flat = np.asarray(y).reshape(-1)  # a view of the (maybe mapped) training targets
        counts = np.zeros(k, dtype=np.int64)
        step = 1 << 20  # counted a piece at a time: no whole int64 copy of the targets
        for start in range(0, len(flat), step):
            counts += np.bincount(flat[start : start + step].astype(np.int64), minlength=k)
        counts = np.maximum(counts, 1)
        return (len(flat) / (k * counts)).tolist()
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


def resolve_schedule(schedule: dict[str, Any] | None) -> dict[str, Any]:
    """`training.lr_schedule` with its type and that type's parameters filled in."""
    given = dict(schedule or {})
    kind = given.get("type", DEFAULT_LR_SCHEDULE)
    return {**LR_SCHEDULE_DEFAULTS.get(kind, {}), "type": kind, **given}


def resolve_model(model: dict[str, Any]) -> ModelSpec:
    """A model spec with every default filled in (exactly `MODEL_KEYS`)."""
    out: dict[str, Any] = {"layers": [int(w) for w in model["layers"]]}
    for key, default in MODEL_DEFAULTS.items():
        value = model.get(key)
        out[key] = default if value is None else value
    return out  # type: ignore[return-value]


def learning_rate(training: dict[str, Any]) -> float:
    """The learning rate given, else the default of the optimizer named (else the default
    optimizer's)."""
    given = training.get("learning_rate")
    if given is not None:
        return given
    return DEFAULT_LEARNING_RATE[training.get("optimizer") or TRAINING_DEFAULTS["optimizer"]]


def resolve_training(training: dict[str, Any]) -> dict[str, Any]:
    """A training spec with every default filled in (stored specs from before a field existed
    read as its default)."""
    out = {k: v for k, v in TRAINING_DEFAULTS.items()}
    out.update({k: v for k, v in training.items() if v is not None or k in ("batch_size",)})
    out["learning_rate"] = learning_rate(out)
    if out.get("early_stopping") is not None:
        out["early_stopping"] = {**EARLY_STOPPING_DEFAULTS, **out["early_stopping"]}
    out["lr_schedule"] = resolve_schedule(out.get("lr_schedule"))
    out["preprocessing"] = preprocessing.resolve(out.get("preprocessing"))
    return out


def resolve_spec(
    model: dict[str, Any],
    training: dict[str, Any],
    target_kind: str,
    n_targets: int,
    classes: list[Any] | None,
) -> tuple[ModelSpec, TrainingSpec]:
    """The model and training specs a job stores: exactly `MODEL_KEYS` and `TRAINING_KEYS`,
    every default filled, the loss (when not given) picked from the targets. The validation
    split stays as given until the spec is checked (`check_splits` names early stopping when
    its default split leaves no rows); `effective_validation_split` fills it then."""
    resolved_model = resolve_model(model)
    t = resolve_training(training)
    if t["loss"] is None:
        t["loss"] = default_loss(target_kind, n_targets, classes, resolved_model["layers"][-1])
    return resolved_model, {key: t[key] for key in TRAINING_KEYS}  # type: ignore[return-value]
