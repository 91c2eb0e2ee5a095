"""Trained models: look up, serialise, predict, evaluate on another dataset.

Every lookup takes a reference: a model id, `NAME@vN` or `NAME@ALIAS`, resolved by
`service.registry.model_id_clause` in the statement that reads the model (`_owned`)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa
from sqlalchemy.orm import Session, undefer

from core import metrics
from core.model import Model, probabilities_from_logits, weights_from_npz
from core.preprocessing import MissingValueError
from core.table import NUMERIC, Table, TableError
from core.training import encode_targets
from service import ingest
from service.config import Limits
from service.datasets import get_dataset, read_chunks, read_targets, uploaded_names
from service.db import iso_utc, paginate
from service.problems import ApiError, InputError
from service.registry import model_id_clause, not_found
from service.tables import Dataset, TrainedModel

#: rows encoded and predicted at a time for a streamed answer
PREDICT_ROWS = 1 << 16


def _not_found(ref: str) -> ApiError:
    return not_found(ref)


def _owned(ref: str, owner: str) -> Any:
    """The WHERE clause for the owner's model `ref` names (an id, `NAME@vN`, `NAME@ALIAS`;
    404 for a reference that cannot name one). An alias is read in the statement that reads
    the model: an alias moved meanwhile gives the old model or the new one, whole."""
    clause = model_id_clause(ref, owner)
    if clause is None:
        raise _not_found(ref)
    return sa.and_(
        TrainedModel.id == clause, TrainedModel.owner == owner, TrainedModel.deleted_at.is_(None)
    )


def get_model(
    session: Session, model_id: str, owner: str, *, with_weights: bool = False
) -> TrainedModel:
    query = sa.select(TrainedModel).where(_owned(model_id, owner))
    if with_weights:
        query = query.options(undefer(TrainedModel.weights))
    model = session.scalars(query).one_or_none()
    if model is None:
        raise _not_found(model_id)
    return model


def get_graph_svg(session: Session, model_id: str, owner: str) -> str:
    svg = session.scalar(sa.select(TrainedModel.graph_svg).where(_owned(model_id, owner)))
    if svg is None:
        raise _not_found(model_id)
    return svg


def get_weights(session: Session, model_id: str, owner: str) -> bytes:
    blob = session.scalar(sa.select(TrainedModel.weights).where(_owned(model_id, owner)))
    if blob is None:
        raise _not_found(model_id)
    return blob


def columns_of(architecture: dict[str, Any]) -> list[dict[str, Any]]:
    """The input columns a model was trained on: `name`, `type`, and for a categorical column
    the `levels` seen in training (x0, x1, ... numeric for older models)."""
    pre = architecture.get("preprocessing")
    if pre:
        out: list[dict[str, Any]] = []
        for column, step in zip(pre["columns"], pre["steps"], strict=True):
            entry = {"name": column["name"], "type": column["type"]}
            if column["type"] == "categorical":
                entry["levels"] = list(step.get("levels") or [])
            out.append(entry)
        return out
    return [{"name": f"x{i}", "type": "numeric"} for i in range(architecture["nin"])]


def serialize_model(model: TrainedModel, *, parameters: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": model.id,
        "job_id": model.job_id,
        "dataset_id": model.dataset_id,
        "architecture": model.architecture,
        "metrics": model.metrics,
        "evaluation": model.evaluation,
        "columns": columns_of(model.architecture),
        "created_at": iso_utc(model.created_at),
        "expires_at": iso_utc(model.expires_at),
        # the training dataset was deleted (the model keeps its preprocessing and still works)
        "dataset_deleted": bool(model.dataset_gone),
    }
    if parameters:
        state = weights_from_npz(model.weights)
        out["parameters"] = {name: array.tolist() for name, array in state.items()}
    return out


def list_models(
    session: Session, owner: str, page: int, page_size: int
) -> tuple[list[TrainedModel], int]:
    return paginate(
        session,
        sa.select(TrainedModel)
        .where(TrainedModel.owner == owner, TrainedModel.deleted_at.is_(None))
        .order_by(TrainedModel.created_at.desc(), TrainedModel.id.desc()),
        page,
        page_size,
    )


def loaded(model: TrainedModel) -> Model:
    return Model(model.architecture, weights_from_npz(model.weights))


def export(session: Session, model: TrainedModel, fmt: str) -> tuple[bytes, str, str]:
    """(body, media type, file name) of the model exported as `fmt` (`service.export`)."""
    from service import export as exporter
    from service.tables import Job

    trained = loaded(model)
    if fmt == "onnx":
        try:
            body = exporter.to_onnx(trained, name=f"trainyard-{model.id}")
        except exporter.ExportError as exc:
            raise InputError("format", str(exc)) from None
        return body, "application/octet-stream", f"model-{model.id}.onnx"
    spec = session.execute(
        sa.select(Job.model_spec, Job.training_spec).where(Job.id == model.job_id)
    ).first()
    info = {
        "model_id": model.id,
        "job_id": model.job_id,
        "dataset_id": model.dataset_id,
        "metrics": model.metrics,
        "evaluation": model.evaluation,
        "spec": {"model": spec.model_spec, "training": spec.training_spec} if spec else None,
    }
    return exporter.to_bundle(trained, info), "application/zip", f"model-{model.id}.zip"


def bundle(model: TrainedModel) -> bytes:
    """The model as one file: weights plus architecture and preprocessing (`core.model`)."""
    return loaded(model).to_bytes()


def input_table(model: TrainedModel, data: dict[str, Any], limits: Limits) -> Table:
    """The rows to predict on from a JSON body: `rows` (by column name) or `features` (cells
    in the training column order), typed as the training columns were."""
    columns = columns_of(model.architecture)
    names = [c["name"] for c in columns]
    types = {c["name"]: c["type"] for c in columns}
    if "rows" in data:
        table, _ = ingest.table_from_records(
            data["rows"], "rows", limits, names=names, column_types=types
        )
        return table
    width = ingest.check_rows(data["features"], "features", limits)
    if width != len(names):
        raise InputError(
            "features",
            f"rows have {width} values; the model takes {len(names)} features ({names})",
        )
    return ingest.table_from_cells(
        data["features"], "features", limits, names=names, column_types=types
    )


def target_columns_of(session: Session, model: TrainedModel) -> list[str]:
    """The names a file may carry the training target under (its name, and the columns a
    dataset download names it by: `service.datasets.uploaded_names`); [] when the training
    dataset is gone."""
    dataset = session.get(Dataset, model.dataset_id) if model.dataset_id else None
    if dataset is None:
        return []
    names = uploaded_names(dataset)[1]
    if dataset.target_name and dataset.target_name not in names:
        names.append(dataset.target_name)
    return [n for n in names if n not in {c["name"] for c in columns_of(model.architecture)}]


def csv_table(session: Session, model: TrainedModel, raw: bytes, limits: Limits) -> Table:
    """The rows of a CSV file to predict on; a target column it carries (a labelled file) is
    left out."""
    columns = columns_of(model.architecture)
    return ingest.table_from_csv(
        raw,
        [c["name"] for c in columns],
        [c["type"] for c in columns],
        limits,
        ignored=target_columns_of(session, model),
    )


def predict(model: TrainedModel, table: Table, field: str = "features") -> dict[str, Any]:
    """Predictions for a table with the model's columns (its preprocessing applied)."""
    try:
        return loaded(model).predict(table)
    except MissingValueError as exc:
        raise InputError(
            field,
            f"row {exc.row}, column {exc.column!r} is missing, and the model was trained with "
            'preprocessing.missing "error"',
        ) from None
    except TableError as exc:
        raise ingest.table_error(exc, field) from None


