"""Batch predictions as columns: a model's answer for a chunk of rows as one Arrow batch.

The columns are those of `POST /models/{id}/predict`'s answer, one row per input row:

- classification: `label` (the predicted class, as the classes were given: numbers or text),
  then `probability_<class>` for every class, in the model's class order (the `probabilities`
  of the JSON answer);
- regression: `prediction` (one output) or `prediction_0` ... `prediction_{k-1}`.

Everything is computed a chunk at a time with NumPy and Arrow: no Python per row.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from core.model import Model, probabilities_from_logits
from core.table import Table


def output_names(architecture: dict[str, Any]) -> list[str]:
    """The columns of a model's batch predictions, in order."""
    if architecture["loss"] == "mse":
        width = int(architecture["layers"][-1])
        return ["prediction"] if width == 1 else [f"prediction_{j}" for j in range(width)]
    return ["label", *(f"probability_{c}" for c in architecture.get("classes") or [])]


def _labels(classes: list[Any]) -> pa.Array:
    try:
        return pa.array(classes)
    except (pa.ArrowInvalid, pa.ArrowTypeError):  # labels of mixed kinds: their text
        return pa.array([str(c) for c in classes], type=pa.string())


class BatchPredictor:
    """A model's predictions for tables of its input columns, as record batches
    (`output_names`' columns)."""

    def __init__(self, model: Model) -> None:
        self.model = model
        self.names = output_names(model.architecture)
        self._classes = (
            None if model.loss == "mse" else _labels(model.architecture.get("classes") or [])
        )

    def __call__(self, table: Table) -> pa.RecordBatch:
        outputs = self.model.outputs(self.model.encode(table))
        if self._classes is None:
            columns = [pa.array(outputs[:, j]) for j in range(outputs.shape[1])]
        else:
            probabilities = probabilities_from_logits(self.model.loss, outputs)
            label = self._classes.take(pa.array(probabilities.argmax(axis=1)))
            columns = [label, *(pa.array(probabilities[:, j]) for j in range(len(self._classes)))]
        return pa.RecordBatch.from_arrays(columns, names=self.names)


def predictions_for(model: Model, table: Table) -> pa.RecordBatch:
    """`BatchPredictor(model)(table)`, once."""
    return BatchPredictor(model)(table)


__all__ = ["BatchPredictor", "output_names", "predictions_for"]
