"""Evaluation metrics for classifiers and regressors, in NumPy only.

Every number matches scikit-learn's function of the same name (the tests compare them); the
results are JSON-ready dicts: plain Python floats, ints, strings and lists, never NumPy scalars and
never NaN or infinity. A metric that is undefined for the given data is None.

Both kinds stream: `ClassificationMetrics` and `RegressionMetrics` take the rows chunk by chunk
(`update`) and hold only what the metrics need, so that a split of any size is scored in
bounded (anonymous) memory: counts and per-chunk sums, and for ROC AUC the scores of the
positive class (of each class, one-vs-rest), kept in `core.rows.allocate_rows` storage (a
memory map of a temporary file once it is large) and sorted there. `classification_metrics` and
`regression_metrics` feed a whole array through the same code in chunks of `CHUNK_ROWS`, so a
split scored in chunks of that size gives the very same numbers. Integer results (the confusion
matrix and what is derived from it, ROC AUC) do not depend on the chunks at all; sums of floats
(log loss, squared and absolute errors) are each chunk's sum added exactly (`math.fsum`), and
the targets' squared deviations (for R²) are combined from each chunk's by Chan et al.'s
pairwise formula, so other chunk sizes agree to about 1e-12.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from core.rows import EVAL_BATCH_ROWS, allocate_rows

__all__ = [
    "CHUNK_ROWS",
    "ClassificationMetrics",
    "RegressionMetrics",
    "class_counts",
    "classification_metrics",
    "regression_metrics",
]

#: rows per chunk when a whole array is scored (training's own evaluation batch)
CHUNK_ROWS = EVAL_BATCH_ROWS
#: positive scores per `np.searchsorted` call when ROC AUC is counted
_AUC_CHUNK = 1 << 20


def _finite(value: float) -> float | None:
    """A plain Python float, or None where the value is NaN or infinite (not valid JSON)."""
    value = float(value)
    return value if math.isfinite(value) else None


def _plain(label: Any) -> Any:
    """A label as a plain Python value (NumPy scalars become their Python equivalent)."""
    return label.item() if isinstance(label, np.generic) else label


def _total(values: Sequence[float]) -> float:
    """The exactly rounded sum of `values` (infinity where it overflows)."""
    try:
        return math.fsum(values)
    except OverflowError:  # finite values whose sum overflows
        return math.copysign(math.inf, sum(values))


def _checked_labels(labels: Sequence[Any]) -> list[Any]:
    labels = [_plain(label) for label in labels]
    k = len(labels)
    if k < 2:
        raise ValueError(f"classification needs at least two labels, got {k}")
    if len({str(label) for label in labels}) != k:
        raise ValueError(f"labels must be distinct (as strings): {labels!r}")
    return labels


def _check_indices(y_true: np.ndarray, k: int) -> None:
    if not np.issubdtype(y_true.dtype, np.integer):
        raise ValueError(f"y_true must hold integer class indices, got dtype {y_true.dtype}")
    if len(y_true) and (y_true.min() < 0 or y_true.max() >= k):
        raise ValueError(f"y_true holds class indices outside 0..{k - 1}")


def class_counts(y_true: np.ndarray, k: int) -> np.ndarray:
    """How many rows of each of `k` classes `y_true` (class indices, any integer dtype, maybe a
    memory map) holds, counted chunk by chunk: int64 `(k,)`."""
    counts = np.zeros(k, dtype=np.int64)
    for start in range(0, len(y_true), _AUC_CHUNK):
        chunk = np.asarray(y_true[start : start + _AUC_CHUNK]).reshape(-1)
        _check_indices(chunk, k)
        counts += np.bincount(chunk, minlength=k)
    return counts


def _sorted_auc(scores: np.ndarray, n_pos: int) -> float | None:
    """ROC AUC of one binary problem whose scores are `scores[:n_pos]` for the positives and
    `scores[n_pos:]` for the negatives (both sorted here, in place); None without both.

    The Mann-Whitney U statistic with ties counted half, which is exactly the trapezoidal area
    under the ROC curve that scikit-learn computes: each positive beats the negatives scored
    below it (`searchsorted` left) and ties the equal ones (right minus left), so twice U is
    the sum of left + right over the positives. Counted in integers: the only rounding is the
    final division.
    """
    n_neg = len(scores) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    positives, negatives = scores[:n_pos], scores[n_pos:]
    positives.sort()
    negatives.sort()
    twice_u = 0
    for start in range(0, n_pos, _AUC_CHUNK):
        chunk = positives[start : start + _AUC_CHUNK]
        twice_u += int(np.searchsorted(negatives, chunk, side="left").sum(dtype=np.int64))
        twice_u += int(np.searchsorted(negatives, chunk, side="right").sum(dtype=np.int64))
    return twice_u / (2 * n_pos * n_neg)


class ClassificationMetrics:
    """`classification_metrics`, chunk by chunk: `update(y_true, probabilities)` for each chunk
    of rows (in any order), then `result()`.

    `class_counts` is how many rows of each class will come (`class_counts(y_true, k)`): the
    scores ROC AUC needs are laid out by it, each class's positives before its negatives, in
    storage allocated once (`core.rows.allocate_rows`: a memory map when large). The
    probabilities' dtype is the first chunk's (float32 or float64; others become float64).
    Raises ValueError as `classification_metrics` does, and when the rows given do not match
    `class_counts`.
    """

    def __init__(self, labels: Sequence[Any], class_counts: Sequence[int] | np.ndarray) -> None:
        self.labels = _checked_labels(labels)
        k = len(self.labels)
        counts = np.asarray(class_counts, dtype=np.int64).reshape(-1)
        if counts.shape != (k,) or np.any(counts < 0):
            raise ValueError(f"class_counts must be {k} counts, got {class_counts!r}")
        self.k = k
        self.counts = counts
        self.n_expected = int(counts.sum())
        self.n = 0
        self.matrix = np.zeros((k, k), dtype=np.int64)
        self._log_sums: list[float] = []
        self._dtype: np.dtype | None = None
        #: the classes scored for ROC AUC: the positive one of two, else each one-vs-rest
        self._auc_classes = [1] if k == 2 else list(range(k))
        self._scores: np.ndarray | None = None
        self._pos_at = np.zeros(len(self._auc_classes), dtype=np.int64)
        self._neg_at = counts[self._auc_classes].copy()

    def update(self, y_true: np.ndarray, probabilities: np.ndarray) -> None:
        """Add a chunk: class indices `(b,)` and probabilities `(b, k)`."""
        k = self.k
        y_true = np.asarray(y_true)
        probabilities = np.asarray(probabilities)
        if y_true.ndim != 1:
            raise ValueError(f"y_true must be one-dimensional, got shape {y_true.shape}")
        b = y_true.shape[0]
        if probabilities.shape != (b, k):
            raise ValueError(
                f"probabilities must have shape (n, k) = ({b}, {k}), got {probabilities.shape}"
            )
        _check_indices(y_true, k)
        if b == 0:
            return
        if probabilities.dtype not in (np.float32, np.float64):
            probabilities = probabilities.astype(np.float64)
        if self._dtype is None:
            self._dtype = probabilities.dtype
        elif probabilities.dtype != self._dtype:
            probabilities = probabilities.astype(self._dtype)
        if not np.all(np.isfinite(probabilities)):
            raise ValueError("probabilities contain NaN or infinity")
        if probabilities.min() < 0 or probabilities.max() > 1:
            raise ValueError("probabilities must lie in [0, 1]")
        eps = np.finfo(probabilities.dtype).eps
        row_sums = probabilities.sum(axis=1, dtype=np.float64)
        if not np.allclose(row_sums, 1.0, rtol=0.0, atol=math.sqrt(eps)):
            raise ValueError("probabilities must sum to one in every row")
        if self.n + b > self.n_expected:
            raise ValueError(f"more rows than class_counts holds ({self.n_expected})")
        y = y_true.astype(np.int64)
        # checked before anything is added, so that a refused chunk leaves the sums as they were
        in_chunk = np.bincount(y, minlength=k)
        for row, c in enumerate(self._auc_classes):
            positives, negatives = int(in_chunk[c]), b - int(in_chunk[c])
            if (
                int(self._pos_at[row]) + positives > self.counts[c]
                or int(self._neg_at[row]) + negatives > self.n_expected
            ):
                raise ValueError(f"y_true holds more rows of class {c} than class_counts says")

        y_pred = probabilities.argmax(axis=1)
        self.matrix += np.bincount(y * k + y_pred, minlength=k * k).reshape(k, k)
        # Clip in the probabilities' own dtype (as scikit-learn does), then take logs in float64.
        clipped = np.clip(probabilities[np.arange(b), y], eps, 1 - eps).astype(np.float64)
        self._log_sums.append(float(np.sum(np.log(clipped))))

        if self._scores is None:
            self._scores = allocate_rows((len(self._auc_classes), self.n_expected), self._dtype)
        for row, c in enumerate(self._auc_classes):
            positive = y == c
            pos = probabilities[positive, c]
            neg = probabilities[~positive, c]
            p0, n0 = int(self._pos_at[row]), int(self._neg_at[row])
            self._scores[row, p0 : p0 + len(pos)] = pos
            self._scores[row, n0 : n0 + len(neg)] = neg
            self._pos_at[row] += len(pos)
            self._neg_at[row] += len(neg)
        self.n += b

    def result(self) -> dict[str, Any]:
        """The metrics of every row given (see `classification_metrics`)."""
        k, n, labels, matrix = self.k, self.n, self.labels, self.matrix
        if n == 0:
            raise ValueError("cannot compute metrics of an empty set: y_true has no rows")
        if n != self.n_expected or not np.array_equal(matrix.sum(axis=1), self.counts):
            raise ValueError(
                f"the rows given ({n}) do not match class_counts ({self.n_expected} rows)"
            )
        tp = np.diag(matrix).astype(np.float64)
        true_count = matrix.sum(axis=1).astype(np.float64)
        pred_count = matrix.sum(axis=0).astype(np.float64)

        def ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
            out = np.zeros(k)
            np.divide(numerator, denominator, out=out, where=denominator != 0)
            return out

        precision = ratio(tp, pred_count)
        recall = ratio(tp, true_count)
        f1 = ratio(2 * tp, true_count + pred_count)

        def per_class(values: np.ndarray) -> dict[str, Any]:
            pairs = zip(labels, values, strict=True)
            return {
                "macro": float(np.mean(values)),
                "per_class": {str(label): float(v) for label, v in pairs},
            }

        log_loss = -(_total(self._log_sums) / n)
        assert self._scores is not None
        aucs = [
            _sorted_auc(self._scores[row], int(self.counts[c]))
            for row, c in enumerate(self._auc_classes)
        ]
        if k == 2:
            roc_auc = aucs[0]
        else:
            defined = [a for a in aucs if a is not None]
            roc_auc = float(np.mean(defined)) if defined else None

        return {
            "accuracy": float(tp.sum() / n),
            "balanced_accuracy": float(np.mean(recall[true_count > 0])),
            "precision": per_class(precision),
            "recall": per_class(recall),
            "f1": per_class(f1),
            "log_loss": _finite(log_loss),
            "roc_auc": roc_auc,
            "confusion_matrix": {"labels": labels, "matrix": matrix.tolist()},
            "n": int(n),
        }


def classification_metrics(
    y_true: np.ndarray, probabilities: np.ndarray, labels: list
) -> dict[str, Any]:
    """Metrics of a classifier from its predicted class probabilities.

    `y_true` holds integer class indices (n,) into `labels`; `probabilities` is (n, k) with
    k == len(labels) >= 2 and rows summing to one. Predictions are `probabilities.argmax(axis=1)`
    (ties go to the first class, as NumPy does).

    Returns a JSON-ready dict, each value matching scikit-learn with `labels=range(k)`:

    - `accuracy`: fraction of rows predicted right (`accuracy_score`).
    - `balanced_accuracy`: mean recall over the classes present in `y_true`
      (`balanced_accuracy_score`).
    - `precision`, `recall`, `f1`: `{"macro": float, "per_class": {str(label): float}}`; a ratio
      with a zero denominator is 0.0 (`zero_division=0`) and the macro mean runs over all k labels,
      present in the data or not.
    - `log_loss`: mean cross-entropy with probabilities clipped to [eps, 1 - eps], eps the machine
      epsilon of the probabilities' dtype (`log_loss`); the clipped values are not renormalised,
      as in scikit-learn >= 1.5.
    - `roc_auc`: with two labels the AUC of labels[1] scored by probabilities[:, 1]; with more, the
      macro mean of the one-vs-rest AUCs (`roc_auc_score(multi_class="ovr", average="macro")`).
      Ties are averaged (Mann-Whitney U), as scikit-learn does. A class that has no positive or no
      negative row in `y_true` has no AUC: unlike scikit-learn (which returns NaN for the mean then)
      the mean runs over the classes that do have one. None when no class has one, e.g. when
      `y_true` holds a single class.
    - `confusion_matrix`: `{"labels": labels, "matrix": [[int]]}`, rows true, columns predicted.
    - `n`: the number of rows.

    Raises ValueError on empty input, inconsistent shapes, class indices outside `labels`,
    probabilities outside [0, 1], non-finite probabilities or rows that do not sum to one.
    """
    labels = _checked_labels(labels)
    k = len(labels)
    y_true = np.asarray(y_true)
    probabilities = np.asarray(probabilities)
    if y_true.ndim != 1:
        raise ValueError(f"y_true must be one-dimensional, got shape {y_true.shape}")
    n = y_true.shape[0]
    if n == 0:
        raise ValueError("cannot compute metrics of an empty set: y_true has no rows")
    if probabilities.shape != (n, k):
        raise ValueError(
            f"probabilities must have shape (n, k) = ({n}, {k}), got {probabilities.shape}"
        )
    accumulator = ClassificationMetrics(labels, class_counts(y_true, k))
    for start in range(0, n, CHUNK_ROWS):
        rows = slice(start, start + CHUNK_ROWS)
        accumulator.update(y_true[rows], probabilities[rows])
    return accumulator.result()


class RegressionMetrics:
    """`regression_metrics`, chunk by chunk: `update(y_true, y_pred)` for each chunk of rows,
    then `result()`. Holds, per output, each chunk's sums of squared and absolute errors
    (added exactly at the end) and the count, mean and squared deviations of its targets
    (combined at the end by Chan et al.'s pairwise update, in float64: `_combined_m2`), and
    whether the output is constant so far: a few numbers per chunk, none per row. Raises
    ValueError as `regression_metrics` does, and on chunks of different widths."""

    def __init__(self) -> None:
        self.n = 0
        self.m: int | None = None
        self._squared: list[np.ndarray] = []
        self._absolute: list[np.ndarray] = []
        #: each chunk's (rows, mean, squared deviations from its mean) of the targets
        self._moments: list[tuple[int, np.ndarray, np.ndarray]] = []
        self._first: np.ndarray | None = None
        self._constant: np.ndarray | None = None

    def update(self, y_true: np.ndarray, y_pred: np.ndarray) -> None:
        """Add a chunk: `(b,)` or `(b, m)` targets and predictions."""
        y_true, y_pred = _regression_arrays(y_true, y_pred)
        b, m = y_true.shape
        if self.m is None:
            self.m = m
        elif m != self.m:
            raise ValueError(f"a chunk has {m} outputs, the first had {self.m}")
        if b == 0:
            return
        if m == 0:
            raise ValueError("y_true and y_pred have no outputs")
        if not (np.all(np.isfinite(y_true)) and np.all(np.isfinite(y_pred))):
            raise ValueError("y_true and y_pred must not contain NaN or infinity")
        error = y_true - y_pred
        with np.errstate(over="ignore", invalid="ignore"):
            self._squared.append(np.sum(error**2, axis=0))
            self._absolute.append(np.sum(np.abs(error), axis=0))
            mean = np.mean(y_true, axis=0)
            self._moments.append((b, mean, np.sum((y_true - mean) ** 2, axis=0)))
        if self._first is None or self._constant is None:
            self._first = y_true[0].copy()
            self._constant = np.all(y_true == self._first, axis=0)
        else:
            self._constant &= np.all(y_true == self._first, axis=0)
        self.n += b

    def result(self) -> dict[str, Any]:
        """The metrics of every row given (see `regression_metrics`)."""
        n = self.n
        if n == 0 or self._constant is None:
            raise ValueError("cannot compute metrics of an empty set: y_true has no rows")
        squared = np.array([_total(column) for column in np.stack(self._squared, axis=1)])
        absolute = np.array([_total(column) for column in np.stack(self._absolute, axis=1)])
        with np.errstate(over="ignore", invalid="ignore"):
            mse = squared / n
            mae = absolute / n
            if n < 2:
                r2: float | None = None
            else:
                numerator = squared
                denominator = _combined_m2(self._moments)
                # A constant output has no variance even where its float mean is off by an ulp
                # (the mean of three 3.7s is not 3.7), which would leave a tiny denominator and
                # a huge negative score: the one place this departs from scikit-learn.
                denominator[self._constant] = 0.0
                scores = np.ones(len(numerator))
                valid = (numerator != 0) & (denominator != 0)
                scores[valid] = 1 - numerator[valid] / denominator[valid]
                scores[(numerator != 0) & (denominator == 0)] = 0.0
                r2 = _finite(np.mean(scores))
            return {
                "mse": _finite(np.mean(mse)),
                "rmse": _finite(np.mean(np.sqrt(mse))),
                "mae": _finite(np.mean(mae)),
                "r2": r2,
                "n": int(n),
            }


def _combined_m2(moments: list[tuple[int, np.ndarray, np.ndarray]]) -> np.ndarray:
    """The squared deviations from their mean of all the targets, from each chunk's count, mean
    and squared deviations: Chan, Golub and LeVeque's pairwise update, combining neighbours
    level by level (a tree, so rounding grows with the log of the number of chunks)."""
    while len(moments) > 1:
        paired = []
        for i in range(0, len(moments) - 1, 2):
            (na, mean_a, m2_a), (nb, mean_b, m2_b) = moments[i], moments[i + 1]
            total = na + nb
            delta = mean_b - mean_a
            mean = mean_a + delta * (nb / total)
            paired.append((total, mean, m2_a + m2_b + delta**2 * (na * nb / total)))
        if len(moments) % 2:
            paired.append(moments[-1])
        moments = paired
    return moments[0][2].copy()


def _regression_arrays(y_true: Any, y_pred: Any) -> tuple[np.ndarray, np.ndarray]:
    """Both as float64 `(n, m)`, or ValueError where their shapes do not go together."""
    y_true = np.asarray(y_true, dtype=np.float64)
    y_pred = np.asarray(y_pred, dtype=np.float64)
    if y_true.ndim not in (1, 2) or y_pred.ndim not in (1, 2):
        raise ValueError(
            f"y_true and y_pred must be (n,) or (n, m), got {y_true.shape} and {y_pred.shape}"
        )
    if y_true.ndim == 1:
        y_true = y_true.reshape(-1, 1)
    if y_pred.ndim == 1:
        y_pred = y_pred.reshape(-1, 1)
    if y_true.shape != y_pred.shape:
        raise ValueError(
            f"y_true and y_pred must have the same shape, got {y_true.shape} and {y_pred.shape}"
        )
    return y_true, y_pred


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, Any]:
    """Metrics of a regressor: `mse`, `rmse`, `mae`, `r2` and `n` (the number of rows).

    `y_true` and `y_pred` are (n,) or (n, m) (a (n,) array and a (n, 1) array go together). With
    m > 1 outputs each metric is the uniform mean of the per-output values, as scikit-learn's
    default `multioutput="uniform_average"`; so `rmse` is the mean of the per-output root mean
    squared errors (`root_mean_squared_error`), not the root of `mse`.

    `r2` follows `r2_score` with `force_finite=True`: an output whose `y_true` is constant scores
    1.0 when predicted perfectly and 0.0 otherwise. Constant means all values equal: scikit-learn
    tests the computed variance for zero instead, so for a constant whose float mean is inexact
    (three rows of 3.7) it scores about -1e33 where this scores 0.0. `r2` is None with fewer than
    two rows, where scikit-learn returns NaN. Any value that overflows to infinity is None too.

    Raises ValueError on empty input, inconsistent shapes or non-finite values.
    """
    y_true, y_pred = _regression_arrays(y_true, y_pred)
    n = y_true.shape[0]
    if n == 0:
        raise ValueError("cannot compute metrics of an empty set: y_true has no rows")
    if y_true.shape[1] == 0:
        raise ValueError("y_true and y_pred have no outputs")
    accumulator = RegressionMetrics()
    for start in range(0, n, CHUNK_ROWS):
        rows = slice(start, start + CHUNK_ROWS)
        accumulator.update(y_true[rows], y_pred[rows])
    return accumulator.result()
