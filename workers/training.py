"""Training without Celery or a database: spec + arrays -> engine MLP -> trained result.

The Celery task (`workers.tasks`) is thin glue around `train`: it loads the dataset, passes an
`on_epoch` callback that writes each epoch to the store and reads the cancel flag, and saves the
`TrainResult`. Everything here is deterministic for a given seed: the validation split and the
shuffling come from `np.random.default_rng(seed)`, the initial weights from the MLP's own seed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import engine
from engine import nn, optim
from service.modelspec import build_mlp, encode_targets

#: `on_epoch(epoch, loss, val_loss)` after each finished epoch (1-based); False stops training.
EpochCallback = Callable[[int, float, float | None], bool]

#: How many samples the saved computational-graph picture shows.
GRAPH_SAMPLES = 3


class TrainingError(Exception):
    """Training could not go on; `loss_history` holds the epochs that did finish."""

    def __init__(
        self,
        message: str,
        loss_history: list[float] | None = None,
        val_loss_history: list[float] | None = None,
    ) -> None:
        super().__init__(message)
        self.loss_history = loss_history or []
        self.val_loss_history = val_loss_history or []


class DivergedError(TrainingError):
    """The loss became NaN or infinite."""


@dataclass
class TrainResult:
    architecture: dict[str, Any]
    state_dict: dict[str, np.ndarray]
    loss_history: list[float] = field(default_factory=list)
    val_loss_history: list[float] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    #: False when `on_epoch` asked to stop before the last epoch (cancellation).
    completed: bool = True
    graph_svg: str | None = None


def architecture_for(
    nin: int,
    model_spec: dict[str, Any],
    loss: str,
    target_kind: str,
    classes: list[Any] | None,
) -> dict[str, Any]:
    """What the stored model needs to be rebuilt and to turn outputs into predictions."""
    return {
        "nin": int(nin),
        "layers": [int(w) for w in model_spec["layers"]],
        "activation": model_spec.get("activation") or "tanh",
        "output_activation": model_spec.get("output_activation"),
        "loss": loss,
        "target_kind": target_kind,
        "classes": classes if loss != "mse" else None,
    }


def split_indices(
    n: int, validation_split: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """A seeded random split into (train, validation) index arrays; train is never empty."""
    order = rng.permutation(n)
    n_val = int(n * validation_split) if validation_split else 0
    if validation_split and n_val == 0 and n >= 2:
        n_val = 1
    n_val = min(n_val, n - 1)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def _loss_fn(loss: str) -> Callable[[engine.Tensor, engine.Tensor], engine.Tensor]:
    if loss == "mse":
        return nn.mse_loss
    if loss == "binary_cross_entropy":
        return nn.binary_cross_entropy_with_logits
    if loss == "cross_entropy":
        return nn.cross_entropy
    raise ValueError(f"unknown loss {loss!r}")


def _optimizer(params: list[engine.Tensor], spec: dict[str, Any]) -> Any:
    name = spec.get("optimizer", "sgd")
    lr = float(spec.get("learning_rate", 0.01))
    weight_decay = float(spec.get("weight_decay") or 0.0)
    if name == "sgd":
        momentum = float(spec.get("momentum") or 0.0)
        return optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adam":
        return optim.Adam(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}")


def _target_tensor(y: np.ndarray) -> engine.Tensor:
    return engine.Tensor(y, requires_grad=False)


def evaluate(model: nn.MLP, loss: str, x: np.ndarray, y: np.ndarray) -> tuple[float, float | None]:
    """(loss, accuracy or None for mse) of `model` on `x`, `y` (encoded targets)."""
    with engine.no_grad():
        out = model(engine.Tensor(x, requires_grad=False))
        value = float(_loss_fn(loss)(out, _target_tensor(y)).item())
    logits = out.numpy().reshape(len(x), -1)
    if loss == "binary_cross_entropy":
        return value, float(np.mean((logits[:, 0] > 0) == (y.reshape(-1) > 0.5)))
    if loss == "cross_entropy":
        return value, float(np.mean(logits.argmax(axis=1) == y.reshape(-1)))
    return value, None


def train(
    features: np.ndarray,
    targets: np.ndarray,
    model_spec: dict[str, Any],
    training_spec: dict[str, Any],
    *,
    target_kind: str = "numeric",
    classes: list[Any] | None = None,
    on_epoch: EpochCallback | None = None,
    graph: bool = True,
) -> TrainResult:
    """Train an MLP on a dataset as stored (`service.models.Dataset` arrays) and return it.

    Raises `DivergedError` when a loss turns NaN or inf, with the finished epochs' history.
    """
    # Overflow is expected when training diverges; it is reported as a non-finite loss.
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        return _train(
            features, targets, model_spec, training_spec, target_kind, classes, on_epoch, graph
        )


def _train(
    features: np.ndarray,
    targets: np.ndarray,
    model_spec: dict[str, Any],
    training_spec: dict[str, Any],
    target_kind: str,
    classes: list[Any] | None,
    on_epoch: EpochCallback | None,
    graph: bool,
) -> TrainResult:
    loss_name = training_spec.get("loss", "mse")
    x_all = np.asarray(features, dtype=np.float64)
    if x_all.ndim != 2 or len(x_all) == 0:
        raise ValueError(f"features must be a non-empty 2-D array, got shape {x_all.shape}")
    y_all = encode_targets(loss_name, target_kind, np.asarray(targets), classes)
    if len(y_all) != len(x_all):
        raise ValueError(f"{len(x_all)} feature rows but {len(y_all)} targets")

    architecture = architecture_for(x_all.shape[1], model_spec, loss_name, target_kind, classes)
    seed = training_spec.get("seed")
    rng = np.random.default_rng(seed)
    model = build_mlp(architecture, seed=seed)
    params = model.parameters()
    opt = _optimizer(params, training_spec)
    loss_fn = _loss_fn(loss_name)

    train_idx, val_idx = split_indices(
        len(x_all), float(training_spec.get("validation_split") or 0.0), rng
    )
    x_train, y_train = x_all[train_idx], y_all[train_idx]
    x_val, y_val = x_all[val_idx], y_all[val_idx]
    n = len(x_train)
    batch_size = training_spec.get("batch_size") or n
    batch_size = max(1, min(int(batch_size), n))
    epochs = int(training_spec.get("epochs", 100))

    result = TrainResult(architecture=architecture, state_dict={})
    for epoch in range(1, epochs + 1):
        order = rng.permutation(n) if batch_size < n else np.arange(n)
        total = 0.0
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            opt.zero_grad()
            out = model(engine.Tensor(x_train[idx], requires_grad=False))
            loss = loss_fn(out, _target_tensor(y_train[idx]))
            value = float(loss.item())
            if not math.isfinite(value):
                raise DivergedError(
                    f"loss became {_nonfinite(value)} at epoch {epoch}; "
                    "try a smaller learning_rate",
                    result.loss_history,
                    result.val_loss_history,
                )
            loss.backward()
            opt.step()
            total += value * len(idx)
        epoch_loss = total / n
        val_loss = None
        if len(x_val):
            val_loss, _ = evaluate(model, loss_name, x_val, y_val)
            if not math.isfinite(val_loss):
                raise DivergedError(
                    f"validation loss became {_nonfinite(val_loss)} at epoch {epoch}; "
                    "try a smaller learning_rate",
                    result.loss_history,
                    result.val_loss_history,
                )
            result.val_loss_history.append(val_loss)
        result.loss_history.append(epoch_loss)
        if on_epoch is not None and on_epoch(epoch, epoch_loss, val_loss) is False:
            result.completed = False
            break

    result.state_dict = {k: np.array(v, copy=True) for k, v in model.state_dict().items()}
    if not result.completed:
        return result

    final_loss, accuracy = evaluate(model, loss_name, x_train, y_train)
    if not math.isfinite(final_loss):
        raise DivergedError(
            f"loss became {_nonfinite(final_loss)} at epoch {epochs}; try a smaller learning_rate",
            result.loss_history,
            result.val_loss_history,
        )
    result.metrics = {"loss": final_loss}
    if accuracy is not None:
        result.metrics["accuracy"] = accuracy
    if len(x_val):
        val_loss, val_accuracy = evaluate(model, loss_name, x_val, y_val)
        result.metrics["val_loss"] = val_loss
        if val_accuracy is not None:
            result.metrics["val_accuracy"] = val_accuracy
    if graph:
        result.graph_svg = graph_svg(model, loss_name, x_train, y_train)
    return result


def graph_svg(
    model: nn.MLP, loss: str, x: np.ndarray, y: np.ndarray, samples: int = GRAPH_SAMPLES
) -> str:
    """The computational graph (forward and loss, gradients filled) on a few samples, as SVG."""
    from engine.viz import draw_dot

    k = min(samples, len(x))
    inputs = engine.Tensor(x[:k], requires_grad=False, label="x")
    out = model(inputs)
    value = _loss_fn(loss)(out, _target_tensor(y[:k]))
    value.label = "loss"
    value.backward()
    # Top to bottom: a layer's wide weight and activation records side by side would make an
    # LR picture many thousand pixels wide; stacked they read in a browser.
    svg = draw_dot(value, rankdir="TB").pipe(format="svg")
    model.zero_grad()
    return svg.decode("utf-8") if isinstance(svg, bytes) else svg


def _nonfinite(value: float) -> str:
    return "NaN" if math.isnan(value) else "inf"
