"""core.metrics against scikit-learn, over many seeded random cases and the edge cases."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
from sklearn import metrics as skm

from core.metrics import classification_metrics, regression_metrics

REL = 1e-9
ABS = 1e-12
SCENARIOS = ("random", "ties", "missing", "perfect", "worst", "uniform", "confident")


def close(actual: float | None, expected: float, rel: float = REL) -> None:
    """`actual` is a plain float equal to `expected` to `rel` (None where sklearn says NaN)."""
    if math.isnan(expected):
        assert actual is None
    else:
        assert type(actual) is float
        assert actual == pytest.approx(expected, rel=rel, abs=ABS)


def make_case(
    rng: np.random.Generator, scenario: str, n: int, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Class indices (n,) and float64 probabilities (n, k) for one scenario."""
    y = rng.integers(0, k, size=n)
    if scenario == "random":
        p = rng.dirichlet(np.ones(k), size=n)
    elif scenario == "ties":
        # Few distinct small-integer rows: many equal scores within and across columns.
        counts = rng.integers(0, 3, size=(n, k)).astype(np.float64)
        counts[counts.sum(axis=1) == 0, 0] = 1
        p = counts / counts.sum(axis=1, keepdims=True)
    elif scenario == "missing":
        present = rng.choice(k, size=rng.integers(1, k), replace=False)
        y = rng.choice(present, size=n)
        p = rng.dirichlet(np.full(k, 0.5), size=n)
    elif scenario == "perfect":
        p = np.eye(k)[y]
    elif scenario == "worst":
        p = np.eye(k)[(y + 1) % k]
    elif scenario == "uniform":
        p = np.full((n, k), 1.0 / k)
    else:  # confident: mostly right, some rows exactly 0 and 1
        p = 0.9 * np.eye(k)[y] + 0.1 * rng.dirichlet(np.ones(k), size=n)
        p[: n // 3] = np.eye(k)[rng.integers(0, k, size=n // 3)]
    return y, p


def check_classification(y: np.ndarray, p: np.ndarray, labels: list) -> dict:
    k = len(labels)
    result = classification_metrics(y, p, labels)
    json.dumps(result, allow_nan=False)
    rel = REL if p.dtype == np.float64 else 1e-5
    ks = list(range(k))
    pred = p.argmax(axis=1)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        close(result["accuracy"], skm.accuracy_score(y, pred))
        close(result["balanced_accuracy"], skm.balanced_accuracy_score(y, pred))
        # One sklearn call per averaging gives precision, recall and F1 together (fast enough).
        prfs = skm.precision_recall_fscore_support
        macro = prfs(y, pred, labels=ks, average="macro", zero_division=0)
        per_class = prfs(y, pred, labels=ks, average=None, zero_division=0)
        for i, name in enumerate(("precision", "recall", "f1")):
            close(result[name]["macro"], macro[i])
            assert list(result[name]["per_class"]) == [str(label) for label in labels]
            values = result[name]["per_class"].values()
            for value, expected in zip(values, per_class[i], strict=True):
                close(value, float(expected))
        close(result["log_loss"], skm.log_loss(y, p, labels=ks), rel=rel)
        if k == 2:
            expected_auc = skm.roc_auc_score(y, p[:, 1]) if len(np.unique(y)) == 2 else math.nan
        elif len(np.unique(y)) == k:
            expected_auc = skm.roc_auc_score(y, p, multi_class="ovr", average="macro", labels=ks)
        else:
            # sklearn's macro mean is NaN when a class is absent; ours averages the defined ones.
            per_class_auc = [
                skm.roc_auc_score(y == c, p[:, c]) if 0 < np.sum(y == c) < len(y) else math.nan
                for c in ks
            ]
            defined = [a for a in per_class_auc if not math.isnan(a)]
            expected_auc = float(np.mean(defined)) if defined else math.nan
            if len(np.unique(y)) > 1:
                with_nan = skm.roc_auc_score(y, p, multi_class="ovr", average=None, labels=ks)
                assert math.isnan(float(np.mean(with_nan)))
                np.testing.assert_allclose(with_nan, per_class_auc, rtol=REL)
        close(result["roc_auc"], expected_auc)
        expected_matrix = skm.confusion_matrix(y, pred, labels=ks)

    assert result["confusion_matrix"] == {"labels": labels, "matrix": expected_matrix.tolist()}
    assert all(type(v) is int for row in result["confusion_matrix"]["matrix"] for v in row)
    assert result["n"] == len(y) and type(result["n"]) is int
    return result


CASES = [(1, np.float64), (6, np.float64), (40, np.float32), (300, np.float64)]


@pytest.mark.parametrize("k", [2, 3, 4, 5, 6])
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_classification_matches_sklearn(k: int, scenario: str) -> None:
    rng = np.random.default_rng([k, SCENARIOS.index(scenario)])
    for n, dtype in CASES:
        y, p = make_case(rng, scenario, n, k)
        check_classification(y, p.astype(dtype), [f"class{c}" for c in range(k)])


def test_classification_known_values() -> None:
    y = np.array([0, 0, 1, 1])
    p = np.array([[0.9, 0.1], [0.4, 0.6], [0.35, 0.65], [0.2, 0.8]])
    result = check_classification(y, p, ["no", "yes"])
    assert result["accuracy"] == 0.75
    assert result["roc_auc"] == 1.0
    assert result["confusion_matrix"]["matrix"] == [[1, 1], [0, 2]]
    assert result["precision"]["per_class"] == {"no": 1.0, "yes": 2 / 3}


def test_roc_auc_ties_count_half() -> None:
    # All scores tied: every positive-negative pair is a tie, AUC 0.5.
    y = np.array([0, 1, 0, 1, 1])
    p = np.full((5, 2), 0.5)
    assert check_classification(y, p, [0, 1])["roc_auc"] == 0.5


def test_perfect_and_worst_predictions() -> None:
    y = np.array([0, 1, 2, 2, 1, 0])
    perfect = check_classification(y, np.eye(3)[y], ["a", "b", "c"])
    assert perfect["accuracy"] == perfect["roc_auc"] == perfect["f1"]["macro"] == 1.0
    assert perfect["log_loss"] == pytest.approx(-math.log(1 - np.finfo(np.float64).eps))
    worst = check_classification(y, np.eye(3)[(y + 1) % 3], ["a", "b", "c"])
    assert worst["accuracy"] == worst["f1"]["macro"] == 0.0
    # Each class scores 1 on the rows of one other class and ties (0) with the rest: AUC 1/4.
    assert worst["roc_auc"] == 0.25
    assert worst["log_loss"] == pytest.approx(-math.log(np.finfo(np.float64).eps))


def test_undefined_roc_auc_is_none_and_absent_classes_score_zero() -> None:
    y = np.array([1, 1, 1])
    p = np.array([[0.2, 0.7, 0.1], [0.5, 0.2, 0.3], [0.1, 0.1, 0.8]])
    result = check_classification(y, p, [0, 1, 2])
    assert result["roc_auc"] is None
    assert result["balanced_accuracy"] == pytest.approx(1 / 3)
    assert result["precision"]["per_class"]["1"] == 1.0
    assert result["precision"]["per_class"]["0"] == 0.0  # zero_division=0
    assert result["recall"]["macro"] == pytest.approx(1 / 9)  # macro over all three labels
    binary = check_classification(np.array([0, 0]), np.array([[0.6, 0.4], [0.3, 0.7]]), [0, 1])
    assert binary["roc_auc"] is None


def test_numpy_labels_become_plain_python() -> None:
    labels = list(np.array([3, 7]))
    result = classification_metrics(np.array([0, 1]), np.array([[0.8, 0.2], [0.1, 0.9]]), labels)
    assert result["confusion_matrix"]["labels"] == [3, 7]
    assert all(type(label) is int for label in result["confusion_matrix"]["labels"])
    assert list(result["f1"]["per_class"]) == ["3", "7"]


@pytest.mark.parametrize(
    ("y", "p", "labels", "message"),
    [
        (np.array([], dtype=int), np.zeros((0, 2)), [0, 1], "empty"),
        (np.array([0, 1]), np.array([[0.5, 0.5]]), [0, 1], "shape"),
        (np.array([0, 1]), np.array([[0.5, 0.5], [0.5, 0.5]]), [0, 1, 2], "shape"),
        (np.array([0, 2]), np.array([[0.5, 0.5], [0.5, 0.5]]), [0, 1], "outside"),
        (np.array([0.0, 1.0]), np.array([[0.5, 0.5], [0.5, 0.5]]), [0, 1], "integer"),
        (np.array([0, 1]), np.array([[0.5, 0.4], [0.5, 0.5]]), [0, 1], "sum to one"),
        (np.array([0, 1]), np.array([[1.5, -0.5], [0.5, 0.5]]), [0, 1], r"\[0, 1\]"),
        (np.array([0, 1]), np.array([[np.nan, 0.5], [0.5, 0.5]]), [0, 1], "NaN"),
        (np.array([0, 0]), np.ones((2, 1)), [0], "at least two"),
        (np.array([0, 1]), np.array([[0.5, 0.5], [0.5, 0.5]]), [1, "1"], "distinct"),
    ],
)
def test_classification_rejects_bad_input(
    y: np.ndarray, p: np.ndarray, labels: list, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        classification_metrics(y, p, labels)


def check_regression(y: np.ndarray, pred: np.ndarray) -> dict:
    result = regression_metrics(y, pred)
    json.dumps(result, allow_nan=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        close(result["mse"], skm.mean_squared_error(y, pred))
        close(result["rmse"], skm.root_mean_squared_error(y, pred))
        close(result["mae"], skm.mean_absolute_error(y, pred))
        close(result["r2"], skm.r2_score(y, pred))
    assert result["n"] == len(y) and type(result["n"]) is int
    return result


REGRESSION_SCENARIOS = ("random", "perfect", "constant_perfect", "constant", "partly_constant")


def shaped(scenario: str, y: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Targets `(n, m)` and predictions as the scenario wants them (`y` changed in place)."""
    if scenario == "perfect":
        pred = y.copy()
    elif scenario == "constant_perfect":
        y[:] = 0.1
        pred = y.copy()
    elif scenario == "constant":
        y[:] = 3.5
    elif scenario == "partly_constant":
        y[:, 0] = -2.5
    return y, pred


@pytest.mark.parametrize("shape", ["1d", "column", "multi"])
@pytest.mark.parametrize("scenario", REGRESSION_SCENARIOS)
def test_regression_matches_sklearn(shape: str, scenario: str) -> None:
    rng = np.random.default_rng([REGRESSION_SCENARIOS.index(scenario), len(shape)])
    for n in (1, 2, 3, 10, 200):
        m = {"1d": 1, "column": 1, "multi": int(rng.integers(2, 5))}[shape]
        y = rng.normal(scale=rng.uniform(0.1, 100), size=(n, m)) + rng.normal(size=m)
        pred = y + rng.normal(scale=rng.uniform(0.01, 10), size=(n, m))
        y, pred = shaped(scenario, y, pred)
        if shape == "1d":
            y, pred = y[:, 0], pred[:, 0]
        result = check_regression(y, pred)
        if scenario in ("perfect", "constant_perfect") and n > 1:
            assert result["r2"] == 1.0 and result["mse"] == 0.0
        if scenario == "constant" and n > 1:
            assert result["r2"] == 0.0


def test_regression_known_values_and_mixed_shapes() -> None:
    result = check_regression(np.array([3.0, -0.5, 2.0, 7.0]), np.array([2.5, 0.0, 2.0, 8.0]))
    assert result["mse"] == pytest.approx(0.375)
    assert result["mae"] == pytest.approx(0.5)
    assert result["r2"] == pytest.approx(0.9486081370449679)
    column = regression_metrics(np.array([1, 2, 3]), np.array([[1.0], [2.5], [2.0]]))
    assert column == regression_metrics(np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.5, 2.0]))


def test_regression_rmse_is_mean_of_per_output_rmse() -> None:
    y = np.zeros((2, 2))
    pred = np.array([[1.0, 3.0], [1.0, 3.0]])
    result = check_regression(y, pred)
    assert result["rmse"] == 2.0  # mean(1, 3), not sqrt(mean(1, 9))
    assert result["mse"] == 5.0


def test_regression_constant_with_inexact_mean_scores_zero() -> None:
    # The float mean of three 3.7s is not 3.7; sklearn then divides by a variance of ~1e-31 and
    # scores about -1e33. Ours sees the column is constant and scores 0.0 (force_finite).
    y = np.full((3, 2), 3.7)
    y[:, 1] = [1.0, 2.0, 4.0]
    pred = y + 0.5
    result = regression_metrics(y, pred)
    assert result["r2"] == pytest.approx((0.0 + skm.r2_score(y[:, 1], pred[:, 1])) / 2, rel=REL)
    assert regression_metrics(y[:, 0], pred[:, 0])["r2"] == 0.0
    assert regression_metrics(y[:, 0], y[:, 0])["r2"] == 1.0
    close(result["mse"], skm.mean_squared_error(y, pred))


def test_regression_single_row_r2_is_none() -> None:
    result = check_regression(np.array([1.0]), np.array([2.0]))
    assert result["r2"] is None
    assert result["mse"] == 1.0


@pytest.mark.parametrize(
    ("y", "pred", "message"),
    [
        (np.array([]), np.array([]), "empty"),
        (np.zeros((0, 2)), np.zeros((0, 2)), "empty"),
        (np.zeros(3), np.zeros(4), "same shape"),
        (np.zeros(3), np.zeros((3, 2)), "same shape"),
        (np.zeros((2, 2, 2)), np.zeros((2, 2, 2)), r"\(n,\)"),
        (np.array([1.0, np.inf]), np.zeros(2), "NaN or infinity"),
        (np.zeros(2), np.array([np.nan, 1.0]), "NaN or infinity"),
    ],
)
def test_regression_rejects_bad_input(y: np.ndarray, pred: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        regression_metrics(y, pred)


# ---- streamed: chunk by chunk, the same numbers ---------------------------------------------

CHUNKINGS = ((1,), (7,), (13, 1, 50), (64,), (1000,))


def chunks_of(n: int, sizes: tuple[int, ...]) -> list[slice]:
    """Consecutive slices covering range(n), of the given sizes in turn (uneven splits)."""
    out, start, i = [], 0, 0
    while start < n:
        stop = min(n, start + sizes[i % len(sizes)])
        out.append(slice(start, stop))
        start, i = stop, i + 1
    return out


def streamed_classification(
    y: np.ndarray, p: np.ndarray, labels: list, sizes: tuple[int, ...], order: np.ndarray | None
) -> dict:
    from core.metrics import ClassificationMetrics, class_counts

    accumulator = ClassificationMetrics(labels, class_counts(y, len(labels)))
    index = np.arange(len(y)) if order is None else order
    for rows in chunks_of(len(y), sizes):
        accumulator.update(y[index[rows]], p[index[rows]])
    return accumulator.result()


def same_classification(streamed: dict, whole: dict) -> None:
    """Equal: exactly where counted in integers, to rounding for the log loss."""
    assert streamed["log_loss"] == pytest.approx(whole["log_loss"], rel=1e-12, abs=1e-15)
    assert {**streamed, "log_loss": None} == {**whole, "log_loss": None}


@pytest.mark.parametrize("k", [2, 3, 5])
@pytest.mark.parametrize("scenario", ["random", "ties", "missing", "confident", "uniform"])
def test_streamed_classification_equals_the_whole_arrays(k: int, scenario: str) -> None:
    rng = np.random.default_rng([k, len(scenario), 21])
    for n, dtype in ((1, np.float64), (97, np.float64), (500, np.float32)):
        y, p = make_case(rng, scenario, n, k)
        p = p.astype(dtype)
        labels = [f"c{c}" for c in range(k)]
        whole = check_classification(y, p, labels)
        for sizes in CHUNKINGS:
            same_classification(streamed_classification(y, p, labels, sizes, None), whole)
        # rows in any order: every integer count, and so ROC AUC, is the same
        shuffled = streamed_classification(y, p, labels, (13,), rng.permutation(n))
        same_classification(shuffled, whole)


def test_streamed_roc_auc_over_many_chunks_and_mapped_scores(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from core import rows

    rng = np.random.default_rng(4)
    n = 150_000  # several of classification_metrics' own chunks
    y = rng.integers(0, 3, n)
    p = np.round(rng.dirichlet(np.ones(3), size=n), 2)  # coarse: many tied scores
    p /= p.sum(axis=1, keepdims=True)
    y2, p2 = (y > 0).astype(int), np.stack([p[:, 0], 1 - p[:, 0]], axis=1)
    whole = check_classification(y, p, ["a", "b", "c"])
    binary = check_classification(y2, p2, [0, 1])
    monkeypatch.setattr(rows, "ARRAY_IN_MEMORY_BYTES", 0)  # the scores in a memory map
    same_classification(streamed_classification(y, p, ["a", "b", "c"], (40_000, 7), None), whole)
    assert classification_metrics(y, p, ["a", "b", "c"]) == whole
    assert classification_metrics(y2, p2, [0, 1]) == binary


def test_streamed_classification_checks_its_rows() -> None:
    from core.metrics import ClassificationMetrics

    p = np.array([[0.5, 0.5], [0.2, 0.8]])
    too_few = ClassificationMetrics([0, 1], [1, 2])
    too_few.update(np.array([0, 1]), p)
    with pytest.raises(ValueError, match="class_counts"):
        too_few.result()
    wrong = ClassificationMetrics([0, 1], [2, 0])
    with pytest.raises(ValueError, match="class"):
        wrong.update(np.array([0, 1]), p)
    with pytest.raises(ValueError, match="empty"):
        ClassificationMetrics([0, 1], [0, 0]).result()
    with pytest.raises(ValueError, match="class_counts"):
        ClassificationMetrics([0, 1], [1, 2, 3])
    with pytest.raises(ValueError, match="sum to one"):
        ClassificationMetrics([0, 1], [1, 1]).update(np.array([0, 1]), p * 0.5)


def streamed_regression(y: np.ndarray, pred: np.ndarray, sizes: tuple[int, ...]) -> dict:
    from core.metrics import RegressionMetrics

    accumulator = RegressionMetrics()
    for rows in chunks_of(len(y), sizes):
        accumulator.update(y[rows], pred[rows])
    return accumulator.result()


def same_regression(streamed: dict, whole: dict) -> None:
    assert streamed["n"] == whole["n"]
    for key in ("mse", "rmse", "mae", "r2"):
        if whole[key] is None:
            assert streamed[key] is None
        else:
            assert streamed[key] == pytest.approx(whole[key], rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("scenario", REGRESSION_SCENARIOS)
def test_streamed_regression_equals_the_whole_arrays(scenario: str) -> None:
    rng = np.random.default_rng([REGRESSION_SCENARIOS.index(scenario), 21])
    for n, m in ((1, 1), (2, 3), (97, 1), (500, 4)):
        # far from zero with a small spread: a naive one-pass variance would lose it
        y = 1e6 + rng.normal(scale=rng.uniform(0.1, 3), size=(n, m))
        pred = y + rng.normal(scale=0.5, size=(n, m))
        y, pred = shaped(scenario, y, pred)
        whole = check_regression(y, pred)
        for sizes in CHUNKINGS:
            same_regression(streamed_regression(y, pred, sizes), whole)
        if m == 1:
            same_regression(streamed_regression(y[:, 0], pred[:, 0], (13, 1)), whole)
        if scenario == "constant":  # a constant whose float mean is inexact: still constant
            y[:] = 3.7
            whole = regression_metrics(y, pred)
            assert n < 2 or whole["r2"] == 0.0
            for sizes in CHUNKINGS:
                same_regression(streamed_regression(y, pred, sizes), whole)


def test_streamed_regression_checks_its_chunks() -> None:
    from core.metrics import RegressionMetrics

    accumulator = RegressionMetrics()
    accumulator.update(np.zeros((2, 2)), np.ones((2, 2)))
    with pytest.raises(ValueError, match="outputs"):
        accumulator.update(np.zeros((2, 3)), np.ones((2, 3)))
    with pytest.raises(ValueError, match="NaN or infinity"):
        accumulator.update(np.array([[0.0, np.nan]]), np.ones((1, 2)))
    with pytest.raises(ValueError, match="empty"):
        RegressionMetrics().result()
