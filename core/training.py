"""Training without Celery or a database: table + targets + spec -> trained, evaluated model.

Steps, all deterministic for a given seed (`np.random.default_rng(seed)`):
1. Split the rows into train / validation / test (stratified by class for classification).
   Early stopping with no `validation_split` validates on `EARLY_STOPPING_SPLIT` of the rows.
2. Fit the preprocessing on the training rows only (never on validation or test rows) and
   encode every split with it; for mse the target is standardized too.
3. Train the MLP with mini-batches, the learning-rate schedule, class weights and early
   stopping on the validation loss (the best epoch's weights are restored if asked).
4. Evaluate the final model on each split (`core.metrics`, in the target's own units).

The Celery task (`workers.tasks`) passes an `on_epoch` callback that records each epoch and
reads the cancel flag, and an `on_refit_epoch` callback that can stop a refit (the task's soft
time limit: the early-stopped model is kept; a cancel).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import engine
from core import metrics as metrics_mod
from core import rows as rows_mod
from core.model import Model, build_mlp, probabilities_from_logits
from core.preprocessing import Preprocessor
from core.rows import InMemory, RowSource
from core.spec import (
    LR_SCHEDULE_REGISTRY,
    OPTIMIZER_REGISTRY,
    class_weights,
    default_loss,
    effective_validation_split,
    resolve_model,
    resolve_schedule,
    resolve_training,
    split_sizes,
)
from core.table import Table, numeric_column
from engine import nn

#: `on_epoch(epoch, loss, val_loss)` after each finished epoch (1-based); False stops training.
EpochCallback = Callable[[int, float, float | None], bool]
#: `on_refit_epoch(epoch)` after each epoch of the refit; False stops the refit, and the model
#: early stopping selected (the best epoch's weights, trained on the training rows) is kept.
RefitCallback = Callable[[int], bool]

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
    #: the flat metrics: `loss`, `accuracy`, `val_loss`, `val_accuracy` (as before evaluation)
    metrics: dict[str, float] = field(default_factory=dict)
    #: `{"train": {...}, "validation": {...}, "test": {...}}`, a split only when it exists
    evaluation: dict[str, Any] = field(default_factory=dict)
    best_epoch: int | None = None
    stopped_epoch: int | None = None
    #: "completed", "early_stopping" or "cancelled"
    stop_reason: str = "completed"
    #: False when `on_epoch` asked to stop before the last epoch (cancellation).
    completed: bool = True
    #: early stopping chose `best_epoch`, then the saved model was trained again on the
    #: training and validation rows together for that many epochs
    refit: bool = False
    #: the refit was stopped (`on_refit_epoch`) after this many epochs: the saved model is the
    #: one early stopping selected
    refit_stopped_at: int | None = None
    graph_svg: str | None = None


def as_table(features: Table | np.ndarray) -> Table:
    """A table for a plain numeric matrix (columns x0, x1, ...)."""
    if isinstance(features, Table):
        return features
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"features must be a non-empty 2-D array, got shape {x.shape}")
    return Table([numeric_column(f"x{j}", x[:, j]) for j in range(x.shape[1])])


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


def split_indices(
    n: int,
    validation_split: float,
    rng: np.random.Generator,
    *,
    test_split: float = 0.0,
    strata: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeded (train, validation, test) index arrays, sorted; stratified by `strata` (class
    indices) when given, so each split keeps the class proportions as far as counts allow.
    They are views of one array laid out train | validation | test (`split_order`)."""
    order, (n_train, n_val, _) = split_order(
        n, validation_split, rng, test_split=test_split, strata=strata
    )
    return order[:n_train], order[n_train : n_train + n_val], order[n_train + n_val :]


