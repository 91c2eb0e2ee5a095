"""`Client`: typed methods over the trainyard REST API (`/api/v1`), on `requests`.

Answers are the API's JSON objects, typed as `TypedDict`s. An error answer becomes an
`ApiError` (`NotFoundError` for 404) carrying the API's `code`, `message`, `fields` and the HTTP
`status`; a server that cannot be reached becomes a `ConnectionFailed`.
"""

from __future__ import annotations

import csv
import io
import json
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, TypedDict

import numpy as np
import requests

import engine

# the errors live in their own module (client.resumable raises them too); imported from here
from client.errors import (  # noqa: F401 (re-exported)
    ApiError,
    ConnectionFailed,
    NotFoundError,
    TrainyardError,
    WaitTimeout,
)
from core.model import Model as CoreModel
from core.paths import user_data_dir

DEFAULT_URL: Final = "http://127.0.0.1:8000"
API_PREFIX: Final = "/api/v1"
FINISHED: Final = ("succeeded", "failed", "cancelled")
#: `wait` polls instead once the event stream broke this many times in a row.
MAX_STREAM_BREAKS: Final = 3
#: The server sends a keep-alive comment every 15 s: a stream silent this long is broken.
STREAM_READ_TIMEOUT: Final = 60.0


class Pagination(TypedDict):
    page: int
    page_size: int
    total: int
    pages: int


class Dataset(TypedDict, total=False):
    id: str
    name: str
    n_samples: int
    n_features: int
    n_targets: int
    classes: list[Any]
    feature_names: list[str]
    #: one per feature column: `name`, `type` (numeric / categorical), `missing`; numeric:
    #: `min`, `max`, `mean`, `std`; categorical: `n_levels`, `top` ([{"value", "count"}])
    columns: list[dict[str, Any]]
    #: `name`, `kind` (numeric, integers or labels), `classes`
    target: dict[str, Any]
    created_at: str


class Progress(TypedDict, total=False):
    epoch: int
    epochs: int
    #: the last finished epoch's training loss (None before the first)
    loss: float | None
    #: a predict job's rows predicted so far, and its dataset's rows
    rows_done: int
    rows_total: int | None


class Job(TypedDict, total=False):
    id: str
    #: "train" or "predict" (a batch prediction: no training fields; `model_id` is the model
    #: it uses, `result` and `download_url` say where its predictions are)
    kind: str
    status: str
    dataset_id: str
    result: dict[str, Any] | None
    download_url: str
    model: dict[str, Any]
    training: dict[str, Any]
    progress: Progress
    loss_history: list[float]
    val_loss_history: list[float]
    metrics: dict[str, float] | None
    #: the saved model scored on each split that exists: `train`, `validation`, `test`
    evaluation: dict[str, dict[str, Any]] | None
    best_epoch: int | None
    stopped_epoch: int | None
    stop_reason: str | None
    error: str | None
    model_id: str | None
    attempts: int
    cancel_requested: bool
    created_at: str
    started_at: str | None
    finished_at: str | None


class Model(TypedDict, total=False):
    id: str
    job_id: str
    dataset_id: str
    architecture: dict[str, Any]
    parameters: dict[str, Any]
    metrics: dict[str, float]
    evaluation: dict[str, dict[str, Any]] | None
    columns: list[dict[str, str]]
    created_at: str


class Evaluation(TypedDict):
    model_id: str
    dataset_id: str
    evaluation: dict[str, Any]


class Prediction(TypedDict, total=False):
    predictions: list[Any]
    probabilities: list[list[float]]


class Page(TypedDict):
    items: list[Any]
    pagination: Pagination


class Sweep(TypedDict, total=False):
    id: str
    name: str | None
    tags: dict[str, str]
    #: queued, running, succeeded (a trial succeeded), failed (none did) or cancelled
    status: str
    dataset_id: str
    method: str
    base: dict[str, Any]
    parameters: dict[str, Any]
    metric: dict[str, str]
    max_trials: int | None
    max_parallel: int | None
    seed: int | None
    early_termination: dict[str, Any] | None
    #: trials, queued, running, succeeded, failed, cancelled
    progress: dict[str, int]
    #: job_id, index, params, status, metric_value, epoch, epochs, stop_reason, model_id
    trials: list[dict[str, Any]]
    #: job_id, model_id, params, metric_value (null until a trial succeeded)
    best: dict[str, Any] | None
    cancel_requested: bool
    created_at: str
    started_at: str | None
    finished_at: str | None


def api_key_locations(env: Mapping[str, str] | None = None, cwd: Path | None = None) -> list[Path]:
    """The key files `find_api_key` reads, in order: `$TRAINYARD_VAR_DIR/api-key` (when set),
    `./var/api-key` (a checkout's `make run`), then the user's data folder (an installed
    `trainyard-server`: `core.paths.user_data_dir`)."""
    env = os.environ if env is None else env
    candidates = []
    if env.get("TRAINYARD_VAR_DIR"):
        candidates.append(Path(env["TRAINYARD_VAR_DIR"]) / "api-key")
    candidates.append((cwd or Path.cwd()) / "var" / "api-key")
    candidates.append(user_data_dir(env) / "api-key")
    return candidates


def find_api_key(env: Mapping[str, str] | None = None, cwd: Path | None = None) -> str | None:
    """`TRAINYARD_API_KEY`, else the embedded mode's key file (`api_key_locations`)."""
    env = os.environ if env is None else env
    if env.get("TRAINYARD_API_KEY"):
        return env["TRAINYARD_API_KEY"].strip()
    for path in api_key_locations(env, cwd):
        try:
            key = path.read_text().strip()
        except OSError:
            continue
        if key:
            return key
    return None