def prediction_outputs(model: TrainedModel, table: Table, field: str = "features") -> np.ndarray:
    """The network's outputs `(n, width)` for every row of `table`, `PREDICT_ROWS` rows
    encoded at a time; a row that cannot be predicted is a 422 naming it (so that an answer
    streamed from these outputs never fails half way)."""
    trained = loaded(model)
    pieces = []
    for start in range(0, table.n_rows, PREDICT_ROWS):
        piece = table.take(np.arange(start, min(start + PREDICT_ROWS, table.n_rows)))
        try:
            pieces.append(trained.outputs(trained.encode(piece)))
        except MissingValueError as exc:
            raise InputError(
                field,
                f"row {exc.row + start}, column {exc.column!r} is missing, and the model was "
                'trained with preprocessing.missing "error"',
            ) from None
        except TableError as exc:
            if exc.row is not None:
                exc = TableError(exc.message, column=exc.column, row=exc.row + start)
            raise ingest.table_error(exc, field) from None
    if not pieces:
        return np.empty((0, int(model.architecture["layers"][-1])))
    return np.concatenate(pieces)


def prediction_schema(model: TrainedModel) -> pa.Schema:
    """The columns of streamed predictions: `prediction` (labels as text, or numbers;
    `prediction_0`, `prediction_1`, ... for several outputs), then `p_<label>` per class."""
    return schema_of(model.architecture)


def schema_of(arch: dict[str, Any]) -> pa.Schema:
    """`prediction_schema` of a model's architecture (batch predictions write these columns
    too, `service.predictions`)."""
    width = int(arch["layers"][-1])
    if arch["loss"] == "mse":
        if width == 1:
            return pa.schema([("prediction", pa.float64())])
        return pa.schema([(f"prediction_{j}", pa.float64()) for j in range(width)])
    classes = arch.get("classes") or []
    return pa.schema(
        [("prediction", pa.string()), *((f"p_{label}", pa.float64()) for label in classes)]
    )


def prediction_batches(model: TrainedModel, outputs: np.ndarray) -> Iterator[pa.RecordBatch]:
    """Predictions from `prediction_outputs`, `PREDICT_ROWS` rows a batch, each made as it is
    read (the answer's text is never whole). What the model says is taken now: the batches are
    read after the view has returned, its session closed."""
    to_batch = BatchOf(model.architecture)

    def batches() -> Iterator[pa.RecordBatch]:
        for start in range(0, len(outputs), PREDICT_ROWS):
            yield to_batch(outputs[start : start + PREDICT_ROWS])

    return batches()