def split_order(
    n: int,
    validation_split: float,
    rng: np.random.Generator,
    *,
    test_split: float = 0.0,
    strata: np.ndarray | None = None,
) -> tuple[np.ndarray, tuple[int, int, int]]:
    """Every row index once, train | validation | test, each split sorted, and the three
    sizes: `split_indices`'s splits in one `core.rows.allocate_rows` array, made without a
    whole-length temporary beside it.

    The rows are dealt as ever: a seeded permutation (int32 where it fits); with `strata`,
    each class's rows in that order spread evenly over [0, 1) from a seeded offset, and the
    classes interleaved by those positions (a stable sort of them), test first, then
    validation, training last. Here the interleaving is not sorted out row by row: only where
    the two cuts fall in each class is found (`_merge_cut`), and one pass over the permutation
    deals each row by its rank within its class. The same draws, the same splits.
    """
    n_train, n_val, n_test = split_sizes(n, validation_split, test_split)
    index_type = rows_mod.index_dtype(n)
    permutation = rows_mod.shuffled_range(rows_mod.allocate_rows((n,), index_type), rng)
    order = rows_mod.allocate_rows((n,), index_type)
    if strata is not None and (n_val or n_test):
        _deal_stratified(permutation, strata, rng, (n_train, n_val, n_test), order)
    else:
        order[:n_train] = permutation[n_test + n_val :]
        order[n_train : n_train + n_val] = permutation[n_test : n_test + n_val]
        order[n_train + n_val :] = permutation[:n_test]
    del permutation
    for part in (slice(0, n_train), slice(n_train, n_train + n_val), slice(n_train + n_val, n)):
        order[part].sort()  # in place
    return order, (n_train, n_val, n_test)


def _codes(strata: np.ndarray, n: int) -> tuple[np.ndarray, int]:
    """Strata as class codes 0..k-1 in the strata's own order, and k: small non-negative
    integers as they are (read a piece at a time); anything else through `np.unique`."""
    flat = strata.reshape(-1)
    if len(flat) != n:
        raise ValueError(f"{len(flat)} strata for {n} rows")
    if np.issubdtype(flat.dtype, np.integer):
        low, high = 0, -1
        for rows in rows_mod.pieces(n):
            piece = flat[rows]
            if len(piece):
                low, high = min(low, int(piece.min())), max(high, int(piece.max()))
        if low >= 0 and high <= n:
            return flat, high + 1
    levels, inverse = np.unique(flat, return_inverse=True)
    return inverse.reshape(-1), len(levels)


def _code_dtype(k: int) -> np.dtype:
    for dtype in (np.uint8, np.uint16, np.uint32):
        if k <= np.iinfo(dtype).max + 1:
            return np.dtype(dtype)
    return np.dtype(np.int64)


