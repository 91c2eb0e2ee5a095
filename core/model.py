"""A trained model: its architecture, its fitted preprocessing and its weights; predict; files.

`architecture` (a JSON object, stored with the model):
`{"nin", "layers", "activation", "output_activation", "loss", "target_kind", "classes",
"dtype"?, "preprocessing"?}`. `nin` is the network's input width (after encoding).
`preprocessing` (see `core.preprocessing`) is absent for models trained before preprocessing
was part of the model: those take the numeric feature matrix as it is.

On-disk format (`to_bytes` / `from_bytes`, the `.npz` that `GET /models/{id}/bundle` serves):
an uncompressed NumPy `.npz` holding each weight under its `MLP.state_dict()` name and one
extra entry, `__model__.json`, the architecture as UTF-8 JSON bytes (a `uint8` array), so
`np.load(path)` opens it with `allow_pickle=False`.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

import engine
from core.preprocessing import Preprocessor
from core.spec import LEGACY_MODEL_DTYPE, MODEL_DEFAULTS
from core.table import NUMERIC, Table, TableError, conform, default_names
from engine.nn import MLP

META_KEY = "__model__.json"
#: Rows per forward pass when predicting: a pass over more rows is no faster per row, and its
#: activations outgrow the processor's caches (16384 rows x 64 float32 units is 4 MB; measured
#: on 2 cores with a [64, 32] MLP: 1.9M rows/s at 16384 rows a pass, 1.4M at 65536).
INFERENCE_ROWS = 16384


def array_to_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def array_from_bytes(blob: bytes) -> np.ndarray:
    return np.load(io.BytesIO(blob), allow_pickle=False)


def weights_to_npz(state: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **state)
    return buf.getvalue()


def weights_from_npz(blob: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(blob), allow_pickle=False) as data:
        return {name: data[name] for name in data.files}


def model_dtype(architecture: dict[str, Any]) -> np.dtype:
    """The dtype a saved model computes in (`LEGACY_MODEL_DTYPE` for one saved before its
    architecture recorded it)."""
    return np.dtype(architecture.get("dtype") or LEGACY_MODEL_DTYPE)


def build_mlp(architecture: dict[str, Any], seed: int | None = None, dtype: Any = None) -> MLP:
    return MLP(
        architecture["nin"],
        list(architecture["layers"]),
        activation=architecture.get("activation", MODEL_DEFAULTS["activation"]),
        output_activation=architecture.get("output_activation"),
        seed=seed,
        dtype=dtype or model_dtype(architecture),
        init=architecture.get("init"),
        dropout=float(architecture.get("dropout") or MODEL_DEFAULTS["dropout"]),
    )


def probabilities_from_logits(loss: str, logits: np.ndarray) -> np.ndarray:
    """Class probabilities `(n, k)` from the network's outputs for a classification loss."""
    logits = logits.astype(np.float64)
    if loss == "binary_cross_entropy":
        p1 = 1.0 / (1.0 + np.exp(-np.clip(logits[:, 0], -500, 500)))
        return np.stack([1.0 - p1, p1], axis=1)
    shifted = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=1, keepdims=True)