MISSING_CELLS: Final = frozenset({"", "na", "nan", "null", "none"})


def _cell(value: Any) -> Any:
    """NaN (not valid JSON) is a missing cell: null."""
    return None if isinstance(value, float) and value != value else value


def _matrix(features: Any) -> list[Any]:
    """NumPy arrays become nested lists (a 1-D array one feature per row); lists go as they
    are, so the server's validation names what is wrong with them. NaN becomes null (a missing
    cell)."""
    if isinstance(features, np.ndarray):
        features = (features.reshape(-1, 1) if features.ndim == 1 else features).tolist()
    rows = [row.tolist() if isinstance(row, np.ndarray) else row for row in features]
    return [
        [_cell(v) for v in row] if isinstance(row, list | tuple) else _cell(row) for row in rows
    ]


def _records(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Named rows as JSON objects (NumPy scalars as Python values, NaN as null)."""
    return [
        {str(k): _cell(v.item() if isinstance(v, np.generic) else v) for k, v in row.items()}
        for row in rows
    ]


def _is_frame(value: Any) -> bool:
    """A pandas DataFrame (duck-typed: the client does not need pandas)."""
    return hasattr(value, "to_csv") and hasattr(value, "columns") and hasattr(value, "dtypes")


def _frame_csv(frame: Any) -> io.BytesIO:
    """A DataFrame as the CSV the server reads: its header, no index; a missing cell (NaN,
    None, pd.NA, NaT) is an empty cell."""
    return io.BytesIO(frame.to_csv(index=False).encode("utf-8"))


def _is_records(rows: Any) -> bool:
    """A non-empty list of dicts (named rows), rather than rows of cells."""
    return (
        isinstance(rows, Sequence)
        and not isinstance(rows, str)
        and len(rows) > 0
        and isinstance(rows[0], Mapping)
    )


def _targets(targets: Any) -> list[Any]:
    if isinstance(targets, np.ndarray):
        return targets.tolist()
    return [t.tolist() if isinstance(t, np.ndarray | np.generic) else t for t in targets]


def _parse_cell(text: str) -> Any:
    if text.strip().lower() in MISSING_CELLS:
        return None
    try:
        return float(text)
    except ValueError:
        return text


def read_features_csv(path: str | Path) -> list[list[Any]]:
    """The rows of a CSV file with a header row, as cells in column order: numbers where a
    cell reads as one, None for a missing cell (empty, NA, NaN, null, None), else the text."""
    with open(path, newline="") as f:
        rows = [row for row in csv.reader(f) if row]
    if len(rows) < 2:
        raise ValueError(f"{path}: a header row and at least one row are needed")
    return [[_parse_cell(cell) for cell in row] for row in rows[1:]]


#: the file formats `download_dataset` and `predict_csv(..., out=...)` write, and the media
#: type each asks the server for
DOWNLOAD_FORMATS: Final = {
    "csv": "text/csv",
    "jsonl": "application/x-ndjson",
    "parquet": "application/vnd.apache.parquet",
}
_FORMAT_OF_SUFFIX: Final = {
    ".csv": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}
#: bytes read from a streamed answer at a time
DOWNLOAD_CHUNK: Final = 1 << 20


def download_format(path: str | Path, format: str | None = None) -> str:
    """`format` (csv, jsonl, parquet), else the one `path`'s suffix names, else csv."""
    if format is not None:
        if format not in DOWNLOAD_FORMATS:
            raise ValueError(f"unknown format {format!r}: one of {', '.join(DOWNLOAD_FORMATS)}")
        return format
    return _FORMAT_OF_SUFFIX.get(Path(path).suffix.lower(), "csv")


def save_stream(response: requests.Response, path: str | Path) -> int:
    """Write a streamed answer to `path` as it arrives (a MiB at a time, never whole in
    memory), through `<path>.part` renamed once complete: a download cut off leaves no file
    that looks whole. The bytes written."""
    path = Path(path)
    part = path.with_name(path.name + ".part")
    written = 0
    try:
        with part.open("wb") as f:
            for chunk in response.iter_content(DOWNLOAD_CHUNK):
                f.write(chunk)
                written += len(chunk)
        os.replace(part, path)
    except requests.RequestException as exc:
        part.unlink(missing_ok=True)
        raise ConnectionFailed(f"the download to {path} was cut off: {exc}") from exc
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    finally:
        response.close()
    return written


class LocalModel(CoreModel):
    """A trained model to run locally (what `Client.load_model` returns): a
    `core.model.Model`, its weights and its fitted preprocessing (scaling, one-hot, imputing).

    `predict(rows)` takes named rows (dicts; a missing key is a missing cell) or rows of raw
    cells in the training column order (`columns`), as `/predict` does, and answers the same
    `{"predictions", "probabilities"?}`. `mlp` is the `engine.nn.MLP`; it takes the
    *encoded* inputs (`encode(rows)`), not the raw cells. Calling the model itself, as code
    written when `load_model` returned the bare MLP does (`model(x).numpy()`), gives the
    network's outputs for raw rows (logits; regression values in the target's units) as an
    `engine.Tensor`.
    """

    def __call__(self, features: Any) -> engine.Tensor:
        if _is_records(features):
            features = self.cells(features)
        return engine.Tensor(self.outputs(self.encode(features)), requires_grad=False)

    def predict(self, features: Any) -> dict[str, Any]:
        if _is_records(features):
            features = self.cells(features)
        return super().predict(features)

    def cells(self, rows: Sequence[Mapping[str, Any]]) -> list[list[Any]]:
        """Named rows as rows of cells in the training column order; an unknown key is a
        `ValueError`."""
        names = [c["name"] for c in self.columns]
        known = set(names)
        for i, row in enumerate(rows):
            unknown = [key for key in row if key not in known]
            if unknown:
                raise ValueError(
                    f"row {i}: unknown column {unknown[0]!r}; the model takes the columns {names}"
                )
        return [[_cell(row.get(name)) for name in names] for row in rows]


_UNSET: Any = object()


def _label_key(label: Any) -> str:
    """A class label as a JSON object key, as the server reads it (`str(label)`)."""
    if isinstance(label, np.generic):
        label = label.item()
    return str(label)


def sse_events(response: requests.Response) -> Iterator[tuple[str, Any]]:
    """The (event, JSON data) pairs of a server-sent-events answer, as they arrive."""
    event, data = "message", ""
    for line in response.iter_lines(decode_unicode=True):
        if line == "":
            if data:
                yield event, json.loads(data)
            event, data = "message", ""
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data += line[5:].strip()


def with_epoch(job: Job, epoch: Mapping[str, Any]) -> Job:
    """`job` with one finished epoch (an `epoch` event) in its progress and histories; an
    epoch it already holds (a `status` event's job may be ahead of the epoch events that
    follow it) changes nothing, and progress never goes back."""
    n = int(epoch["epoch"])
    out: dict[str, Any] = dict(job)
    history = list(job.get("loss_history") or [])
    if n > len(history):
        out["loss_history"] = [*history, epoch["loss"]]
        val = list(job.get("val_loss_history") or [])
        if epoch.get("val_loss") is not None and n > len(val):
            out["val_loss_history"] = [*val, epoch["val_loss"]]
    progress = dict(job.get("progress") or {})
    if n >= int(progress.get("epoch") or 0):
        progress.update(epoch=n, loss=epoch["loss"])
    out["progress"] = progress
    return out  # type: ignore[return-value]


#: the formats of `Client.download_predictions`, and their media types
PREDICTION_MEDIA_TYPES = {
    "csv": "text/csv",
    "parquet": "application/vnd.apache.parquet",
    "jsonl": "application/x-ndjson",
}
PREDICTION_FORMATS_BY_SUFFIX = {".csv": "csv", ".parquet": "parquet", ".jsonl": "jsonl"}


class Client:
    """A client of one trainyard server.

    `url` defaults to `$TRAINYARD_URL`, then `http://127.0.0.1:8000`; `api_key` to
    `find_api_key()`. Every request sends `Authorization: Bearer <key>` when there is a key.
    """

    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 30.0,
        session: requests.Session | None = None,
    ) -> None:
        self.url = (url or os.environ.get("TRAINYARD_URL") or DEFAULT_URL).rstrip("/")
        self.api_key = api_key if api_key is not None else find_api_key()
        self.timeout = timeout
        self.http = session or requests.Session()
        self.http.headers["User-Agent"] = "trainyard-client/0.1"
        if self.api_key:
            self.http.headers["Authorization"] = f"Bearer {self.api_key}"

    # -- plumbing ---------------------------------------------------------------------------

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """Send a request to `/api/v1{path}`; raise `ApiError`/`ConnectionFailed` on failure."""
        kwargs.setdefault("timeout", self.timeout)
        try:
            response = self.http.request(method, f"{self.url}{API_PREFIX}{path}", **kwargs)
        except (requests.ConnectionError, requests.Timeout) as exc:
            reason = "timed out" if isinstance(exc, requests.Timeout) else "connection failed"
            raise ConnectionFailed(f"cannot reach {self.url}: {reason}") from exc
        if response.status_code >= 400:
            raise self._error(response)
        return response

    @staticmethod
    def _error(response: requests.Response) -> ApiError:
        code, message, fields = "error", response.text[:500] or response.reason, None
        try:
            error = response.json()["error"]
            code, message, fields = error["code"], error["message"], error.get("fields")
        except (ValueError, KeyError, TypeError):
            pass
        cls = NotFoundError if response.status_code == 404 else ApiError
        return cls(response.status_code, code, message, fields)

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self.request(method, path, **kwargs).json()

    def _page(self, path: str, page: int, page_size: int, **query: Any) -> Page:
        params = {"page": page, "page_size": page_size, **{k: v for k, v in query.items() if v}}
        return self._json("GET", path, params=params)

    # -- datasets ---------------------------------------------------------------------------

    def upload_dataset(
        self, features: Any, targets: Any = None, *, name: str | None = None
    ) -> Dataset:
        """Upload features (lists or a NumPy array: numbers, strings or booleans for a
        categorical column, None or NaN for a missing cell) and targets, or a CSV file's path
        (`upload_dataset("moons.csv")`, its last column the target; see `upload_csv`), or a
        pandas DataFrame and the name of its target column (`upload_dataset(frame, "species")`;
        see `upload_dataframe`)."""
        if isinstance(features, str | Path) and targets is None:
            return self.upload_csv(features, name=name)
        if _is_frame(features) and isinstance(targets, str):
            return self.upload_dataframe(features, targets, name=name)
        if targets is None:
            raise TypeError("targets are needed unless features is a CSV path")
        body = {"name": name or "dataset", "features": _matrix(features)}
        body["targets"] = _targets(targets)
        return self._json("POST", "/datasets", json=body)

    def upload_csv(
        self,
        path: str | Path,
        *,
        target: str | None = None,
        name: str | None = None,
        column_types: Mapping[str, str] | None = None,
    ) -> Dataset:
        """Upload a CSV file with a header row, as it is; `target` names the target column
        (default: the last one), `name` defaults to the file name. Columns may hold text
        (categorical) and missing cells (empty, NA, NaN, null, None); `column_types`
        (`{"zip": "categorical"}`) overrides the inferred `numeric` / `categorical`."""
        path = Path(path)
        with path.open("rb") as f:
            return self._post_csv(path.name, f, target, name, column_types)

    def upload_resumable(
        self,
        path: str | Path,
        *,
        target: str | None = None,
        name: str | None = None,
        column_types: Mapping[str, str] | None = None,
        chunk_size: int | None = None,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> Dataset:
        """Upload a dataset file (CSV, Parquet or JSON lines, by its name) in chunks with the
        tus protocol (`client.resumable`): a connection error or a timeout waits and goes on
        from the server's offset, and calling this again for the same unchanged file after an
        interruption resumes it. `on_progress(sent, total)` follows the bytes."""
        # imported here: client.resumable is used only by this method
        from client.resumable import CHUNK_SIZE, ResumableUpload

        path = Path(path)
        metadata = {"filename": path.name, "name": name or path.stem}
        if target:
            metadata["target"] = target
        if column_types:
            metadata["column_types"] = json.dumps(dict(column_types))
        upload = ResumableUpload(
            self, path, metadata, chunk_size=chunk_size or CHUNK_SIZE, on_progress=on_progress
        )
        return self.get_dataset(upload.run())

    def upload_dataframe(
        self,
        frame: Any,
        target: str,
        *,
        name: str | None = None,
        column_types: Mapping[str, str] | None = None,
    ) -> Dataset:
        """Upload a pandas DataFrame, its column names and types kept: it is sent as a CSV
        (no index), read by the server as `upload_csv` reads a file (numeric columns, text and
        category columns categorical, NaN / None / pd.NA missing cells); `target` names the
        target column; `name` defaults to "dataframe"."""
        if target not in list(frame.columns):
            raise ValueError(f"the DataFrame has no column {target!r}")
        return self._post_csv(
            "dataframe.csv", _frame_csv(frame), target, name or "dataframe", column_types
        )

    def _post_csv(
        self,
        file_name: str,
        body: Any,
        target: str | None,
        name: str | None,
        column_types: Mapping[str, str] | None,
    ) -> Dataset:
        form = {k: v for k, v in {"target": target, "name": name}.items() if v}
        if column_types:
            form["column_types"] = json.dumps(dict(column_types))
        files = {"file": (file_name, body, "text/csv")}
        return self._json("POST", "/datasets", data=form, files=files)

    def upload_rows(
        self,
        rows: Sequence[Mapping[str, Any]],
        target: str,
        name: str | None = None,
        *,
        column_types: Mapping[str, str] | None = None,
    ) -> Dataset:
        """Upload named rows (`[{"island": "Biscoe", "bill_length_mm": 41.2, ...}]`; a key left
        out, None or NaN is a missing cell); `target` names the target column."""
        body: dict[str, Any] = {
            "name": name or "dataset",
            "rows": _records(rows),
            "target": target,
        }
        if column_types:
            body["column_types"] = dict(column_types)
        return self._json("POST", "/datasets", json=body)

    def get_dataset(self, dataset_id: str) -> Dataset:
        return self._json("GET", f"/datasets/{dataset_id}")

    def list_datasets(self, page: int = 1, page_size: int = 20) -> Page:
        return self._page("/datasets", page, page_size)

    def download_dataset(
        self, dataset_id: str, path: str | Path, format: str | None = None
    ) -> Path:
        """Stream a dataset's rows to the file `path`, as they were uploaded (the feature
        columns by name, then the target; a missing cell empty or null): `format` `"csv"`,
        `"jsonl"` or `"parquet"`, by default the one `path`'s suffix names (`.csv`, `.jsonl`,
        `.ndjson`, `.parquet`, `.pq`), else CSV. Written as it arrives, never held whole."""
        fmt = download_format(path, format)
        response = self.request(
            "GET",
            f"/datasets/{dataset_id}/data",
            headers={"Accept": DOWNLOAD_FORMATS[fmt]},
            stream=True,
        )
        save_stream(response, path)
        return Path(path)

    # -- jobs -------------------------------------------------------------------------------

    def submit_job(
        self,
        dataset: str | Mapping[str, Any],
        layers: Sequence[int],
        *,
        activation: str | None = None,
        output_activation: str | None = None,
        loss: str | None = None,
        optimizer: str | None = None,
        learning_rate: float | None = None,
        momentum: float | None = None,
        weight_decay: float | None = None,
        epochs: int | None = None,
        batch_size: int | None = _UNSET,
        seed: int | None = None,
        validation_split: float | None = None,
        test_split: float | None = None,
        early_stopping: bool | Mapping[str, Any] | None = None,
        lr_schedule: str | Mapping[str, Any] | None = None,
        class_weight: str | Mapping[Any, float] | None = None,
        dtype: str | None = None,
        preprocessing: Mapping[str, str] | None = None,
        register_as: str | None = None,
    ) -> Job:
        """Submit a training job on a dataset id (or an inline dataset: `{"name", "features",
        "targets"}` or `{"name", "rows", "target"}`).

        Unset options (None) take the server's defaults (`spec_defaults()`; the job's
        `model` and `training` show what they became): `loss=None` lets the server pick it
        from the targets (binary_cross_entropy for 2 classes, cross_entropy for more, mse for
        numbers); `batch_size=None` means full batch. `test_split`: rows held out and only
        scored (`job["evaluation"]["test"]`). `early_stopping`: True (the server's patience,
        restoring the best epoch's weights, and its validation split unless one is given) or
        `{"patience", "min_delta", "restore_best"}`, each optional. `lr_schedule`: a schedule
        name, or a dict with its parameters (`{"type": "step", "step_size": 10}`).
        `class_weight`: "balanced" or `{label: weight}`. `dtype`: "float32" or "float64".
        `preprocessing`: `{"numeric": ..., "categorical": ..., "missing": ..., "target": ...}`,
        every key optional (`spec_defaults()["choices"]["preprocessing"]` lists the values).
        `register_as`: a registered model's name; the model becomes its next version when the
        job succeeds.
        """
        training: dict[str, Any] = {
            key: value
            for key, value in {
                "loss": loss,
                "optimizer": optimizer,
                "learning_rate": learning_rate,
                "momentum": momentum,
                "weight_decay": weight_decay,
                "epochs": epochs,
                "seed": seed,
                "validation_split": validation_split,
                "test_split": test_split,
                "dtype": dtype,
            }.items()
            if value is not None
        }
        if batch_size is not _UNSET:
            training["batch_size"] = batch_size
        if early_stopping is True or isinstance(early_stopping, Mapping):
            # the server fills what is not given
            training["early_stopping"] = dict(early_stopping) if early_stopping is not True else {}
        if isinstance(lr_schedule, str):
            training["lr_schedule"] = {"type": lr_schedule}
        elif lr_schedule is not None:
            training["lr_schedule"] = dict(lr_schedule)
        if isinstance(class_weight, Mapping):
            training["class_weight"] = {_label_key(k): w for k, w in class_weight.items()}
        elif class_weight is not None:
            training["class_weight"] = class_weight
        if preprocessing is not None:
            training["preprocessing"] = dict(preprocessing)
        model: dict[str, Any] = {"layers": [int(w) for w in layers]}
        if activation is not None:
            model["activation"] = activation
        if output_activation is not None:
            model["output_activation"] = output_activation
        body: dict[str, Any] = {"model": model, "training": training}
        if isinstance(dataset, str):
            body["dataset_id"] = dataset
        elif "rows" in dataset:
            body["dataset"] = {
                "name": dataset.get("name", "dataset"),
                "rows": _records(dataset["rows"]),
                "target": dataset["target"],
            }
        else:
            body["dataset"] = {
                "name": dataset.get("name", "dataset"),
                "features": _matrix(dataset["features"]),
                "targets": _targets(dataset["targets"]),
            }
        if not isinstance(dataset, str) and dataset.get("column_types"):
            body["dataset"]["column_types"] = dict(dataset["column_types"])
        if register_as is not None:
            body["register_as"] = register_as
        return self._json("POST", "/jobs", json=body)

    def spec_defaults(self) -> dict[str, Any]:
        """The server's choices and defaults for a job's spec (`GET /spec/defaults`): what
        each option left unset becomes."""
        return self._json("GET", "/spec/defaults")

    def get_job(self, job_id: str) -> Job:
        return self._json("GET", f"/jobs/{job_id}")

    def list_jobs(
        self,
        status: str | None = None,
        page: int = 1,
        page_size: int = 20,
        *,
        sweep_id: str | None = None,
        dataset_id: str | None = None,
        tags: Mapping[str, str] | None = None,
        kind: str | None = None,
    ) -> Page:
        """A page of jobs, newest first (a sweep's trials in trial order), filtered by
        `status`, `sweep_id`, `dataset_id`, `tags` (all of them) and `kind` ("train",
        "predict")."""
        tag = [f"{k}:{v}" for k, v in (tags or {}).items()]
        return self._page(
            "/jobs", page, page_size, status=status, sweep_id=sweep_id, dataset_id=dataset_id,
            tag=tag, kind=kind,
        )  # fmt: skip

    def label_job(
        self, job_id: str, *, name: str | None = None, tags: Mapping[str, str] | None = None
    ) -> Job:
        """Set a job's name and/or tags (`tags` replaces them all)."""
        body = {k: v for k, v in (("name", name), ("tags", tags)) if v is not None}
        return self._json("PATCH", f"/jobs/{job_id}", json=body)

    def cancel_job(self, job_id: str) -> Job:
        return self._json("POST", f"/jobs/{job_id}/cancel")

    def wait(
        self,
        job_id: str,
        *,
        poll_interval: float = 0.5,
        timeout: float | None = None,
        on_progress: Callable[[Job], None] | None = None,
        stream: bool = True,
    ) -> Job:
        """Follow the job until it is `succeeded`, `failed` or `cancelled`; return it.

        The job's event stream (`GET /jobs/{id}/events`) carries every status change and
        epoch as it happens; when it cannot be opened or breaks (a proxy that cuts long
        answers, a server without it), one poll, then the stream again from the last epoch
        seen (`Last-Event-ID`); after three breaks in a row, polling every `poll_interval`
        seconds (as with `stream=False`). `on_progress(job)` is called after every event or
        poll, with `progress` and the loss histories kept up to date (the last call sees the
        finished job). Raises `WaitTimeout` after `timeout` seconds.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        job = self.get_job(job_id)  # NotFoundError before anything else
        breaks = 0 if stream else MAX_STREAM_BREAKS
        while True:
            if on_progress is not None:
                on_progress(job)
            if job["status"] in FINISHED:
                return job
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeout(f"job {job_id} still {job['status']} after {timeout}s")
            if breaks < MAX_STREAM_BREAKS:
                seen: list[Job] = []
                try:
                    job = self._follow(job, deadline, on_progress, seen)
                    if job["status"] in FINISHED:
                        continue
                except (requests.RequestException, ApiError, ValueError, KeyError):
                    pass
                # the stream ended early: poll once, then open it again (unless it keeps
                # breaking before sending anything)
                breaks = 0 if seen else breaks + 1
            else:
                time.sleep(poll_interval)
            job = self.get_job(job_id)

    def _follow(
        self,
        job: Job,
        deadline: float | None,
        on_progress: Callable[[Job], None] | None,
        seen: list[Job],
    ) -> Job:
        """Apply the job's events to `job` until the stream ends (or `deadline`); returns the
        job as the events left it (each state is also appended to `seen`)."""
        history = job.get("loss_history") or []
        headers = {"Accept": "text/event-stream", "Last-Event-ID": str(len(history))}
        read_timeout = STREAM_READ_TIMEOUT
        if deadline is not None:
            read_timeout = max(0.1, min(read_timeout, deadline - time.monotonic()))
        with self.request(
            "GET", f"/jobs/{job['id']}/events", headers=headers, stream=True,
            timeout=(self.timeout, read_timeout),
        ) as response:  # fmt: skip
            for event, data in sse_events(response):
                if event == "status":
                    job = data
                elif event == "epoch":
                    job = with_epoch(job, data)
                elif event == "progress":  # a predict job's rows done
                    job = {**job, "progress": {**job.get("progress", {}), **data}}  # type: ignore[typeddict-item]
                else:
                    continue
                seen.append(job)
                if job["status"] in FINISHED:
                    return job
                if on_progress is not None:
                    on_progress(job)
                if deadline is not None and time.monotonic() >= deadline:
                    return job
        return job

    # -- sweeps -----------------------------------------------------------------------------

    def submit_sweep(self, spec: Mapping[str, Any] | None = None, **fields: Any) -> Sweep:
        """Submit a sweep: `spec` is the request body (as in a `sweep.json` file: `dataset_id`,
        `base`, `parameters`, `method`, `metric`, `max_trials`, `max_parallel`, `seed`,
        `early_termination`, `name`, `tags`); keyword fields are added to it or replace its."""
        body = {**(spec or {}), **{k: v for k, v in fields.items() if v is not None}}
        return self._json("POST", "/sweeps", json=body)

    def get_sweep(self, sweep_id: str) -> Sweep:
        return self._json("GET", f"/sweeps/{sweep_id}")

    def list_sweeps(
        self,
        status: str | None = None,
        page: int = 1,
        page_size: int = 20,
        *,
        tags: Mapping[str, str] | None = None,
    ) -> Page:
        tag = [f"{k}:{v}" for k, v in (tags or {}).items()]
        return self._page("/sweeps", page, page_size, status=status, tag=tag)

    def cancel_sweep(self, sweep_id: str) -> Sweep:
        return self._json("POST", f"/sweeps/{sweep_id}/cancel")

    def label_sweep(
        self, sweep_id: str, *, name: str | None = None, tags: Mapping[str, str] | None = None
    ) -> Sweep:
        body = {k: v for k, v in (("name", name), ("tags", tags)) if v is not None}
        return self._json("PATCH", f"/sweeps/{sweep_id}", json=body)

    def wait_sweep(
        self,
        sweep_id: str,
        *,
        poll_interval: float = 1.0,
        timeout: float | None = None,
        on_progress: Callable[[Sweep], None] | None = None,
    ) -> Sweep:
        """Poll until the sweep is `succeeded`, `failed` or `cancelled`; return it (its `best`
        is then final). `on_progress(sweep)` after every poll; `WaitTimeout` after `timeout`."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            sweep = self.get_sweep(sweep_id)
            if on_progress is not None:
                on_progress(sweep)
            if sweep["status"] in FINISHED:
                return sweep
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeout(f"sweep {sweep_id} still {sweep['status']} after {timeout}s")
            time.sleep(poll_interval)

    # -- models -----------------------------------------------------------------------------
    # Every `model_id` below is a reference: a model id, `NAME@vN` or `NAME@ALIAS` (the
    # registry's), resolved by the server at each request.

    def get_model(self, model_id: str) -> Model:
        return self._json("GET", f"/models/{model_id}")

    def list_models(self, page: int = 1, page_size: int = 20) -> Page:
        return self._page("/models", page, page_size)

    def weights(self, model_id: str) -> bytes:
        """The `.npz` of the model's `state_dict`."""
        return self.request("GET", f"/models/{model_id}/weights").content

    def download_weights(self, model_id: str, path: str | Path) -> Path:
        path = Path(path)
        path.write_bytes(self.weights(model_id))
        return path

    def bundle(self, model_id: str) -> bytes:
        """The whole model as one `.npz`: its weights plus `__model__.json` (the architecture
        with the fitted preprocessing); `core.model.Model.from_bytes(blob)` reads it."""
        return self.request("GET", f"/models/{model_id}/bundle").content

    def download_bundle(self, model_id: str, path: str | Path) -> Path:
        path = Path(path)
        path.write_bytes(self.bundle(model_id))
        return path

    def export(self, model_id: str, path: str | Path, format: str = "onnx") -> Path:
        """Write the model exported for other runtimes to `path`: `format="onnx"` (an ONNX file
        with the preprocessing inside; onnxruntime runs it) or `"bundle"` (a zip with
        `model.npz`, `weights.npz`, `model.json` and a README)."""
        response = self.request("GET", f"/models/{model_id}/export", params={"format": format})
        path = Path(path)
        path.write_bytes(response.content)
        return path

    def load_model(self, model_id: str) -> LocalModel:
        """The trained model, to run locally: a `LocalModel` (a `core.model.Model`) with its
        weights and fitted preprocessing, from `GET /models/{id}/bundle`.

        `load_model(id).predict(rows)` answers as `Client.predict` does (named rows or raw
        cells); `.mlp` is the `engine.nn.MLP` (it takes the encoded inputs: `.encode(rows)`),
        `.columns` the input columns as trained on."""
        return LocalModel.from_bytes(self.bundle(model_id))

    def graph_svg(self, model_id: str) -> str:
        """The computational graph of the model's forward pass and loss, as SVG text."""
        return self.request("GET", f"/models/{model_id}/graph.svg").text

    def predict(self, model_id: str, rows_or_features: Any) -> Prediction:
        """Predictions on raw rows; the model's preprocessing is applied by the server.

        Named rows (a list of dicts: `[{"island": "Biscoe", "bill_length_mm": 41.2}]`; a
        missing key, None or NaN is a missing cell, an unknown key an `ApiError`), or rows of
        cells in the training column order (lists or a NumPy array; strings for categorical
        columns, None or NaN for missing cells), or a CSV file's path, its rows read as cells
        in that order (its header skipped; `predict_csv` matches columns by header name), or
        a pandas DataFrame (sent as a CSV: its column names match the training columns, in any
        order, as `predict_csv` does). Answers `{"predictions": [...]}`, plus
        `"probabilities"` (one per class, in the model's `classes` order) for
        classification."""
        if _is_frame(rows_or_features):
            return self._predict_csv(model_id, "dataframe.csv", _frame_csv(rows_or_features))
        if isinstance(rows_or_features, str | Path):
            rows_or_features = read_features_csv(rows_or_features)
        if _is_records(rows_or_features):
            body = {"rows": _records(rows_or_features)}
        else:
            body = {"features": _matrix(rows_or_features)}
        return self._json("POST", f"/models/{model_id}/predict", json=body)

    def predict_csv(
        self,
        model_id: str,
        path: str | Path,
        as_csv: bool = False,
        *,
        out: str | Path | None = None,
        format: str | None = None,
    ) -> Any:
        """Predictions for a CSV file, posted as it is (`multipart`): its header names the
        columns (any order; a column left out is all missing cells; the training target's
        column, in a labelled file, is left out; another unknown one an `ApiError`).
        `as_csv=True` returns the server's CSV text (`prediction`, then one `p_<label>` column
        per class) instead of the `Prediction` JSON. `out` streams the answer to that file
        instead (never whole in memory) and returns its path: CSV, or `format` `"jsonl"` /
        `"parquet"` (by default the one `out`'s suffix names)."""
        path = Path(path)
        with path.open("rb") as f:
            if out is not None:
                fmt = download_format(out, format)
                response = self._post_predict_file(
                    model_id, path.name, f, DOWNLOAD_FORMATS[fmt], stream=True
                )
                save_stream(response, out)
                return Path(out)
            return self._predict_csv(model_id, path.name, f, as_csv)

    def _post_predict_file(
        self, model_id: str, file_name: str, body: Any, accept: str, stream: bool = False
    ) -> requests.Response:
        files = {"file": (file_name, body, "text/csv")}
        return self.request(
            "POST",
            f"/models/{model_id}/predict",
            files=files,
            headers={"Accept": accept},
            stream=stream,
        )

    def _predict_csv(self, model_id: str, file_name: str, body: Any, as_csv: bool = False) -> Any:
        accept = "text/csv" if as_csv else "application/json"
        response = self._post_predict_file(model_id, file_name, body, accept)
        return response.text if as_csv else response.json()

    def import_dataset(
        self,
        source: str,
        *,
        name: str | None = None,
        target: str | None = None,
        column_types: Mapping[str, str] | None = None,
    ) -> Job:
        """Import a dataset by reference: an object already in the object store
        (`s3://bucket/key.csv`, `.parquet`, or a folder of Parquet parts ending in `/`) under a
        prefix the server allows (`TRAINYARD_IMPORT_PREFIXES`; else an `ApiError` 403). Returns
        the import job; `wait` for it, then its `dataset_id` names the dataset."""
        body: dict[str, Any] = {"source": source}
        fields = (("name", name), ("target", target), ("column_types", column_types))
        body.update({k: v for k, v in fields if v is not None})
        return self._json("POST", "/datasets", json=body)

    def predict_dataset(
        self,
        model_id: str,
        dataset_id: str,
        *,
        name: str | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> Job:
        """Batch predictions: submit a job (kind "predict") that predicts every row of one of
        your stored datasets (it needs the model's feature columns; its target is ignored).
        Follow it with `wait`; once it has succeeded, `download_predictions` writes them."""
        body: dict[str, Any] = {"dataset_id": dataset_id}
        body.update({k: v for k, v in (("name", name), ("tags", tags)) if v is not None})
        return self._json("POST", f"/models/{model_id}/predictions", json=body)

    def download_predictions(
        self, job_id: str, path: str | Path, format: str | None = None
    ) -> Path:
        """Write a succeeded predict job's predictions to `path`, streamed: `format` "csv",
        "parquet" or "jsonl" (by default from the file's extension, else CSV). For
        classification `prediction` (the class, as text) and one `p_<class>` per class (as
        `predict_csv(..., as_csv=True)` answers); for regression
        `prediction` (or `prediction_0`, ...). An `ApiError` (409) if the job has not
        succeeded."""
        path = Path(path)
        fmt = format or PREDICTION_FORMATS_BY_SUFFIX.get(path.suffix.lower(), "csv")
        if fmt not in PREDICTION_MEDIA_TYPES:
            raise ValueError(f"format must be one of {sorted(PREDICTION_MEDIA_TYPES)}, not {fmt!r}")
        headers = {"Accept": PREDICTION_MEDIA_TYPES[fmt]}
        with self.request(
            "GET", f"/predictions/{job_id}/data", headers=headers, stream=True
        ) as response, path.open("wb") as out:  # fmt: skip
            for piece in response.iter_content(chunk_size=1 << 20):
                out.write(piece)
        return path

    def evaluate(self, model_id: str, dataset_id: str) -> Evaluation:
        """Score a model on a dataset with its columns and target: `{"model_id",
        "dataset_id", "evaluation"}`, the metrics of a job's `evaluation` splits
        (classification: accuracy, balanced_accuracy, precision / recall / f1 (`macro`,
        `per_class`), log_loss, roc_auc, confusion_matrix; regression: mse, rmse, mae, r2)."""
        body = {"dataset_id": dataset_id}
        return self._json("POST", f"/models/{model_id}/evaluate", json=body)

    # -- deletes, retention, usage ------------------------------------------------------------

    def delete_dataset(self, dataset_id: str) -> None:
        """Delete a dataset (its rows are freed from the store; models trained on it stay).
        `ApiError` 409 while queued or running jobs use it, 404 once deleted."""
        self.request("DELETE", f"/datasets/{dataset_id}")

    def delete_job(self, job_id: str) -> None:
        """Delete a finished job with its model, epochs and events (409 while it runs)."""
        self.request("DELETE", f"/jobs/{job_id}")

    def delete_model(self, model_id: str) -> None:
        """Delete a model (its job stays)."""
        self.request("DELETE", f"/models/{model_id}")

    def delete_sweep(self, sweep_id: str) -> None:
        """Delete a finished sweep with its trials and their models."""
        self.request("DELETE", f"/sweeps/{sweep_id}")

    def set_expiry(self, kind: str, row_id: str, expires_at: str | None) -> dict[str, Any]:
        """When a dataset, job or model (`kind`: "datasets", "jobs", "models") is deleted by the
        server (ISO 8601; None: never)."""
        return self._json("PATCH", f"/{kind}/{row_id}", json={"expires_at": expires_at})  # type: ignore[no-any-return]

    def usage(self) -> dict[str, Any]:
        """Stored bytes and queued + running jobs against their quotas: `{"owner", "bytes":
        {"used", "quota", "datasets", "models", "predictions", "uploads"}, "active_jobs":
        {"used", "quota"}}`."""
        return self._json("GET", "/usage")  # type: ignore[no-any-return]

    # -- the model registry -----------------------------------------------------------------

    def register_model(self, name: str, model_id: str) -> dict[str, Any]:
        """Register a model (an id or a reference) as the next version of `name` (created if
        new): `{"name", "version", "model_id", "created_at", "key_id"}`."""
        body = {"model_id": model_id}
        return self._json("POST", f"/registry/{name}/versions", json=body)

    def set_alias(self, name: str, alias: str, version: int) -> dict[str, Any]:
        """Point `name@alias` at `version` (created or moved): the alias with its `history`."""
        body = {"version": int(version)}
        return self._json("PUT", f"/registry/{name}/aliases/{alias}", json=body)

    def delete_alias(self, name: str, alias: str) -> None:
        """Delete `name@alias` (its history is kept)."""
        self.request("DELETE", f"/registry/{name}/aliases/{alias}")

    def get_registered(self, name: str) -> dict[str, Any]:
        """A registered model: its `versions` and `aliases` (each with its `history`)."""
        return self._json("GET", f"/registry/{name}")

    def list_registry(self, page: int = 1, page_size: int = 20) -> Page:
        """A page of registered models: `name`, `latest_version`, `aliases`."""
        return self._page("/registry", page, page_size)

    # -- API keys and the audit log ---------------------------------------------------------

    def list_keys(self, page: int = 1, page_size: int = 20) -> Page:
        """The owner's API keys (id, name, prefix, scope, created_at, last_used_at,
        expires_at, revoked_at; never a secret), oldest first."""
        return self._page("/keys", page, page_size)

    def create_key(
        self, name: str = "", scope: str | None = None, expires_at: str | None = None
    ) -> dict[str, Any]:
        """A new key of the same owner; its `key` is in the answer, this once. `scope`:
        `read` or `write` (default: this client's key's); `expires_at`: ISO 8601."""
        body: dict[str, Any] = {"name": name}
        if scope:
            body["scope"] = scope
        if expires_at:
            body["expires_at"] = expires_at
        return self._json("POST", "/keys", json=body)

    def rotate_key(self, key_id: str) -> dict[str, Any]:
        """A new key (new id and secret, in `key`) with the old one's name, scope and expiry;
        the old one is revoked."""
        return self._json("POST", f"/keys/{key_id}/rotate")

    def revoke_key(self, key_id: str) -> None:
        """Revoke a key: later requests with it are refused (401)."""
        self.request("DELETE", f"/keys/{key_id}")

    def audit(
        self,
        action: str | None = None,
        key_id: str | None = None,
        since: str | None = None,
        until: str | None = None,
        page: int = 1,
        page_size: int = 20,
    ) -> Page:
        """The owner's audit log, newest first: one entry per mutating request (`action`:
        exact, or a resource such as `job`; `since`/`until`: ISO 8601)."""
        return self._page(
            "/audit", page, page_size, action=action, key_id=key_id, since=since, until=until
        )