def _deal_stratified(
    permutation: np.ndarray,
    strata: np.ndarray,
    rng: np.random.Generator,
    sizes: tuple[int, int, int],
    order: np.ndarray,
) -> None:
    """Fill `order` (train | validation | test) with the stratified split of the rows
    `permutation` lists (see `split_order`)."""
    n = len(permutation)
    n_train, n_val, n_test = sizes
    codes, k = _codes(np.asarray(strata), n)
    labels = rows_mod.take_into(rows_mod.allocate_rows((n,), _code_dtype(k)), codes, permutation)
    counts = np.zeros(k, dtype=np.int64)
    for rows in rows_mod.pieces(n):
        counts += np.bincount(labels[rows], minlength=k)
    present = np.flatnonzero(counts)
    lens = counts[present]
    # One offset per class present, drawn in the classes' order (as ever).
    offsets = np.array([rng.uniform(0, 1 / int(size)) for size in lens], dtype=np.float64)

    def position_in_permutation(member: int, rank: int) -> int:
        """Where the `rank`-th row (0-based) of class `present[member]` is in `permutation`."""
        label, seen = present[member], 0
        for rows in rows_mod.pieces(n):
            hits = np.flatnonzero(labels[rows] == label)
            if seen + len(hits) > rank:
                return rows.start + int(hits[rank - seen])
            seen += len(hits)
        raise AssertionError("fewer rows of a class than counted")

    # Per class, how many of its rows (in permutation order) go to test, and to test or
    # validation: the cuts of the classes' interleaving after n_test and n_test + n_val rows.
    to_test = np.zeros(k, dtype=np.int64)
    to_front = np.zeros(k, dtype=np.int64)
    to_test[present] = _merge_cut(lens, offsets, n_test, position_in_permutation)
    to_front[present] = _merge_cut(lens, offsets, n_test + n_val, position_in_permutation)

    seen = np.zeros(k, dtype=np.int64)
    at = [0, n_train, n_train + n_val]  # where the next row of train, validation, test goes
    for rows in rows_mod.pieces(n, 1 << 18):
        label = labels[rows].astype(np.intp)
        by_class = np.argsort(label, kind="stable")
        sorted_label = label[by_class]
        rank = np.empty(len(label), dtype=np.int64)
        within = np.arange(len(label)) - np.searchsorted(sorted_label, sorted_label, "left")
        rank[by_class] = seen[sorted_label] + within
        seen += np.bincount(label, minlength=k)
        index = permutation[rows]
        test = rank < to_test[label]
        validation = ~test & (rank < to_front[label])
        for part, mask in enumerate((~(test | validation), validation, test)):
            taken = index[mask]
            order[at[part] : at[part] + len(taken)] = taken
            at[part] += len(taken)
    assert at == [n_train, n_train + n_val, n], "the stratified split lost rows"


def _merge_cut(
    lens: np.ndarray,
    offsets: np.ndarray,
    m: int,
    position_in_permutation: Callable[[int, int], int],
) -> np.ndarray:
    """How many rows of each class are among the first `m` of the classes' interleaving.

    Class c's row j (0-based, in permutation order) sits at `offsets[c] + j / lens[c]`,
    computed as NumPy computes `offset + np.arange(len) / len` (float64, correctly rounded, so
    the same bits), strictly increasing in j; the interleaving is the stable sort of those
    positions over the permutation, so equal positions go by where their rows are in the
    permutation (`position_in_permutation(c, j)`). Found by bisecting float64 values (by their
    bit patterns) for the smallest position p with at least m rows at or below it, each
    class's count at p by bisecting j."""
    total = int(lens.sum())
    if m <= 0:
        return np.zeros(len(lens), dtype=np.int64)
    if m >= total:
        return lens.astype(np.int64)

    def count(t: float, strict: bool) -> np.ndarray:
        """Per class, how many of its rows sit below `t` (at or below unless `strict`)."""
        lo = np.zeros(len(lens), dtype=np.int64)
        hi = lens.astype(np.int64)
        while True:
            active = lo < hi
            if not active.any():
                return lo
            mid = (lo + hi) // 2
            position = offsets + mid / lens
            below = position < t if strict else position <= t
            lo = np.where(active & below, mid + 1, lo)
            hi = np.where(active & ~below, mid, hi)

    bits = np.array([0, 2.0], dtype=np.float64).view(np.int64)  # every position is in [0, 2)
    lo, hi = int(bits[0]), int(bits[1])
    while lo < hi:
        mid = (lo + hi) // 2
        if int(count(float(np.int64(mid).view(np.float64)), False).sum()) >= m:
            hi = mid
        else:
            lo = mid + 1
    cut = float(np.int64(hi).view(np.float64))
    below, upto = count(cut, True), count(cut, False)
    need = m - int(below.sum())
    tied = np.flatnonzero(upto > below)  # the classes with a row exactly at the cut
    if need >= len(tied):
        return upto
    first = sorted(tied, key=lambda c: position_in_permutation(int(c), int(below[c])))[:need]
    below[first] += 1
    return below


