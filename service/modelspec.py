"""What a stored model means: building its MLP, encoding targets for a loss, predicting.

Shared by the API (validation, `/predict`) and the workers (training), so that both read a
dataset and a model the same way. Pure functions over NumPy and `engine`: no Flask, no SQL.

Stored formats (see `service.models`):
- dataset features: float64 `(n_samples, n_features)`.
- dataset targets: `target_kind == "numeric"`: float64 `(n_samples, n_targets)`, and `classes`
  is the sorted list of distinct values when there is one column of integers (so it may serve as
  class labels); `target_kind == "labels"` (strings): int64 class indices `(n_samples,)` into
  `classes`.
- model architecture: `{"nin", "layers", "activation", "output_activation", "loss", "classes"}`.
- model weights: an `.npz` of `MLP.state_dict()`.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from engine.nn import MLP

LOSSES = ("mse", "binary_cross_entropy", "cross_entropy")
OPTIMIZERS = ("sgd", "adam")
ACTIVATIONS = ("tanh", "relu", "sigmoid")


class SpecError(ValueError):
    """A spec that does not fit its dataset; `field` names the offending field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def array_to_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def array_from_bytes(blob: bytes) -> np.ndarray:
    return np.load(io.BytesIO(blob), allow_pickle=False)


def weights_to_npz(state: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **state)
    return buf.getvalue()


def weights_from_npz(blob: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(blob), allow_pickle=False) as data:
        return {name: data[name] for name in data.files}


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
                f"binary_cross_entropy needs exactly 2 classes, the dataset has {len(classes)}",
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


def encode_targets(
    loss: str, target_kind: str, targets: np.ndarray, classes: list[Any] | None
) -> np.ndarray:
    """The array the loss compares predictions with: floats for mse/bce, indices for ce."""
    if loss == "mse":
        return targets.astype(np.float64).reshape(len(targets), -1)
    if target_kind == "labels":
        index = targets.astype(np.int64).reshape(-1)
    else:
        index = np.searchsorted(np.asarray(classes), targets.reshape(-1)).astype(np.int64)
    if loss == "binary_cross_entropy":
        return index.astype(np.float64).reshape(-1, 1)
    return index


def build_mlp(
    architecture: dict[str, Any], seed: int | None = None, dtype: Any = np.float64
) -> MLP:
    # Imported here so that validation (the API) works without loading the engine.
    from engine.nn import MLP

    return MLP(
        architecture["nin"],
        list(architecture["layers"]),
        activation=architecture.get("activation", "tanh"),
        output_activation=architecture.get("output_activation"),
        seed=seed,
        dtype=dtype,
    )


def predict(
    architecture: dict[str, Any], state: dict[str, np.ndarray], features: np.ndarray
) -> dict[str, Any]:
    """Predictions for `features` `(n, nin)`: values for mse, labels (+ probabilities) else."""
    import engine

    model = build_mlp(architecture)
    model.load_state_dict(state)
    with engine.no_grad():
        out = model(engine.Tensor(np.asarray(features, dtype=np.float64), requires_grad=False))
    logits = out.numpy().reshape(len(features), -1)
    loss = architecture["loss"]
    classes = architecture.get("classes")
    if loss == "mse":
        values = logits[:, 0] if logits.shape[1] == 1 else logits
        return {"predictions": values.tolist()}
    if loss == "binary_cross_entropy":
        p1 = 1.0 / (1.0 + np.exp(-np.clip(logits[:, 0], -500, 500)))
        probabilities = np.stack([1.0 - p1, p1], axis=1)
    else:
        shifted = logits - logits.max(axis=1, keepdims=True)
        e = np.exp(shifted)
        probabilities = e / e.sum(axis=1, keepdims=True)
    labels = [classes[i] for i in probabilities.argmax(axis=1)]
    return {"predictions": labels, "probabilities": probabilities.tolist()}
