"""A small seeded table as real ones come: numeric and text columns, missing cells, a numeric
code column that is really categorical (`zip`), string class labels."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

SPECIES = ("Adelie", "Chinstrap", "Gentoo")
ISLANDS = {"Adelie": "Torgersen", "Chinstrap": "Dream", "Gentoo": "Biscoe"}
ZIPS = {"Adelie": 1001, "Chinstrap": 2002, "Gentoo": 3003}
HEADER = ("bill_length_mm", "island", "zip", "body_mass_g", "species")


def penguin_rows(n: int = 180, seed: int = 0) -> list[dict[str, Any]]:
    """Rows keyed by column; None is a missing cell (about 1 in 12 of the bill and mass cells,
    1 in 20 of the islands)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        species = SPECIES[i % 3]
        k = SPECIES.index(species)
        # the island is right 4 times in 5: the bill length has to do the rest
        island = ISLANDS[species] if rng.random() < 0.8 else ISLANDS[SPECIES[(k + 1) % 3]]
        rows.append(
            {
                "bill_length_mm": None if i % 12 == 5 else round(38 + 6 * k + rng.normal(), 1),
                "island": None if i % 20 == 7 else island,
                "zip": ZIPS[species] if rng.random() < 0.7 else ZIPS[SPECIES[(k + 2) % 3]],
                "body_mass_g": None if i % 13 == 3 else round(3700 + 150 * k + rng.normal(0, 300)),
                "species": species,
            }
        )
    return rows


def _cell(value: Any, missing: str) -> str:
    return missing if value is None else str(value)


def write_penguins_csv(path: Path, n: int = 180, seed: int = 0) -> list[dict[str, Any]]:
    """The rows as a CSV file, missing cells written as an empty cell or `NA`; returns them."""
    rows = penguin_rows(n, seed)
    lines = [",".join(HEADER)]
    for i, row in enumerate(rows):
        lines.append(",".join(_cell(row[c], "NA" if i % 2 else "") for c in HEADER))
    path.write_text("\n".join(lines) + "\n")
    return rows
