"""The client writes no spec default of its own: what it leaves out the server fills from
`core.spec`, and `Client.spec_defaults()` reads them (`GET /spec/defaults`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core import spec
from tests.support import LiveService
from tests.workers.datasets import moons

pytestmark = pytest.mark.slow


def test_unset_options_are_the_servers_defaults(service: LiveService, tmp_path: Path) -> None:
    api = service.client()
    assert api.spec_defaults() == json.loads(json.dumps(spec.defaults()))
    x, y = moons(40)
    path = tmp_path / "moons.csv"
    path.write_text("a,b,y\n" + "".join(f"{a},{b},{t}\n" for (a, b), t in zip(x, y, strict=True)))
    dataset = api.upload_csv(path)
    job = api.submit_job(dataset["id"], [4, 1], epochs=1, early_stopping=True)
    assert job["model"]["activation"] == spec.MODEL_DEFAULTS["activation"]
    assert job["training"]["early_stopping"] == spec.EARLY_STOPPING_DEFAULTS
    assert job["training"]["validation_split"] == spec.EARLY_STOPPING_SPLIT
    assert job["training"]["learning_rate"] == spec.DEFAULT_LEARNING_RATE["sgd"]
    api.cancel_job(job["id"])
