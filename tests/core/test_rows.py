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

    def allocate(shape: tuple[int, ...], dtype: object, limit: int | None = None) -> np.ndarray:
        array = real(shape, dtype, limit)
        if limit is None:  # the matrix (the per-row arrays have their own limit)
            mapped.append(isinstance(array, np.memmap))
        return array

    monkeypatch.setattr(rows, "allocate", allocate)
    same(fit(Chunked(table, y, 50)), in_memory)
    assert mapped == [True]


def test_losses_over_batches_are_the_whole_splits_mean(monkeypatch: pytest.MonkeyPatch) -> None:
    table, y = mixed_table()
    whole = fit(Chunked(table, y, 240))
    monkeypatch.setattr(rows, "EVAL_BATCH_ROWS", 7)
    assert [s.stop for s in rows.batches(16)] == [7, 14, 16]
    batched = fit(Chunked(table, y, 240))
    # each batch's mean loss is float32 (the model's dtype): equal to its rounding
    np.testing.assert_allclose(batched.val_loss_history, whole.val_loss_history, rtol=1e-6)
    for split in ("train", "validation", "test"):
        a, b = batched.evaluation[split], whole.evaluation[split]
        np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-6)
        # the metrics stream too: counts and ROC AUC exactly, the log loss to rounding
        assert a["log_loss"] == pytest.approx(b["log_loss"], rel=1e-12)
        assert {**a, "loss": 0, "log_loss": 0} == {**b, "loss": 0, "log_loss": 0}


def test_regression_evaluates_in_batches_as_on_whole_splits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    table, _ = mixed_table()
    rng = np.random.default_rng(2)
    y = np.column_stack([rng.normal(size=240) * 50 + 1e4, rng.normal(size=240)])
    spec = {**SPEC, "loss": "mse", "validation_split": 0.2}
    whole = train(Chunked(table, y, 240), None, {"layers": [8, 2]}, spec)
    monkeypatch.setattr(rows, "EVAL_BATCH_ROWS", 7)
    batched = train(Chunked(table, y, 240), None, {"layers": [8, 2]}, spec)
    for split in ("train", "validation", "test"):
        a, b = batched.evaluation[split], whole.evaluation[split]
        assert a["n"] == b["n"]
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-6)
        for key in ("mse", "rmse", "mae", "r2"):
            assert a[key] == pytest.approx(b[key], rel=1e-9)


def test_every_per_row_array_mapped_trains_the_same_model(monkeypatch: pytest.MonkeyPatch) -> None:
    table, y = mixed_table()
    in_memory = fit(Chunked(table, y, 50))
    monkeypatch.setattr(rows, "ARRAY_IN_MEMORY_BYTES", 0)
    real = rows.allocate
    mapped: list[tuple[tuple[int, ...], bool]] = []

    def allocate(shape: tuple[int, ...], dtype: object, limit: int | None = None) -> np.ndarray:
        array = real(shape, dtype, limit)
        if limit is not None:
            mapped.append((shape, isinstance(array, np.memmap)))
        return array

    monkeypatch.setattr(rows, "allocate", allocate)
    same(fit(Chunked(table, y, 50)), in_memory)
    # targets, split order and its permutation, classes, positions, the epochs' order, ROC
    # AUC's scores for each split: all of them maps
    assert len(mapped) >= 8 and all(is_map for _, is_map in mapped)
    # (240 rows: 168 train, 24 validation, 48 test; the refit's epochs over 192)
    assert {shape for shape, _ in mapped} >= {(240,), (168,), (192,), (3, 48)}


def test_shuffled_range_is_the_permutation_of_the_range() -> None:
    for n in (0, 1, 5, 1000):
        for out in (np.empty(n, np.int32), rows.allocate((n,), np.int32, 0)):
            plain = out.view(np.ndarray) if isinstance(out, np.memmap) else out
            rng, again = np.random.default_rng(n), np.random.default_rng(n)
            rows.shuffled_range(plain, rng)
            np.testing.assert_array_equal(plain, again.permutation(np.arange(n, dtype=np.int32)))
            assert rng.random() == again.random()


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


@dataclass
class ChunkedTargets(Chunked):
    """`Chunked`, giving its targets a chunk at a time too (`rows.target_chunks`)."""

    def targets(self) -> np.ndarray:
        raise AssertionError("the targets are read in chunks")

    def target_chunks(self) -> Iterator[np.ndarray]:
        for start in range(0, self.n_rows, self.size):
            yield self.y[start : start + self.size]


def test_targets_read_in_chunks_train_the_same_model() -> None:
    table, y = mixed_table()
    same(fit(ChunkedTargets(table, y, 37)), fit(Chunked(table, y, 240)))
    with pytest.raises(ValueError, match="240 feature rows but 239 targets"):
        fit(ChunkedTargets(table, y[:239], 37))
    with pytest.raises(ValueError, match="240 feature rows but 241 targets"):
        fit(Chunked(table, np.append(y, 0), 50))


def test_rows_encoded_in_small_pieces_train_the_same_model(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    table, y = mixed_table()
    whole = fit(Chunked(table, y, 100))
    monkeypatch.setattr(rows, "ENCODE_ROWS", 7)
    same(fit(Chunked(table, y, 100)), whole)
    # a missing cell is named by its row in the source, whichever piece it was encoded in
    x = np.arange(240.0)
    x[[150, 200]] = np.nan
    holes = Table([numeric_column("x", x)])
    with pytest.raises(rows.MissingValueError, match=r"row 150\)"):
        train(
            Chunked(holes, y, 100),
            None,
            MODEL,
            {**SPEC, "preprocessing": {"missing": "error"}, "test_split": 0.0},
            target_kind="numeric",
            classes=[0, 1, 2],
        )