def loss_function(
    loss: str, weights: list[float] | None = None
) -> Callable[[engine.Tensor, np.ndarray], engine.Tensor]:
    """`f(outputs, encoded targets)` -> mean loss; with class `weights`, the weighted mean
    `sum(w_i * l_i) / sum(w_i)` (as PyTorch's `weight=` with reduction "mean")."""
    if loss == "mse":
        return lambda out, y: nn.mse_loss(out, engine.Tensor(y, requires_grad=False))
    if weights is None:
        if loss == "binary_cross_entropy":
            return lambda out, y: nn.binary_cross_entropy_with_logits(
                out, engine.Tensor(y, requires_grad=False)
            )
        return lambda out, y: nn.cross_entropy(out, y)
    w = np.asarray(weights, dtype=np.float64)

    def weighted(out: engine.Tensor, y: np.ndarray) -> engine.Tensor:
        idx = y.reshape(-1).astype(np.int64)
        if loss == "binary_cross_entropy":
            # two-class logits [0, x]: softmax of them is [1 - sigmoid(x), sigmoid(x)]
            out = engine.concat([out * 0.0, out], axis=1)
        sample = w[idx]
        target = np.zeros(out.shape)
        target[np.arange(len(idx)), idx] = sample * (len(idx) / max(sample.sum(), 1e-12))
        return nn.cross_entropy(out, target.astype(out.data.dtype))

    return weighted


def make_optimizer(params: list[engine.Tensor], spec: dict[str, Any]) -> Any:
    """The engine optimizer `spec["optimizer"]` names (`OPTIMIZER_REGISTRY`), with the
    resolved spec's learning rate and the parameters that optimizer takes."""
    entry = OPTIMIZER_REGISTRY.get(spec["optimizer"])
    if entry is None:
        raise ValueError(f"unknown optimizer {spec['optimizer']!r}")
    extra = {name: float(spec[name]) for name in entry.params}
    return entry.make(params, lr=float(spec["learning_rate"]), **extra)


class LRSchedule:
    """`training.lr_schedule` (resolved) on the engine's schedulers (`LR_SCHEDULE_REGISTRY`,
    PyTorch's semantics): epoch 1 runs at the base rate, and each finished epoch steps the
    scheduler (on a plateau of the monitored loss: the validation loss when there is one, else
    the training loss). `step` multiplies by `gamma` every `step_size` epochs; `cosine` anneals
    to `min_lr` at the last epoch; `plateau` multiplies by `factor` after `patience` epochs
    without improvement."""

    def __init__(self, spec: dict[str, Any], optimizer: Any, epochs: int) -> None:
        spec = resolve_schedule(spec)
        self.kind = spec["type"]
        self.optimizer = optimizer
        entry = LR_SCHEDULE_REGISTRY[self.kind]
        self.monitors = entry.monitors
        self.scheduler: Any = None if entry.make is None else entry.make(optimizer, spec, epochs)

    @property
    def lr(self) -> float:
        return float(self.optimizer.lr)

    def after_epoch(self, monitored: float) -> None:
        if self.scheduler is None:
            return
        if self.monitors:
            self.scheduler.step(monitored)
        else:
            self.scheduler.step()


