"""Batch predictions: a trained model's predictions for every row of a stored dataset, made by
a job of kind "predict" on a worker and written to the dataset store.

- **Submit** (`submit`, `POST /models/{id}/predictions`): the model and the dataset must be the
  owner's (404), the dataset must hold every feature column the model takes (422 naming the
  first missing one; a numeric column of the model must be numeric in the dataset); its target
  and any other column are not read. The job is committed `queued` and published to the
  predict task (`service.lifecycle.PREDICT_TASK`); from there it lives the life of every job
  (`service.lifecycle`: claim, heartbeats, attempts, cancel, reaper, time limits, events,
  webhooks).
- **Run** (`workers.predicting`, with what `load` and `read_input` give it): the dataset's rows
  are read a row group at a time, predicted (`BatchPredictor`) and written as Parquet parts
  under `{store}/predictions/{job_id}/{attempt}/` (`service.dataset_store`, prefix
  `PREDICTIONS`); each attempt starts by deleting what earlier attempts left.
- **Download** (`output`, `GET /predictions/{job_id}/data`): once the job succeeded, its parts
  stream back a row group at a time; before that, 409 naming the job's status.
- **Clean-up** (`delete_unused`, the workers' maintenance): the parts of predict jobs that
  ended without success (or no longer exist) are deleted.

The predictions' columns are those of `POST /models/{id}/predict`'s streamed answer (CSV,
JSON lines, Parquet), one row per input row: for classification `prediction` (the predicted
class, as text) then `p_<class>` for every class, in the model's class order; for regression
`prediction` (one output) or `prediction_0` ... `prediction_{k-1}`. A chunk is computed with
NumPy and Arrow alone: no Python per row.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import sqlalchemy as sa
from sqlalchemy.orm import Session

from core.model import Model, weights_from_npz
from core.table import NUMERIC, Table
from service import lifecycle
from service.columnar import batch_to_table
from service.config import Limits
from service.dataset_store import (
    ORPHAN_AFTER_S,
    PREDICTIONS,
    DatasetStore,
    StoreError,
    store_for,
)
from service.datasets import find_dataset
from service.jobs import check_active_jobs, get_job
from service.problems import ApiError, InputError
from service.tables import Dataset, Job, TrainedModel
from service.trained_models import BatchOf, columns_of, get_model, schema_of


class BatchPredictor:
    """A model's predictions for tables of its input columns, as record batches: the columns
    and values of `POST /models/{id}/predict`'s streamed answer (`trained_models.BatchOf`),
    the input encoded straight into the network's dtype."""

    def __init__(self, model: Model) -> None:
        self.model = model
        self.to_batch = BatchOf(model.architecture)

    def __call__(self, table: Table) -> pa.RecordBatch:
        return self.to_batch(self.model.outputs(self.model.encode(table, self.model.dtype)))


def check_columns(model: TrainedModel, dataset: Dataset) -> list[str]:
    """The model's feature columns, in its order, if the dataset has them all (422 on
    `dataset_id` naming the first it lacks, or a numeric column the dataset holds as text)."""
    wanted = columns_of(model.architecture)
    names = dataset.feature_names or [f"x{i}" for i in range(dataset.n_features)]
    kinds = {c["name"]: c["type"] for c in dataset.columns or []}
    for spec in wanted:
        if spec["name"] not in names:
            raise InputError(
                "dataset_id",
                f"has no column {spec['name']!r}, which the model takes "
                f"(its columns: {[c['name'] for c in wanted]})",
            )
        kind = kinds.get(spec["name"], NUMERIC)
        if spec["type"] == NUMERIC and kind != NUMERIC:
            raise InputError(
                "dataset_id",
                f"column {spec['name']!r} is {kind} in the dataset but numeric in the model",
            )
    return [c["name"] for c in wanted]


def submit(
    session: Session,
    model_id: str,
    data: Mapping[str, Any],
    owner: str,
    limits: Limits,
) -> Job:
    """Validate a batch prediction request and add its job, `queued` (flushed; the caller
    commits, then publishes with kind "predict")."""
    model = get_model(session, model_id, owner)
    dataset_id = data["dataset_id"]
    dataset = find_dataset(session, dataset_id, owner)
    if dataset is None:
        message = f"no dataset with id {dataset_id!r}"
        raise ApiError(404, message, {"dataset_id": message})
    check_columns(model, dataset)
    check_active_jobs(session, owner, limits)
    return lifecycle.submit_predict(
        session,
        owner=owner,
        model_id=model.id,
        dataset_id=dataset.id,
        rows_total=dataset.n_samples,
        name=data.get("name"),
        tags=data.get("tags"),
    )


def get_predict_job(session: Session, job_id: str, owner: str) -> Job:
    """The owner's predict job (404 for any other job, or another owner's)."""
    job = get_job(session, job_id, owner)
    if job.kind != "predict":
        raise ApiError(404, f"No predict job with id {job_id!r}.")
    return job


