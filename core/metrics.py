"""Evaluation metrics for classifiers and regressors, in NumPy only.

Every number matches scikit-learn's function of the same name (the tests compare them); the
results are JSON-ready dicts: plain Python floats, ints, strings and lists, never NumPy scalars and
never NaN or infinity. A metric that is undefined for the given data is None.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["classification_metrics", "regression_metrics"]


def _finite(value: float) -> float | None:
    """A plain Python float, or None where the value is NaN or infinite (not valid JSON)."""
    value = float(value)
    return value if math.isfinite(value) else None


def _plain(label: Any) -> Any:
    """A label as a plain Python value (NumPy scalars become their Python equivalent)."""
    return label.item() if isinstance(label, np.generic) else label


def _binary_auc(is_positive: np.ndarray, scores: np.ndarray) -> float | None:
    """Area under the ROC curve of one binary problem, or None without both classes.

    Computed as the Mann-Whitney U statistic with average ranks for tied scores, which is exactly
    the trapezoidal area under the ROC curve that scikit-learn computes (a tie between a positive
    and a negative counts one half). Counting happens in integers, so the only rounding is the
    final division.
    """
    n_pos = int(np.count_nonzero(is_positive))
    n_neg = is_positive.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    distinct, group = np.unique(scores, return_inverse=True)
    group = group.reshape(-1)
    pos = np.bincount(group[is_positive], minlength=distinct.size).astype(np.int64)
    neg = np.bincount(group[~is_positive], minlength=distinct.size).astype(np.int64)
    neg_below = np.cumsum(neg) - neg
    # Twice U: a positive beats each negative with a lower score and ties half of the equal ones.
    twice_u = int(np.sum(2 * pos * neg_below + pos * neg))
    return twice_u / (2 * n_pos * n_neg)


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
    labels = [_plain(label) for label in labels]
    k = len(labels)
    if k < 2:
        raise ValueError(f"classification needs at least two labels, got {k}")
    if len({str(label) for label in labels}) != k:
        raise ValueError(f"labels must be distinct (as strings): {labels!r}")

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
    if not np.issubdtype(y_true.dtype, np.integer):
        raise ValueError(f"y_true must hold integer class indices, got dtype {y_true.dtype}")
    if y_true.min() < 0 or y_true.max() >= k:
        raise ValueError(f"y_true holds class indices outside 0..{k - 1}")
    if probabilities.dtype not in (np.float32, np.float64):
        probabilities = probabilities.astype(np.float64)
    if not np.all(np.isfinite(probabilities)):
        raise ValueError("probabilities contain NaN or infinity")
    if probabilities.min() < 0 or probabilities.max() > 1:
        raise ValueError("probabilities must lie in [0, 1]")
    eps = np.finfo(probabilities.dtype).eps
    row_sums = probabilities.sum(axis=1, dtype=np.float64)
    if not np.allclose(row_sums, 1.0, rtol=0.0, atol=math.sqrt(eps)):
        raise ValueError("probabilities must sum to one in every row")
    y_true = y_true.astype(np.int64)

    y_pred = probabilities.argmax(axis=1)
    matrix = np.bincount(y_true * k + y_pred, minlength=k * k).reshape(k, k)
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
        return {
            "macro": float(np.mean(values)),
            "per_class": {str(label): float(v) for label, v in zip(labels, values, strict=True)},
        }

    # Clip in the probabilities' own dtype (as scikit-learn does), then take logs in float64.
    clipped = np.clip(probabilities[np.arange(n), y_true], eps, 1 - eps).astype(np.float64)
    log_loss = float(-np.mean(np.log(clipped)))

    if k == 2:
        roc_auc = _binary_auc(y_true == 1, probabilities[:, 1])
    else:
        aucs = [_binary_auc(y_true == c, probabilities[:, c]) for c in range(k)]
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
    n = y_true.shape[0]
    if n == 0:
        raise ValueError("cannot compute metrics of an empty set: y_true has no rows")
    if y_true.shape[1] == 0:
        raise ValueError("y_true and y_pred have no outputs")
    if not (np.all(np.isfinite(y_true)) and np.all(np.isfinite(y_pred))):
        raise ValueError("y_true and y_pred must not contain NaN or infinity")

    error = y_true - y_pred
    with np.errstate(over="ignore", invalid="ignore"):
        mse = np.mean(error**2, axis=0)
        mae = np.mean(np.abs(error), axis=0)
        if n < 2:
            r2: float | None = None
        else:
            numerator = np.sum(error**2, axis=0)
            denominator = np.sum((y_true - np.mean(y_true, axis=0)) ** 2, axis=0)
            # A constant output has no variance even where its float mean is off by an ulp (the
            # mean of three 3.7s is not 3.7), which would leave a tiny denominator and a huge
            # negative score: the one place this departs from scikit-learn.
            denominator[np.all(y_true == y_true[0], axis=0)] = 0.0
            scores = np.ones(y_true.shape[1])
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
