"""core.table: typed columns, missing cells, storage."""

from __future__ import annotations

import io

import numpy as np
import pytest

from core.table import (
    Table,
    TableError,
    column_from_cells,
    table_from_bytes,
    table_from_matrix,
    table_from_records,
    table_to_bytes,
)


@pytest.mark.parametrize("token", ["", " ", "NA", "na", "NaN", "nan", "NULL", "null", "None"])
def test_every_missing_spelling_is_missing(token: str) -> None:
    column = column_from_cells("a", [1, token, 2.5])
    assert column.kind == "numeric"
    assert column.n_missing == 1
    assert column.cells() == [1.0, None, 2.5]


def test_a_column_with_text_is_categorical_with_sorted_levels() -> None:
    column = column_from_cells("island", ["Dream", "Biscoe", None, "Dream", True, 3.0])
    assert column.kind == "categorical"
    assert column.levels == ["3", "Biscoe", "Dream", "true"]
    assert column.cells() == ["Dream", "Biscoe", None, "Dream", "true", "3"]
    described = column.describe()
    assert described["missing"] == 1 and described["n_levels"] == 4
    assert described["top"][0] == {"value": "Dream", "count": 2}


def test_numeric_strings_are_numbers_unless_overridden() -> None:
    assert column_from_cells("zip", ["02139", "10001"]).kind == "numeric"
    zipcode = column_from_cells("zip", ["02139", "10001"], "categorical")
    assert zipcode.levels == ["02139", "10001"]
    with pytest.raises(TableError) as info:
        column_from_cells("n", [1, "x"], "numeric")
    assert info.value.row == 1 and info.value.column == "n"


def test_infinity_is_refused() -> None:
    with pytest.raises(TableError) as info:
        column_from_cells("a", [1.0, float("inf")])
    assert info.value.row == 1


def test_records_and_matrix_agree_and_describe() -> None:
    records = [{"a": 1, "b": "x"}, {"b": "y"}, {"a": 3.5, "b": None}]
    table = table_from_records(records, ["a", "b"], None)
    same = table_from_matrix([[1, "x"], [None, "y"], [3.5, None]], ["a", "b"])
    assert table.rows() == same.rows() == [[1.0, "x"], [None, "y"], [3.5, None]]
    numeric = table.describe()[0]
    assert (numeric["min"], numeric["max"], numeric["mean"], numeric["missing"]) == (
        1.0,
        3.5,
        2.25,
        1,
    )


def test_storage_round_trip_and_legacy_matrix() -> None:
    rng = np.random.default_rng(0)
    cells = [
        [float(v), str(c) if c else None]
        for v, c in zip(rng.normal(size=50), rng.integers(0, 4, 50), strict=True)
    ]
    table = table_from_matrix(cells, ["v", "c"])
    back = table_from_bytes(table_to_bytes(table))
    assert back.names == ["v", "c"] and back.types == table.types
    assert back.rows() == table.rows()
    # rows stored before typed columns: a float64 .npy matrix
    buf = io.BytesIO()
    np.save(buf, np.array([[1.0, 2.0], [3.0, 4.0]]), allow_pickle=False)
    legacy = table_from_bytes(buf.getvalue(), ["p", "q"])
    assert isinstance(legacy, Table) and legacy.names == ["p", "q"]
    assert legacy.rows() == [[1.0, 2.0], [3.0, 4.0]]


def test_json_columns_of_numbers_and_nulls_or_of_strings_and_nulls() -> None:
    """What the per-distinct-value and NumPy paths must give: the cell-by-cell rules."""
    numbers = column_from_cells("a", [1, None, 2.5, float("nan"), -3])
    assert numbers.kind == "numeric" and numbers.n_missing == 2
    assert numbers.cells() == [1.0, None, 2.5, None, -3.0]
    flags = column_from_cells("b", [True, None, False])  # booleans are not numbers
    assert flags.kind == "categorical" and flags.levels == ["false", "true"]
    assert flags.cells() == ["true", None, "false"]
    words = column_from_cells("c", [" a", "a ", "NA", None, "b", " "])
    assert words.levels == ["a", "b"] and words.n_missing == 3
    assert words.cells() == ["a", "a", None, None, "b", None]
    assert column_from_cells("d", ["1", None, "2"]).kind == "numeric"  # numeric text
    with pytest.raises(TableError) as info:
        column_from_cells("e", ["ok", "x\x00y"], "categorical")
    assert info.value.row == 1 and info.value.column == "e"
    with pytest.raises(TableError) as info:
        column_from_cells("f", [10**400, None])
    assert info.value.column == "f"