class BatchOf:
    """The record batch (`schema_of`'s columns) of a model's outputs `(n, width)`: values for
    regression; the predicted label (as text) and each class's probability otherwise. NumPy
    and Arrow over whole columns, no Python per row."""

    def __init__(self, arch: dict[str, Any]) -> None:
        self.loss = str(arch["loss"])
        self.schema = schema_of(arch)
        self.labels = pa.array([str(c) for c in arch.get("classes") or []], pa.string())

    def __call__(self, values: np.ndarray) -> pa.RecordBatch:
        if self.loss == "mse":
            arrays = [pa.array(values[:, j]) for j in range(values.shape[1])]
        else:
            probabilities = probabilities_from_logits(self.loss, values).astype(np.float64)
            predicted = pc.take(self.labels, pa.array(probabilities.argmax(axis=1)))
            arrays = [predicted, *(pa.array(probabilities[:, j]) for j in range(len(self.labels)))]
        return pa.record_batch(arrays, schema=self.schema)


def _check_targets(dataset: Dataset, loss: str, classes: list[Any] | None, width: int) -> None:
    """Refuse a dataset whose targets the model cannot be scored on (422 on `dataset_id`)."""
    if loss == "mse":
        if dataset.target_kind != "numeric" or dataset.n_targets != width:
            raise InputError("dataset_id", "its targets do not fit the model's outputs")
        return
    if dataset.target_kind != "labels" and dataset.classes is None:
        raise InputError(
            "dataset_id", f"its targets are numbers, not the model's class labels {classes}"
        )
    unknown = [c for c in dataset.classes or [] if c not in (classes or [])]
    if unknown:
        raise InputError("dataset_id", f"has classes the model does not know: {unknown[:10]}")


def evaluate(session: Session, model: TrainedModel, dataset_id: str, owner: str) -> dict[str, Any]:
    """Score a model on one of the owner's datasets with its columns: the job's metrics. The
    rows stream from the store a row group at a time, and so do the metrics (`core.metrics`'
    accumulators): nothing the size of the dataset is held."""
    dataset = get_dataset(session, dataset_id, owner)
    arch = model.architecture
    wanted = [c["name"] for c in columns_of(arch)]
    names = dataset.feature_names or [f"x{i}" for i in range(dataset.n_features)]
    if sorted(names) != sorted(wanted):
        raise InputError(
            "dataset_id", f"the dataset's columns {names} are not the model's columns {wanted}"
        )
    kinds = {c["name"]: c["type"] for c in dataset.columns or []}
    for spec in columns_of(arch):
        kind = kinds.get(spec["name"], NUMERIC)
        if spec["type"] == NUMERIC and kind != NUMERIC:
            raise InputError(
                "dataset_id",
                f"column {spec['name']!r} is {kind} in the dataset but numeric in the model",
            )
    loss = arch["loss"]
    classes = arch.get("classes")
    _check_targets(dataset, loss, classes, arch["layers"][-1])
    trained = loaded(model)
    if loss != "mse" and dataset.target_kind == "labels":
        # the dataset's class indices -> the model's
        remap = np.asarray([(classes or []).index(v) for v in dataset.classes or []], np.int64)

        def encoded(targets: np.ndarray) -> np.ndarray:
            return encode_targets(loss, "labels", remap[targets.reshape(-1)], classes)
    else:

        def encoded(targets: np.ndarray) -> np.ndarray:
            return encode_targets(loss, "numeric", targets, classes if loss != "mse" else None)

    # Metrics accumulate a row group at a time (as a job's evaluation does): the class counts
    # first, from the targets' columns alone, then the outputs of each row group.
    scores: metrics.ClassificationMetrics | metrics.RegressionMetrics
    if loss == "mse":
        scores = metrics.RegressionMetrics()
    else:
        k = len(classes or [])
        counts = np.zeros(k, dtype=np.int64)
        for part in read_targets(dataset):
            counts += metrics.class_counts(encoded(part).reshape(-1).astype(np.int64), k)
        scores = metrics.ClassificationMetrics(list(classes or []), counts)
    try:
        for chunk, chunk_targets in read_chunks(dataset):
            table = Table([chunk.columns[names.index(n)] for n in wanted])
            outputs = trained.outputs(trained.encode(table))
            y = encoded(chunk_targets)
            if isinstance(scores, metrics.RegressionMetrics):
                scores.update(y, outputs)
            else:
                scores.update(
                    y.reshape(-1).astype(np.int64), probabilities_from_logits(loss, outputs)
                )
    except MissingValueError as exc:
        raise InputError("dataset_id", str(exc)) from None
    except TableError as exc:
        raise ingest.table_error(exc, "dataset_id") from None
    report = scores.result()
    return {"model_id": model.id, "dataset_id": dataset.id, "evaluation": report}
