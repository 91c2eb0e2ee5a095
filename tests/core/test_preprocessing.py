"""core.preprocessing: fitted on training rows only, stored as JSON, applied to new rows."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import MinMaxScaler, OneHotEncoder, StandardScaler

from core.preprocessing import MissingValueError, Preprocessor
from core.table import table_from_matrix

ROWS = [
    [1.0, "a", 10],
    [2.0, "b", None],
    [None, "a", 30],
    [4.0, None, 40],
    [5.0, "c", 50],
    [9.0, "a", 60],
]


def sklearn_reference(numeric: str) -> ColumnTransformer:
    scaler = StandardScaler() if numeric == "standardize" else MinMaxScaler()
    return ColumnTransformer(
        [
            ("num", make_pipeline(SimpleImputer(strategy="median"), scaler), [0, 2]),
            (
                "cat",
                make_pipeline(
                    SimpleImputer(strategy="most_frequent"),
                    OneHotEncoder(handle_unknown="ignore"),
                ),
                [1],
            ),
        ],
        sparse_threshold=0,
    )


@pytest.mark.parametrize("numeric", ["standardize", "minmax"])
def test_matches_the_scikit_learn_pipeline(numeric: str) -> None:
    table = table_from_matrix(ROWS, ["n", "c", "m"])
    pre = Preprocessor.fit(table, {"numeric": numeric})
    ours = pre.transform(table)
    raw = np.array([[np.nan if v is None else v for v in row] for row in ROWS], dtype=object)
    reference = sklearn_reference(numeric).fit_transform(raw)
    # ours keeps the column order: n, c=a, c=b, c=c, m; sklearn: n, m, then the one-hot block
    np.testing.assert_allclose(ours[:, [0, 4, 1, 2, 3]], reference.astype(float), atol=1e-12)


def test_unseen_and_missing_categories_at_predict_time() -> None:
    pre = Preprocessor.fit(table_from_matrix(ROWS, ["n", "c", "m"]), None)
    # stored and read back as JSON, as a model keeps it
    pre = Preprocessor.from_dict(json.loads(json.dumps(pre.to_dict())))
    new = pre.transform(
        table_from_matrix([[3.0, "zebra", 20], [None, None, None]], ["n", "c", "m"])
    )
    assert new[0, 1:4].tolist() == [0.0, 0.0, 0.0]  # unseen level: all zeros
    assert new[1, 1:4].tolist() == [1.0, 0.0, 0.0]  # missing: the most frequent level, "a"
    assert np.isfinite(new).all()


def test_fitted_on_the_rows_it_is_given_only() -> None:
    table = table_from_matrix(ROWS, ["n", "c", "m"])
    pre = Preprocessor.fit(table.take(np.array([0, 1, 2])), None)
    step = pre.steps[0]
    assert step["fill"] == 1.5  # median of 1 and 2, not of all rows
    assert pre.steps[1]["levels"] == ["a", "b"]


def test_missing_error_policy_and_target_scaling() -> None:
    table = table_from_matrix(ROWS, ["n", "c", "m"])
    pre = Preprocessor.fit(table, {"missing": "error"})
    with pytest.raises(MissingValueError) as info:
        pre.transform(table)
    assert info.value.column == "n" and info.value.row == 2
    y = np.array([[10.0], [20.0], [30.0]])
    scaled = Preprocessor.fit(table.take(np.arange(3)), None, y)
    np.testing.assert_allclose(scaled.decode_targets(scaled.encode_targets(y)), y)
    assert abs(scaled.encode_targets(y).mean()) < 1e-12
