"""Training from rows in chunks: the same model as from the whole table in memory, with the
encoded matrix in memory or memory-mapped, and preprocessing fitted on a seeded sample."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pytest

from core import rows
from core.table import Table, categorical_from_texts, numeric_column
from core.training import TrainResult, train

SPEC = {
    "optimizer": "adam",
    "learning_rate": 0.01,
    "epochs": 6,
    "batch_size": 16,
    "seed": 3,
    "test_split": 0.2,
    "early_stopping": {"patience": 3},
}
MODEL = {"layers": [8, 3], "activation": "relu"}


def mixed_table(n: int = 240, seed: int = 0) -> tuple[Table, np.ndarray]:
    """Numbers with missing cells and a text column (levels unevenly spread over the rows, so
    that chunks see different levels); three classes."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    x[rng.random(n) < 0.1] = np.nan
    colours = np.array(["red", "green", "blue", "teal"])
    texts: list[str | None] = [str(c) for c in colours[np.minimum(np.arange(n) * 4 // n, 3)]]
    texts[5] = None
    y = ((np.nan_to_num(x) > 0).astype(int) + (np.arange(n) % 3 == 0)).astype(np.int64)
    table = Table([numeric_column("x", x), categorical_from_texts("colour", texts)])
    return table, y


@dataclass
class Chunked:
    """A table served in chunks of `size` rows (each chunk with its own levels)."""

    table: Table
    y: np.ndarray
    size: int

    @property
    def n_rows(self) -> int:
        return self.table.n_rows

    def chunks(self) -> Iterator[tuple[Table, np.ndarray]]:
        for start in range(0, self.n_rows, self.size):
            index = np.arange(start, min(start + self.size, self.n_rows))
            taken = self.table.take(index)
            columns = [
                c
                if c.kind == "numeric"
                else categorical_from_texts(c.name, [None if v is None else v for v in c.cells()])
                for c in taken.columns
            ]
            yield Table(columns), self.y[index]

    def targets(self) -> np.ndarray:
        return self.y


def fit(source: object, **kw: object) -> TrainResult:
    return train(source, None, MODEL, SPEC, target_kind="numeric", classes=[0, 1, 2], **kw)  # type: ignore[arg-type]


def same(a: TrainResult, b: TrainResult) -> None:
    assert a.loss_history == b.loss_history
    assert a.architecture["preprocessing"] == b.architecture["preprocessing"]
    for key, value in a.state_dict.items():
        np.testing.assert_array_equal(value, b.state_dict[key])
    assert a.evaluation == b.evaluation


def test_chunks_train_the_model_the_whole_table_trains() -> None:
    table, y = mixed_table()
    whole = train(table, y, MODEL, SPEC, target_kind="numeric", classes=[0, 1, 2])
    same(fit(Chunked(table, y, 37)), whole)
    assert whole.evaluation["test"]["n"] == 48


def test_a_memory_mapped_matrix_trains_the_same_model(monkeypatch: pytest.MonkeyPatch) -> None:
    table, y = mixed_table()
    in_memory = fit(Chunked(table, y, 50))
    monkeypatch.setattr(rows, "IN_MEMORY_BYTES", 0)
    mapped = []
    real = rows.allocate

    def allocate(shape: tuple[int, int], dtype: object) -> np.ndarray:
        matrix = real(shape, dtype)
        mapped.append(isinstance(matrix, np.memmap))
        return matrix

    monkeypatch.setattr(rows, "allocate", allocate)
    same(fit(Chunked(table, y, 50)), in_memory)
    assert mapped == [True]


def test_losses_over_batches_are_the_whole_splits_mean(monkeypatch: pytest.MonkeyPatch) -> None:
    table, y = mixed_table()
    whole = fit(Chunked(table, y, 240))
    monkeypatch.setattr(rows, "EVAL_BATCH_ROWS", 7)
    batched = fit(Chunked(table, y, 240))
    np.testing.assert_allclose(batched.val_loss_history, whole.val_loss_history, rtol=1e-9)
    for split in ("train", "validation", "test"):
        np.testing.assert_allclose(
            batched.evaluation[split]["loss"], whole.evaluation[split]["loss"], rtol=1e-9
        )
        assert batched.evaluation[split]["accuracy"] == whole.evaluation[split]["accuracy"]


def test_preprocessing_is_fitted_on_a_seeded_sample_of_large_training_splits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    table, y = mixed_table(400)
    full = train(table, y, MODEL, SPEC, target_kind="numeric", classes=[0, 1, 2])
    monkeypatch.setattr(rows, "FIT_SAMPLE_ROWS", 50)
    train_rows = np.arange(0, 400, 2)
    sample = rows.fit_rows(train_rows, seed=3)
    assert len(sample) == 50 and np.all(np.diff(sample) > 0) and set(sample) <= set(train_rows)
    np.testing.assert_array_equal(sample, rows.fit_rows(train_rows, seed=3))
    assert not np.array_equal(sample, rows.fit_rows(train_rows, seed=4))
    np.testing.assert_array_equal(rows.fit_rows(train_rows[:50], seed=3), train_rows[:50])

    sampled = fit(Chunked(table, y, 64))
    step = sampled.architecture["preprocessing"]["steps"][0]
    # fitted on 50 rows, not all of the training rows: close, not equal
    assert step["center"] != full.architecture["preprocessing"]["steps"][0]["center"]
    assert abs(step["center"] - full.architecture["preprocessing"]["steps"][0]["center"]) < 0.5


def test_gather_takes_rows_across_chunks() -> None:
    table, y = mixed_table(100)
    picked = np.array([0, 9, 10, 11, 55, 99])
    got = rows.gather(Chunked(table, y, 10), picked)
    assert got.rows() == table.take(picked).rows()
