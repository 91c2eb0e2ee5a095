"""`Client`: typed methods over the trainyard REST API (`/api/v1`), on `requests`.

Answers are the API's JSON objects, typed as `TypedDict`s. An error answer becomes an
`ApiError` (`NotFoundError` for 404) carrying the API's `code`, `message`, `fields` and the HTTP
`status`; a server that cannot be reached becomes a `ConnectionFailed`.
"""

from __future__ import annotations

import csv
import io
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypedDict

import numpy as np
import requests

if TYPE_CHECKING:
    from engine.nn import MLP

DEFAULT_URL: Final = "http://127.0.0.1:8000"
API_PREFIX: Final = "/api/v1"
FINISHED: Final = ("succeeded", "failed", "cancelled")


class TrainyardError(Exception):
    """Base of the client's errors."""


class ApiError(TrainyardError):
    """An error answer: `{"error": {"code", "message", "fields"?}}` and its HTTP status."""

    def __init__(
        self, status: int, code: str, message: str, fields: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.fields: dict[str, str] = dict(fields or {})


class NotFoundError(ApiError):
    """404: no such dataset, job or model (or route)."""


class ConnectionFailed(TrainyardError):
    """The server could not be reached (refused, DNS, timeout)."""


class WaitTimeout(TrainyardError):
    """`Client.wait` gave up before the job finished."""


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
    created_at: str


class Progress(TypedDict):
    epoch: int
    epochs: int


class Job(TypedDict, total=False):
    id: str
    status: str
    dataset_id: str
    model: dict[str, Any]
    training: dict[str, Any]
    progress: Progress
    loss_history: list[float]
    val_loss_history: list[float]
    metrics: dict[str, float] | None
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
    created_at: str


class Prediction(TypedDict, total=False):
    predictions: list[Any]
    probabilities: list[list[float]]


class Page(TypedDict):
    items: list[Any]
    pagination: Pagination


def find_api_key(env: Mapping[str, str] | None = None, cwd: Path | None = None) -> str | None:
    """`TRAINYARD_API_KEY`, else the embedded mode's key file: `$TRAINYARD_VAR_DIR/api-key`,
    then `./var/api-key`."""
    env = os.environ if env is None else env
    if env.get("TRAINYARD_API_KEY"):
        return env["TRAINYARD_API_KEY"].strip()
    candidates = []
    if env.get("TRAINYARD_VAR_DIR"):
        candidates.append(Path(env["TRAINYARD_VAR_DIR"]) / "api-key")
    candidates.append((cwd or Path.cwd()) / "var" / "api-key")
    for path in candidates:
        try:
            key = path.read_text().strip()
        except OSError:
            continue
        if key:
            return key
    return None


def _matrix(features: Any) -> list[Any]:
    """NumPy arrays become nested lists (a 1-D array one feature per row); lists go as they
    are, so the server's validation names what is wrong with them."""
    if isinstance(features, np.ndarray):
        return (features.reshape(-1, 1) if features.ndim == 1 else features).tolist()
    return [row.tolist() if isinstance(row, np.ndarray) else row for row in features]


def _targets(targets: Any) -> list[Any]:
    if isinstance(targets, np.ndarray):
        return targets.tolist()
    return [t.tolist() if isinstance(t, np.ndarray | np.generic) else t for t in targets]


def read_features_csv(path: str | Path) -> list[list[float]]:
    """Rows of numbers from a CSV file with a header row."""
    with open(path, newline="") as f:
        rows = [row for row in csv.reader(f) if row]
    if len(rows) < 2:
        raise ValueError(f"{path}: a header row and at least one row of numbers are needed")
    try:
        return [[float(cell) for cell in row] for row in rows[1:]]
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


_UNSET: Any = object()


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
        """Upload features (lists or a NumPy array) and targets, or a CSV file's path
        (`upload_dataset("moons.csv")`, its last column the target; see `upload_csv`)."""
        if isinstance(features, str | Path) and targets is None:
            return self.upload_csv(features, name=name)
        if targets is None:
            raise TypeError("targets are needed unless features is a CSV path")
        body = {"name": name or "dataset", "features": _matrix(features)}
        body["targets"] = _targets(targets)
        return self._json("POST", "/datasets", json=body)

    def upload_csv(
        self, path: str | Path, *, target: str | None = None, name: str | None = None
    ) -> Dataset:
        """Upload a CSV file with a header row; `target` names the target column (default:
        the last one), `name` defaults to the file name."""
        path = Path(path)
        form = {k: v for k, v in {"target": target, "name": name}.items() if v}
        with path.open("rb") as f:
            files = {"file": (path.name, f, "text/csv")}
            return self._json("POST", "/datasets", data=form, files=files)

    def get_dataset(self, dataset_id: str) -> Dataset:
        return self._json("GET", f"/datasets/{dataset_id}")

    def list_datasets(self, page: int = 1, page_size: int = 20) -> Page:
        return self._page("/datasets", page, page_size)

    # -- jobs -------------------------------------------------------------------------------

    def submit_job(
        self,
        dataset: str | Mapping[str, Any],
        layers: Sequence[int],
        *,
        activation: str = "tanh",
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
    ) -> Job:
        """Submit a training job on a dataset id (or an inline dataset: `{"name", "features",
        "targets"}`). Unset training options take the server's defaults; `batch_size=None`
        means full batch."""
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
            }.items()
            if value is not None
        }
        if batch_size is not _UNSET:
            training["batch_size"] = batch_size
        model: dict[str, Any] = {"layers": [int(w) for w in layers], "activation": activation}
        if output_activation is not None:
            model["output_activation"] = output_activation
        body: dict[str, Any] = {"model": model, "training": training}
        if isinstance(dataset, str):
            body["dataset_id"] = dataset
        else:
            body["dataset"] = {
                "name": dataset.get("name", "dataset"),
                "features": _matrix(dataset["features"]),
                "targets": _targets(dataset["targets"]),
            }
        return self._json("POST", "/jobs", json=body)

    def get_job(self, job_id: str) -> Job:
        return self._json("GET", f"/jobs/{job_id}")

    def list_jobs(self, status: str | None = None, page: int = 1, page_size: int = 20) -> Page:
        return self._page("/jobs", page, page_size, status=status)

    def cancel_job(self, job_id: str) -> Job:
        return self._json("POST", f"/jobs/{job_id}/cancel")

    def wait(
        self,
        job_id: str,
        *,
        poll_interval: float = 0.5,
        timeout: float | None = None,
        on_progress: Callable[[Job], None] | None = None,
    ) -> Job:
        """Poll until the job is `succeeded`, `failed` or `cancelled`; return it.

        `on_progress(job)` is called after every poll (the last call sees the finished job).
        Raises `WaitTimeout` after `timeout` seconds.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = self.get_job(job_id)
            if on_progress is not None:
                on_progress(job)
            if job["status"] in FINISHED:
                return job
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeout(f"job {job_id} still {job['status']} after {timeout}s")
            time.sleep(poll_interval)

    # -- models -----------------------------------------------------------------------------

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

    def load_model(self, model_id: str) -> MLP:
        """The trained model as an `engine.nn.MLP` with its weights loaded."""
        from engine.nn import MLP

        arch = self.get_model(model_id)["architecture"]
        mlp = MLP(
            arch["nin"],
            list(arch["layers"]),
            activation=arch["activation"],
            output_activation=arch.get("output_activation"),
        )
        with np.load(io.BytesIO(self.weights(model_id))) as npz:
            mlp.load_state_dict(dict(npz))
        return mlp

    def graph_svg(self, model_id: str) -> str:
        """The computational graph of the model's forward pass and loss, as SVG text."""
        return self.request("GET", f"/models/{model_id}/graph.svg").text

    def predict(self, model_id: str, features: Any) -> Prediction:
        """Predictions for rows of features (lists, a NumPy array, or a CSV file's path)."""
        if isinstance(features, str | Path):
            features = read_features_csv(features)
        body = {"features": _matrix(features)}
        return self._json("POST", f"/models/{model_id}/predict", json=body)