class EarlyStopping:
    """Stop after `patience` epochs without the validation loss improving by `min_delta`."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.patience = int(spec["patience"])
        self.min_delta = float(spec["min_delta"])
        self.restore_best = bool(spec["restore_best"])
        self.best = math.inf
        self.best_epoch: int | None = None
        self.best_state: dict[str, np.ndarray] | None = None
        self._wait = 0

    def update(self, epoch: int, val_loss: float, model: nn.MLP) -> bool:
        """Record the epoch; True when training should stop."""
        if val_loss < self.best - self.min_delta:
            self.best, self.best_epoch, self._wait = val_loss, epoch, 0
            if self.restore_best:
                self.best_state = model.state_dict()
            return False
        self._wait += 1
        return self._wait >= self.patience


def train(
    features: Table | np.ndarray | RowSource,
    targets: np.ndarray | None,
    model_spec: dict[str, Any],
    training_spec: dict[str, Any],
    *,
    target_kind: str = "numeric",
    classes: list[Any] | None = None,
    on_epoch: EpochCallback | None = None,
    on_refit_epoch: RefitCallback | None = None,
    graph: bool = True,
) -> TrainResult:
    """Train an MLP on a dataset (a `Table` or a numeric matrix with its `targets`, or a
    `core.rows.RowSource` that streams both) and return it evaluated.

    Raises `DivergedError` when a loss turns NaN or inf, with the finished epochs' history.
    """
    # Overflow is expected when training diverges; it is reported as a non-finite loss.
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        if hasattr(features, "chunks"):
            source: RowSource = features  # type: ignore[assignment]
        else:
            source = InMemory(as_table(features), np.asarray(targets))
        return _Run(
            source,
            resolve_model(model_spec),
            resolve_training(training_spec),
            target_kind,
            classes,
            on_epoch,
            on_refit_epoch,
        ).run(graph)


class _Run:
    def __init__(
        self,
        source: RowSource,
        model_spec: dict[str, Any],
        spec: dict[str, Any],
        target_kind: str,
        classes: list[Any] | None,
        on_epoch: EpochCallback | None,
        on_refit_epoch: RefitCallback | None = None,
    ) -> None:
        self.spec = spec
        self.on_refit_epoch = on_refit_epoch
        # The targets a chunk at a time where the source reads them so (`target_chunks`).
        chunks = rows_mod.target_chunks(source)
        first = next(chunks, None)
        if first is None:
            first = np.zeros(0)
        n_targets = 1 if first.ndim == 1 else int(first.shape[1])
        self.loss = spec["loss"] or default_loss(
            target_kind, n_targets, classes, int(model_spec["layers"][-1])
        )
        self.classes = classes
        self.on_epoch = on_epoch
        self.dtype = np.dtype(spec["dtype"])
        n = source.n_rows
        # Every per-row array kept from here on is `allocate_rows` storage (a memory map once
        # large), filled a piece at a time: the worker's own memory does not grow with the rows.
        # First the targets in the source's row order: class indices in the smallest integer
        # type, or float64 values.
        by_row = self._target_values(itertools.chain([first], chunks), n, n_targets, target_kind)
        del first
        self.rng = np.random.default_rng(spec.get("seed"))
        # One index array, train | validation | test, each split sorted; the splits are views.
        self.order, sizes = split_order(
            n,
            effective_validation_split(spec),
            self.rng,
            test_split=float(spec["test_split"]),
            strata=None if self.loss == "mse" else by_row,
        )
        ends = np.cumsum(sizes)
        self.bounds = {
            name: (int(end - size), int(end))
            for name, size, end in zip(rows_mod.SPLITS, sizes, ends, strict=True)
        }
        self.splits = {name: self.order[lo:hi] for name, (lo, hi) in self.bounds.items()}
        fitted_on = rows_mod.fit_rows(self.splits["train"], spec.get("seed"))
        self.preprocessor = Preprocessor.fit(
            rows_mod.gather(source, fitted_on),
            spec.get("preprocessing"),
            by_row[fitted_on] if self.loss == "mse" else None,
        )
        # One encoded matrix, its rows ordered train | validation | test: each split is a view
        # of it, and so are the training and validation rows together (the refit's).
        self.matrix = rows_mod.encode(source, self.preprocessor, self.order, self.dtype)
        # The targets in the matrix's order: `values` as given (the metrics'), `target` as the
        # loss compares (mse's standardized in the model's dtype; else the same class indices,
        # cast for the loss a minibatch at a time by `_loss_targets`).
        self.values = rows_mod.allocate_rows(by_row.shape, by_row.dtype)
        rows_mod.take_into(self.values, by_row, self.order)
        del by_row
        if self.loss == "mse":
            self.target = rows_mod.allocate_rows(self.values.shape, self.dtype)
            for rows in rows_mod.pieces(n):
                self.target[rows] = self.preprocessor.encode_targets(self.values[rows])
        else:
            self.target = self.values
        self.x = {name: self.matrix[lo:hi] for name, (lo, hi) in self.bounds.items()}
        self.y = {name: self.target[lo:hi] for name, (lo, hi) in self.bounds.items()}
        self.raw = {name: self.values[lo:hi] for name, (lo, hi) in self.bounds.items()}
        self.architecture = {
            "nin": self.preprocessor.n_outputs,
            "layers": [int(w) for w in model_spec["layers"]],
            "activation": model_spec["activation"],
            "output_activation": model_spec["output_activation"],
            "loss": self.loss,
            "target_kind": target_kind,
            "classes": classes if self.loss != "mse" else None,
            "dtype": self.dtype.name,
            # Glorot-uniform weights and biases for every layer (relu too), as scikit-learn's
            # MLP: Kaiming's larger start with zero biases scored lower on held-out rows of
            # small tabular sets within the same budget (bench/quality.py).
            "init": "glorot",
            "dropout": float(model_spec["dropout"]),
            "preprocessing": self.preprocessor.to_dict(),
        }
        weights = None
        if self.loss != "mse" and classes is not None:
            weights = class_weights(spec.get("class_weight"), self.y["train"], classes)
        self.loss_fn = loss_function(self.loss, weights)
        self.plain_loss = loss_function(self.loss)

    def _target_values(
        self, chunks: Iterator[np.ndarray], n: int, n_targets: int, target_kind: str
    ) -> np.ndarray:
        """`encode_targets` of the `n` rows' targets, chunk by chunk and a piece at a time,
        into `allocate_rows` storage: float64 `(n, n_targets)` for mse, else class indices
        `(n,)` in the smallest integer type that holds `classes`."""
        k = len(self.classes) if self.classes else None
        if self.loss == "mse":
            out = rows_mod.allocate_rows((n, n_targets), np.float64)
        else:
            out = rows_mod.allocate_rows((n,), _code_dtype(k) if k else np.int64)
        filled = 0
        for chunk in chunks:
            for rows in rows_mod.pieces(len(chunk)):
                piece = encode_targets(self.loss, target_kind, chunk[rows], self.classes)
                if self.loss != "mse":
                    piece = piece.reshape(-1)
                    if k and len(piece) and (piece.min() < 0 or piece.max() >= k):
                        raise ValueError(f"a target is not one of the {k} classes")
                if filled + len(piece) <= n:
                    out[filled : filled + len(piece)] = piece
                filled += len(piece)
        if filled != n:
            raise ValueError(f"{n} feature rows but {filled} targets")
        return out

    def _loss_targets(self, y: np.ndarray) -> np.ndarray:
        """Stored targets (a minibatch, a batch) as the loss takes them: float `(b, 1)` 0/1 in
        the model's dtype for binary cross-entropy, int64 indices for cross-entropy (both as
        `encode_targets` gives them); mse's are stored ready."""
        if self.loss == "binary_cross_entropy":
            return y.astype(self.dtype).reshape(-1, 1)
        if self.loss == "cross_entropy":
            return y.astype(np.int64)
        return y

    def run(self, graph: bool) -> TrainResult:
        spec = self.spec
        stopping = spec.get("early_stopping")
        stopper = EarlyStopping(stopping) if stopping is not None else None
        has_val = len(self.splits["validation"]) > 0
        result = TrainResult(architecture=self.architecture, state_dict={})
        model, _ = self._fit(
            self.x["train"], self.y["train"], int(spec["epochs"]), result, stopper, has_val
        )

        if stopper is not None:
            result.best_epoch = stopper.best_epoch
            if stopper.best_state is not None and result.completed:
                model.load_state_dict(stopper.best_state)
        elif has_val and result.val_loss_history:
            result.best_epoch = int(np.argmin(result.val_loss_history)) + 1
        selected = model
        if (
            stopper is not None
            and stopper.restore_best
            and stopping["refit"]
            and result.completed
            and result.best_epoch
        ):
            # The validation rows chose the number of epochs; now they train too: the same
            # start, training and validation rows together, for the best epoch's count.
            rows = self.matrix[: self.bounds["validation"][1]]
            targets = self.target[: self.bounds["validation"][1]]
            refitted, done = self._fit(rows, targets, result.best_epoch, None, None, False)
            if done == result.best_epoch:
                model = refitted
                result.refit = True
            else:  # stopped by `on_refit_epoch`: the selected model is saved
                result.refit_stopped_at = done
        result.state_dict = {k: np.array(v, copy=True) for k, v in model.state_dict().items()}
        if not result.completed:
            return result

        final_loss = self._loss(model, "train")
        if not math.isfinite(final_loss):
            epoch = result.stopped_epoch or int(spec["epochs"])
            raise self._diverged("loss", final_loss, epoch, result)
        self._evaluate(model, result, selected)
        if graph:
            model.eval()
            y = self._loss_targets(self.y["train"][:GRAPH_SAMPLES])
            result.graph_svg = graph_svg(model, self.plain_loss, self.x["train"], y)
        return result

    def _fit(
        self,
        x_train: np.ndarray,
        y_train: np.ndarray,
        epochs: int,
        result: TrainResult | None,
        stopper: EarlyStopping | None,
        has_val: bool,
    ) -> tuple[nn.MLP, int]:
        """Train a fresh model (seeded) for up to `epochs`; with `result`, record the epochs,
        report them to `on_epoch` and stop early; without (the refit), train quietly, asking
        `on_refit_epoch` after each epoch whether to go on. The model and its epochs."""
        spec = self.spec
        seed = spec.get("seed")
        rng = np.random.default_rng(seed) if result is None else self.rng
        model = build_mlp(self.architecture, seed=seed, dtype=self.dtype)
        model.train()
        opt = make_optimizer(model.parameters(), spec)
        schedule = LRSchedule(spec["lr_schedule"], opt, epochs)
        n = len(x_train)
        batch_size = spec.get("batch_size") or n
        batch_size = max(1, min(int(batch_size), n))
        report = result if result is not None else TrainResult(self.architecture, {})
        done = 0
        # Each epoch's order, filled in place: the permutation `rng.permutation(np.arange(n))`
        # gives, without a whole-length array made each epoch.
        order = rows_mod.allocate_rows((n,), rows_mod.index_dtype(n))
        if batch_size >= n:
            rows_mod.fill_range(order)
        for epoch in range(1, epochs + 1):
            if batch_size < n:
                rows_mod.shuffled_range(order, rng)
            total = 0.0
            for start in range(0, n, batch_size):
                idx = order[start : start + batch_size]
                opt.zero_grad()
                out = model(engine.Tensor(x_train[idx], requires_grad=False))
                loss = self.loss_fn(out, self._loss_targets(y_train[idx]))
                value = float(loss.item())
                if not math.isfinite(value):
                    raise self._diverged("loss", value, epoch, report)
                loss.backward()
                opt.step()
                total += value * len(idx)
            epoch_loss = total / n
            done = epoch
            if result is None:
                schedule.after_epoch(epoch_loss)
                if self.on_refit_epoch is not None and self.on_refit_epoch(epoch) is False:
                    break
                continue
            val_loss = None
            if has_val:
                val_loss = self._loss(model, "validation")
                if not math.isfinite(val_loss):
                    raise self._diverged("validation loss", val_loss, epoch, result)
                result.val_loss_history.append(val_loss)
            result.loss_history.append(epoch_loss)
            result.stopped_epoch = epoch
            schedule.after_epoch(val_loss if val_loss is not None else epoch_loss)
            if self.on_epoch is not None and self.on_epoch(epoch, epoch_loss, val_loss) is False:
                result.completed = False
                result.stop_reason = "cancelled"
                break
            if (
                stopper is not None
                and val_loss is not None
                and stopper.update(epoch, val_loss, model)
            ):
                result.stop_reason = "early_stopping"
                break
        return model, done

    def _loss(self, model: nn.MLP, split: str) -> float:
        """The mean loss on a split (in batches of `EVAL_BATCH_ROWS` rows), in eval mode (no
        dropout); the model's mode is kept."""
        training = model.training
        model.eval()
        x, y = self.x[split], self.y[split]
        total = 0.0
        try:
            with engine.no_grad():
                for rows in rows_mod.batches(len(x)):
                    out = model(engine.Tensor(np.asarray(x[rows]), requires_grad=False))
                    value = float(self.plain_loss(out, self._loss_targets(y[rows])).item())
                    total += value * (rows.stop - rows.start)
            return total / len(x)
        finally:
            model.train(training)

    def _evaluate(self, model: nn.MLP, result: TrainResult, selected: nn.MLP) -> None:
        """Score each split, a batch at a time (`core.metrics`' streaming accumulators: no
        whole split's outputs are held); the validation rows score the model they selected
        (after a refit they trained the saved one, so only the selection run's model is held
        out from them)."""
        names = {"train": "", "validation": "val_"}
        labels = list(self.classes or [])
        for split in rows_mod.SPLITS:
            x, values = self.x[split], self.raw[split]
            if not len(x):
                continue
            scored = selected if split == "validation" else model
            trained = Model(self.architecture, scored.state_dict())
            accumulator: metrics_mod.ClassificationMetrics | metrics_mod.RegressionMetrics
            if self.loss == "mse":
                accumulator = metrics_mod.RegressionMetrics()
            else:
                counts = metrics_mod.class_counts(values, len(labels))
                accumulator = metrics_mod.ClassificationMetrics(labels, counts)
            for rows in rows_mod.batches(len(x)):
                outputs = trained.outputs(np.asarray(x[rows]))
                if isinstance(accumulator, metrics_mod.RegressionMetrics):
                    accumulator.update(values[rows], outputs)
                else:
                    probabilities = probabilities_from_logits(self.loss, outputs)
                    accumulator.update(values[rows].astype(np.int64), probabilities)
            report = accumulator.result()
            loss = self._loss(scored, split)
            report["loss"] = loss
            result.evaluation[split] = report
            if split in names:
                result.metrics[f"{names[split]}loss"] = loss
                if "accuracy" in report:
                    result.metrics[f"{names[split]}accuracy"] = report["accuracy"]

    def _diverged(self, what: str, value: float, epoch: int, result: TrainResult) -> DivergedError:
        return DivergedError(
            f"{what} became {'NaN' if math.isnan(value) else 'inf'} at epoch {epoch}; "
            "try a smaller learning_rate",
            result.loss_history,
            result.val_loss_history,
        )


def graph_svg(
    model: nn.MLP,
    loss_fn: Callable[[engine.Tensor, np.ndarray], engine.Tensor],
    x: np.ndarray,
    y: np.ndarray,
    samples: int = GRAPH_SAMPLES,
) -> str:
    """The computational graph (forward and loss, gradients filled) on a few samples, as SVG."""
    from engine.viz import draw_dot

    k = min(samples, len(x))
    inputs = engine.Tensor(x[:k], requires_grad=False, label="x")
    out = model(inputs)
    value = loss_fn(out, y[:k])
    value.label = "loss"
    value.backward()
    # Top to bottom: a layer's wide weight and activation records side by side would make an
    # LR picture many thousand pixels wide; stacked they read in a browser.
    svg = draw_dot(value, rankdir="TB").pipe(format="svg")
    model.zero_grad()
    return svg.decode("utf-8") if isinstance(svg, bytes) else svg