@dataclass
class Model:
    architecture: dict[str, Any]
    state: dict[str, np.ndarray]

    def __post_init__(self) -> None:
        pre = self.architecture.get("preprocessing")
        self.preprocessor = Preprocessor.from_dict(pre) if pre else None
        self.mlp = build_mlp(self.architecture)
        self.mlp.load_state_dict(self.state)
        self.mlp.eval()  # dropout only while training

    # ---- what goes in -------------------------------------------------------------------------

    @property
    def columns(self) -> list[dict[str, str]]:
        """The input columns as trained on: `[{"name", "type"}]`."""
        if self.preprocessor is None:
            return [{"name": f"x{i}", "type": "numeric"} for i in range(self.architecture["nin"])]
        return [
            {"name": n, "type": t}
            for n, t in zip(self.preprocessor.names, self.preprocessor.types, strict=True)
        ]

    @property
    def dtype(self) -> np.dtype:
        """The dtype the network computes in."""
        return np.dtype(self.mlp.layers[0].weight.dtype)

    @property
    def loss(self) -> str:
        return str(self.architecture["loss"])

    def encode(self, features: Table | Sequence[Any] | np.ndarray, dtype: Any = None) -> np.ndarray:
        """The network's input for raw rows: cells in the training column order, or dicts
        keyed by column name (a missing key is a missing cell; an unknown one a ValueError),
        or a table. `dtype`: the matrix's (float64 unless given; the network's dtype spares
        `outputs` a copy)."""
        cols = self.columns
        if not isinstance(features, Table) and len(features) and isinstance(features[0], dict):
            names = [c["name"] for c in cols]
            unknown = sorted({k for row in features for k in row} - set(names))
            if unknown:
                raise ValueError(f"unknown column {unknown[0]!r}; the model takes {names}")
            features = [[row.get(n) for n in names] for row in features]
        if self.preprocessor is None:
            return _legacy_matrix(features)
        if isinstance(features, np.ndarray):
            features = features.tolist()
        table = conform(features, [c["name"] for c in cols], [c["type"] for c in cols])
        return self.preprocessor.transform(table, dtype or np.float64)

    # ---- what comes out -----------------------------------------------------------------------

    def outputs(self, x: np.ndarray) -> np.ndarray:
        """Raw network outputs `(n, width)` for an encoded matrix (regression: in the target's
        own units, the target scaling undone)."""
        x = np.asarray(x, dtype=self.dtype)
        parts = []
        with engine.no_grad(), np.errstate(over="ignore", invalid="ignore"):
            for start in range(0, len(x), INFERENCE_ROWS):
                rows = x[start : start + INFERENCE_ROWS]
                out = self.mlp(engine.Tensor(rows, requires_grad=False))
                parts.append(out.numpy().reshape(len(rows), -1))
        if not parts:
            return np.empty((0, int(self.architecture["layers"][-1])))
        values = np.concatenate(parts).astype(np.float64)
        if self.loss == "mse" and self.preprocessor is not None:
            values = self.preprocessor.decode_targets(values)
        return values

    def predict_encoded(self, x: np.ndarray) -> dict[str, Any]:
        values = self.outputs(x)
        if self.loss == "mse":
            return {"predictions": (values[:, 0] if values.shape[1] == 1 else values).tolist()}
        probabilities = probabilities_from_logits(self.loss, values)
        classes = self.architecture.get("classes") or []
        labels = [classes[i] for i in probabilities.argmax(axis=1)]
        return {"predictions": labels, "probabilities": probabilities.tolist()}

    def predict(self, features: Table | Sequence[Sequence[Any]] | np.ndarray) -> dict[str, Any]:
        """`{"predictions": [...]}` (values for mse; labels plus `probabilities` otherwise)."""
        return self.predict_encoded(self.encode(features))

    # ---- files --------------------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        meta = np.frombuffer(json.dumps(self.architecture).encode("utf-8"), dtype=np.uint8)
        return weights_to_npz({**self.state, META_KEY: meta})

    @classmethod
    def from_bytes(cls, blob: bytes) -> Model:
        arrays = weights_from_npz(blob)
        meta = arrays.pop(META_KEY, None)
        if meta is None:
            raise ValueError(f"not a model file: no {META_KEY} entry (a bare weights file?)")
        return cls(json.loads(meta.tobytes().decode("utf-8")), arrays)


def _legacy_matrix(features: Table | Sequence[Sequence[Any]] | np.ndarray) -> np.ndarray:
    """The input of a model without preprocessing: finite numbers as they are (it can neither
    encode text nor impute a missing cell)."""
    if isinstance(features, Table):
        for column in features.columns:
            if column.kind != NUMERIC:
                raise TableError("must hold numbers only", column=column.name)
        if not features.columns:
            return np.empty((0, 0))
        matrix = np.column_stack([c.values for c in features.columns]).astype(np.float64)
    else:
        try:
            matrix = np.asarray(features, dtype=np.float64)
        except (TypeError, ValueError):
            raise TableError("must hold numbers only") from None
    if matrix.ndim == 2 and not np.isfinite(matrix).all():
        row, j = (int(i) for i in np.argwhere(~np.isfinite(matrix))[0])
        names = features.names if isinstance(features, Table) else default_names(j + 1)
        raise TableError(
            "is missing or not a finite number; this model was trained before preprocessing "
            "was part of the model and cannot impute missing cells",
            column=names[j],
            row=row,
        )
    return matrix


def predict(
    architecture: dict[str, Any], state: dict[str, np.ndarray], features: Any
) -> dict[str, Any]:
    """Predictions of a stored model for raw rows (see `Model.predict`)."""
    return Model(architecture, state).predict(features)
