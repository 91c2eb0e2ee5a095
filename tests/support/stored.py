"""The test session's dataset store, and datasets put straight into it (as the API would).

Every process of the session (the API apps, the workers and servers the tests start) stores
datasets in one temporary folder: `TRAINYARD_STORE_URL` is set here, before any `Settings` is
read, unless the environment already names a store; `base_env` passes it on. Each
pytest-xdist worker has a folder of its own.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy.orm import Session

from core.training import as_table
from service.dataset_store import DatasetStore
from service.datasets import new_dataset
from service.ingest import ParsedDataset
from service.tables import DEFAULT_OWNER, Dataset

# pytest-xdist's workers are sessions of their own but inherit the controller's environment:
# the folder made here is marked with the session's worker name, and a worker makes its own.
_SESSION = os.environ.get("PYTEST_XDIST_WORKER", "")
_MADE_FOR = os.environ.get("TRAINYARD_TEST_STORE_OF", _SESSION)
if not os.environ.get("TRAINYARD_STORE_URL") or _MADE_FOR != _SESSION:
    _folder = Path(tempfile.mkdtemp(prefix="trainyard-test-store-"))
    atexit.register(shutil.rmtree, _folder, True)
    os.environ["TRAINYARD_STORE_URL"] = _folder.as_uri()
    os.environ["TRAINYARD_TEST_STORE_OF"] = _SESSION

STORE_URL = os.environ["TRAINYARD_STORE_URL"]


def store_dataset(
    session: Session,
    x: Any,
    y: Any,
    *,
    name: str = "dataset",
    target_kind: str = "numeric",
    classes: list[Any] | None = None,
    owner: str = DEFAULT_OWNER,
    store_url: str = STORE_URL,
) -> Dataset:
    """A dataset of a numeric feature matrix `x` and targets `y` (numbers, or class indices
    for `target_kind` "labels"), stored and added (flushed; the caller commits)."""
    targets = np.asarray(y)
    if target_kind != "labels":
        targets = targets.astype(np.float64).reshape(len(targets), -1)
    parsed = ParsedDataset(
        name, as_table(np.asarray(x, dtype=np.float64)), targets, target_kind, classes
    )
    return new_dataset(session, parsed, owner, store_url)


def spoil_rows(session: Session, dataset_id: str) -> None:
    """Overwrite a dataset's stored parts with bytes that are not Parquet (a damaged store)."""
    dataset = session.get(Dataset, dataset_id)
    assert dataset is not None and dataset.location is not None
    store, key = DatasetStore.at(dataset.location)
    paths = store.parts(key)
    assert paths
    for path in paths:
        with store.fs.open_output_stream(path) as out:
            out.write(b"garbage")
