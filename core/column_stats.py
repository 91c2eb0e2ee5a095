"""Column statistics that merge chunk by chunk: what `core.table.Column.describe()` gives, for a
column that is never held whole (a streamed upload).

- `NumericStats`: count, missing, min, max, mean and the sum of squared deviations (M2) of the
  present values; two summaries merge exactly with the parallel-variance formula (Chan, Golub
  and LeVeque), so `std` is the population standard deviation (`np.std`'s) of every value seen.
- `CategoricalStats`: running counts per level (and missing cells); `top` orders levels by count,
  ties by level, as `Column.describe` does.

Both `describe(name)` give exactly the dict shape of `Column.describe()`. NumPy only (a `core`
module): the caller hands over arrays or ready summaries of its chunks.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from core.table import CATEGORICAL, NUMERIC

TOP_LEVELS = 10


@dataclass
class NumericStats:
    """Statistics of a numeric column's chunks seen so far."""

    count: int = 0
    missing: int = 0
    min: float = math.inf
    max: float = -math.inf
    mean: float = 0.0
    m2: float = 0.0

    def add(self, values: np.ndarray) -> None:
        """A chunk of float64 values, NaN where a cell is missing."""
        values = np.asarray(values, dtype=np.float64)
        present = values[~np.isnan(values)]
        n = len(present)
        if n == 0:
            self.add_summary(0, len(values), 0.0, 0.0, 0.0, 0.0)
            return
        mean = float(present.mean())
        m2 = float(((present - mean) ** 2).sum())
        self.add_summary(n, len(values) - n, float(present.min()), float(present.max()), mean, m2)

    def add_summary(
        self, count: int, missing: int, lo: float, hi: float, mean: float, m2: float
    ) -> None:
        """A chunk already summarized: `count` present values with these min, max, mean and
        M2 (sum of squared deviations from `mean`), plus `missing` cells."""
        self.missing += missing
        if count == 0:
            return
        total = self.count + count
        delta = mean - self.mean
        self.mean += delta * count / total
        self.m2 += m2 + delta * delta * self.count * count / total
        self.count = total
        self.min = min(self.min, lo)
        self.max = max(self.max, hi)

    def merge(self, other: NumericStats) -> None:
        self.add_summary(other.count, other.missing, other.min, other.max, other.mean, other.m2)

    @property
    def std(self) -> float:
        return math.sqrt(max(self.m2, 0.0) / self.count) if self.count else 0.0

    def describe(self, name: str) -> dict[str, Any]:
        out: dict[str, Any] = {"name": name, "type": NUMERIC, "missing": self.missing}
        if self.count == 0:
            out.update(min=None, max=None, mean=None, std=None)
        else:
            # numbers near the float64 limit overflow the variance: null, as JSON allows no inf
            stats = {"min": self.min, "max": self.max, "mean": self.mean, "std": self.std}
            out.update({k: v if math.isfinite(v) else None for k, v in stats.items()})
        return out


@dataclass
class CategoricalStats:
    """Running counts of a categorical column's levels."""

    counts: dict[str, int] = field(default_factory=dict)
    missing: int = 0

    def add_counts(self, levels: Iterable[str], counts: Iterable[int], missing: int = 0) -> None:
        """A chunk's distinct levels with their counts, plus its missing cells."""
        table = self.counts
        for level, n in zip(levels, counts, strict=True):
            table[level] = table.get(level, 0) + int(n)
        self.missing += missing

    def add(self, texts: Iterable[str | None]) -> None:
        """A chunk of cells (None: missing)."""
        table = self.counts
        for text in texts:
            if text is None:
                self.missing += 1
            else:
                table[text] = table.get(text, 0) + 1

    def merge(self, other: CategoricalStats) -> None:
        self.add_counts(other.counts.keys(), other.counts.values(), other.missing)

    @property
    def n_levels(self) -> int:
        return len(self.counts)

    def describe(self, name: str, top: int = TOP_LEVELS) -> dict[str, Any]:
        ranked = sorted(self.counts.items(), key=lambda item: (-item[1], item[0]))[:top]
        return {
            "name": name,
            "type": CATEGORICAL,
            "missing": self.missing,
            "n_levels": len(self.counts),
            "top": [{"value": level, "count": n} for level, n in ranked],
        }
