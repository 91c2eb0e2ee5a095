"""Preprocessing that is part of the model: fitted on the training rows, stored with the weights.

`training.preprocessing` (every field optional):

    {"numeric": "standardize" | "minmax" | "none",   # default standardize
     "categorical": "onehot" | "ordinal",            # default onehot
     "missing": "impute" | "error",                  # default impute
     "target": "standardize" | "none"}               # default standardize (mse only)

Imputation uses the training rows' median (numeric) and most frequent level (categorical).
One-hot gives a category never seen in training all zeros; ordinal gives it -1 (after scaling
to 0..1 over the seen levels). A missing cell is imputed before encoding, so it never reaches
the network as NaN. The fitted state is a JSON-ready dict (`to_dict` / `from_dict`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from core.table import CATEGORICAL, NUMERIC, Column, Table

NUMERIC_SCALINGS = ("standardize", "minmax", "none")
CATEGORICAL_ENCODINGS = ("onehot", "ordinal")
MISSING_POLICIES = ("impute", "error")
TARGET_SCALINGS = ("standardize", "none")
DEFAULTS: dict[str, str] = {
    "numeric": "standardize",
    "categorical": "onehot",
    "missing": "impute",
    "target": "standardize",
}
CHOICES: dict[str, tuple[str, ...]] = {
    "numeric": NUMERIC_SCALINGS,
    "categorical": CATEGORICAL_ENCODINGS,
    "missing": MISSING_POLICIES,
    "target": TARGET_SCALINGS,
}


class MissingValueError(ValueError):
    """`missing: "error"` and a cell is missing; `column` names it, `row` is 0-based."""

    def __init__(self, column: str, row: int) -> None:
        super().__init__(f"column {column!r} has a missing cell (row {row})")
        self.column = column
        self.row = row


def resolve(config: dict[str, Any] | None) -> dict[str, str]:
    """The preprocessing config with every default filled in."""
    out = dict(DEFAULTS)
    out.update({k: v for k, v in (config or {}).items() if v is not None})
    return out


@dataclass
class Preprocessor:
    config: dict[str, str]
    names: list[str]
    types: list[str]
    steps: list[dict[str, Any]]
    #: mse with target "standardize": per-output mean and standard deviation
    target_center: list[float] | None = None
    target_scale: list[float] | None = None

    @property
    def n_outputs(self) -> int:
        """Width of the encoded matrix (the network's input width)."""
        return sum(len(s["levels"]) if s["encoding"] == "onehot" else 1 for s in self.steps)

    @property
    def output_names(self) -> list[str]:
        out = []
        for s in self.steps:
            if s["encoding"] == "onehot":
                out.extend(f"{s['name']}={level}" for level in s["levels"])
            else:
                out.append(s["name"])
        return out

    # ---- fitting ------------------------------------------------------------------------------

    @classmethod
    def fit(
        cls, table: Table, config: dict[str, Any] | None, targets: np.ndarray | None = None
    ) -> Preprocessor:
        """Fit on the training rows; `targets` (float, mse only) for the target scaling."""
        config = resolve(config)
        steps = [_fit_column(c, config) for c in table.columns]
        pre = cls(config, table.names, table.types, steps)
        if targets is not None and config["target"] == "standardize":
            y = np.asarray(targets, dtype=np.float64).reshape(len(targets), -1)
            center = y.mean(axis=0)
            scale = y.std(axis=0)
            scale[~(scale > 1e-12)] = 1.0
            pre.target_center, pre.target_scale = center.tolist(), scale.tolist()
        return pre

    # ---- applying -----------------------------------------------------------------------------

    def transform(self, table: Table, dtype: Any = np.float64) -> np.ndarray:
        """The encoded matrix `(n_rows, n_outputs)` for a table with the training columns."""
        if table.names != self.names:
            raise ValueError(f"expected columns {self.names}, got {table.names}")
        out = np.empty((table.n_rows, self.n_outputs), dtype=dtype)
        j = 0
        for column, step in zip(table.columns, self.steps, strict=True):
            block = _apply(column, step, self.config["missing"])
            out[:, j : j + block.shape[1]] = block
            j += block.shape[1]
        return out

    def encode_targets(self, y: np.ndarray) -> np.ndarray:
        if self.target_center is None or self.target_scale is None:
            return y
        return (y - np.asarray(self.target_center)) / np.asarray(self.target_scale)

    def decode_targets(self, y: np.ndarray) -> np.ndarray:
        if self.target_center is None or self.target_scale is None:
            return y
        return y * np.asarray(self.target_scale) + np.asarray(self.target_center)

    # ---- storage ------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": self.config,
            "columns": [
                {"name": n, "type": t} for n, t in zip(self.names, self.types, strict=True)
            ],
            "steps": self.steps,
            "target": None
            if self.target_center is None
            else {"center": self.target_center, "scale": self.target_scale},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocessor:
        target = data.get("target") or {}
        return cls(
            config=dict(data["config"]),
            names=[c["name"] for c in data["columns"]],
            types=[c["type"] for c in data["columns"]],
            steps=[dict(s) for s in data["steps"]],
            target_center=target.get("center"),
            target_scale=target.get("scale"),
        )


def _fit_column(column: Column, config: dict[str, str]) -> dict[str, Any]:
    present = ~column.missing_mask
    if column.kind == NUMERIC:
        values = column.values[present]
        fill = float(np.median(values)) if len(values) else 0.0
        filled = np.where(present, column.values, fill)
        center, scale = 0.0, 1.0
        if config["numeric"] == "standardize":
            center, scale = float(filled.mean()), float(filled.std())
        elif config["numeric"] == "minmax":
            center, scale = float(filled.min()), float(filled.max() - filled.min())
        if not scale > 1e-12:
            scale = 1.0
        return {
            "name": column.name,
            "encoding": "numeric",
            "fill": fill,
            "center": center,
            "scale": scale,
        }
    levels = column.levels or []
    counts = np.bincount(column.values[present], minlength=len(levels))
    seen = [level for level, count in zip(levels, counts, strict=True) if count > 0]
    fill = levels[int(np.argmax(counts))] if counts.sum() else None
    return {"name": column.name, "encoding": config["categorical"], "fill": fill, "levels": seen}


def _apply(column: Column, step: dict[str, Any], missing: str) -> np.ndarray:
    n = len(column)
    mask = column.missing_mask
    if missing == "error" and mask.any():
        raise MissingValueError(column.name, int(np.argmax(mask)))
    if step["encoding"] == "numeric":
        if column.kind != NUMERIC:
            raise ValueError(f"column {column.name!r} must be numeric")
        values = np.where(mask, step["fill"], column.values)
        return ((values - step["center"]) / step["scale"]).reshape(n, 1)
    # categorical: map this column's levels onto the training levels (-1: unseen or missing)
    levels = step["levels"]
    index = {level: i for i, level in enumerate(levels)}
    fill = index.get(step["fill"], -1) if step["fill"] is not None else -1
    if column.kind == CATEGORICAL:
        mapping = np.array([index.get(level, -1) for level in column.levels or []] + [fill])
        codes = mapping[column.values]  # code -1 picks the last entry: the fill
    else:  # numbers given for a categorical column (e.g. predict rows): read as levels
        codes = np.array(
            [
                fill if np.isnan(v) else index.get(str(int(v)) if v.is_integer() else repr(v), -1)
                for v in column.values.tolist()
            ],
            dtype=np.int64,
        )
    if step["encoding"] == "onehot":
        out = np.zeros((n, len(levels)))
        rows = np.nonzero(codes >= 0)[0]
        out[rows, codes[rows]] = 1.0
        return out
    width = max(len(levels) - 1, 1)
    return np.where(codes >= 0, codes / width, -1.0).reshape(n, 1)


def fit_transform(
    train: Table, config: dict[str, Any] | None, targets: np.ndarray | None = None
) -> tuple[Preprocessor, np.ndarray]:
    pre = Preprocessor.fit(train, config, targets)
    return pre, pre.transform(train)


__all__ = [
    "CATEGORICAL",
    "CHOICES",
    "DEFAULTS",
    "MissingValueError",
    "Preprocessor",
    "fit_transform",
    "resolve",
]