# -- the worker's side ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PredictInput:
    """What a predict attempt needs, read from the store in one transaction (no session kept):
    the model, and where and how to read the dataset's feature columns."""

    model: Model
    location: str
    names: list[str]
    types: list[str]
    n_rows: int


def load(session: Session, job_id: str) -> PredictInput:
    """The predict job's model and input dataset."""
    job = session.get(Job, job_id)
    if job is None or job.kind != "predict" or job.model_id is None:
        raise ValueError(f"job {job_id} is not a predict job")
    row = session.execute(
        sa.select(TrainedModel.architecture, TrainedModel.weights).where(
            TrainedModel.id == job.model_id
        )
    ).first()
    if row is None:
        raise ValueError(f"model {job.model_id} does not exist")
    dataset = session.get(Dataset, job.dataset_id)
    if dataset is None or dataset.location is None:
        raise ValueError(f"dataset {job.dataset_id} has no rows in the store")
    columns = columns_of(row.architecture)
    kinds = {c["name"]: c["type"] for c in dataset.columns or []}
    names = [c["name"] for c in columns]
    return PredictInput(
        model=Model(row.architecture, weights_from_npz(row.weights)),
        location=dataset.location,
        names=names,
        types=[kinds.get(n, NUMERIC) for n in names],
        n_rows=dataset.n_samples,
    )


def read_input(source: PredictInput) -> Iterator[Table]:
    """The dataset's feature columns that the model takes, a row group at a time (typed as
    the dataset describes them; the target and other columns are not read)."""
    store, dataset_id = DatasetStore.at(source.location)
    for batch in store.read_batches(dataset_id, columns=source.names):
        yield batch_to_table(batch, source.names, source.types)


def output_key(job_id: str, attempt: int) -> str:
    """The folder of an attempt's parts, under the store's `PREDICTIONS` prefix."""
    return f"{job_id}/{attempt}"


# -- the download --------------------------------------------------------------------------------


def output(session: Session, job_id: str, owner: str) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
    """The schema of a succeeded predict job's predictions and their rows, a row group at a
    time (read lazily: the answer streams; the first row group is read here, so a store that
    is down is a 503 before the answer starts). 409 naming the status before it succeeded."""
    job = get_predict_job(session, job_id, owner)
    if job.status != "succeeded" or job.output_location is None:
        raise ApiError(
            409,
            f"Job {job_id} is {job.status}; its predictions can be downloaded once it has "
            "succeeded.",
            code="job_not_succeeded",
        )
    store, key = DatasetStore.at(job.output_location, PREDICTIONS)
    try:
        parts = store.parts(key, PREDICTIONS)
        if not parts:  # a dataset with no rows: no part was written
            model = session.get(TrainedModel, job.model_id)
            schema = schema_of(model.architecture) if model else pa.schema([])
            return schema, iter(())
        schema = store.open_part(parts[0]).schema_arrow
        batches = store.read_batches(key, prefix=PREDICTIONS)
        first = next(batches, None)
    except StoreError as exc:
        raise ApiError(503, f"The dataset store is unavailable: {exc}") from None
    return schema, itertools.chain([] if first is None else [first], batches)


# -- clean-up ------------------------------------------------------------------------------------


def delete_unused(
    factory: Any, store_url: str, older_than_s: float = ORPHAN_AFTER_S, now: float | None = None
) -> list[str]:
    """Delete the prediction parts of jobs that did not succeed (failed, cancelled: a worker
    lost for good leaves its attempt's parts) or no longer exist, and of a succeeded job's
    attempts other than its `output_location` (a lost attempt that went on writing), once
    their newest part is `older_than_s` old. The job ids (or `job_id/attempt`s) cleaned."""
    store = store_for(store_url)
    cutoff = (time.time() if now is None else now) - older_than_s
    attempts = store.dataset_ids(PREDICTIONS, depth=2)
    newest: dict[str, float] = {}
    for key, mtime in attempts.items():
        job_id = key.split("/", 1)[0]
        newest[job_id] = max(newest.get(job_id, 0.0), mtime)
    stale = [key for key, mtime in newest.items() if mtime < cutoff]
    stale_attempts = [key for key, mtime in attempts.items() if mtime < cutoff]
    if not stale and not stale_attempts:
        return []
    with factory() as session:
        keep = set(
            session.scalars(
                sa.select(Job.id).where(
                    Job.id.in_(stale), Job.status.in_(("queued", "running", "succeeded"))
                )
            )
        )
        outputs = dict(
            session.execute(
                sa.select(Job.id, Job.output_location).where(
                    Job.id.in_({key.split("/", 1)[0] for key in stale_attempts}),
                    Job.status == "succeeded",
                )
            ).all()
        )
    unused = [key for key in stale if key not in keep]
    for key in unused:
        store.delete(key, PREDICTIONS)
    for key in stale_attempts:
        output = outputs.get(key.split("/", 1)[0])
        if output is None or output.rstrip("/").endswith(f"/{PREDICTIONS}/{key}"):
            continue  # not a succeeded job's, or its output
        store.delete(key, PREDICTIONS)
        unused.append(key)
    return unused
