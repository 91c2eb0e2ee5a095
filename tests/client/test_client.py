"""The Python client against a live embedded-mode service (real gunicorn, real celery worker)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from client import ApiError, Client, ConnectionFailed, NotFoundError, WaitTimeout, find_api_key
from engine.nn import MLP
from tests.client.live import LiveService
from tests.e2e.conftest import free_port
from tests.workers.datasets import blobs, moons

pytestmark = pytest.mark.slow


def test_numpy_dataset_job_wait_model_weights_predict(service: LiveService) -> None:
    api = service.client()
    x, y = moons(120)
    dataset = api.upload_dataset(x, y, name="moons")
    assert dataset["n_samples"] == 120 and dataset["n_features"] == 2
    assert dataset["classes"] == [0, 1]

    job = api.submit_job(
        dataset["id"], np.array([8, 8, 1]), loss="binary_cross_entropy", optimizer="adam",
        learning_rate=0.05, epochs=25, batch_size=32, validation_split=0.2,
    )  # fmt: skip
    assert job["status"] == "queued" and job["training"]["epochs"] == 25
    seen: list[tuple[str, int]] = []
    job = api.wait(
        job["id"],
        poll_interval=0.05,
        timeout=90,
        on_progress=lambda j: seen.append((j["status"], j["progress"]["epoch"])),
    )
    assert job["status"] == "succeeded", job
    assert seen[-1] == ("succeeded", 25)
    epochs = [epoch for _, epoch in seen]
    assert epochs == sorted(epochs)  # progress never goes back
    assert {"loss", "accuracy", "val_loss", "val_accuracy"} <= set(job["metrics"] or {})

    model = api.get_model(job["model_id"])
    assert model["job_id"] == job["id"] and set(model["parameters"]) == {
        f"layers.{i}.{p}" for i in range(3) for p in ("weight", "bias")
    }
    mlp = api.load_model(job["model_id"])
    assert isinstance(mlp, MLP)
    logits = mlp(x[:30]).numpy().reshape(-1)
    answer = api.predict(job["model_id"], x[:30])
    assert answer["predictions"] == [int(v) for v in (logits > 0)]
    np.testing.assert_allclose(
        np.asarray(answer["probabilities"])[:, 1], 1 / (1 + np.exp(-logits)), rtol=1e-7
    )
    # weights as an .npz: the MLP's state_dict, loadable as it is
    with np.load(__import__("io").BytesIO(api.weights(job["model_id"]))) as npz:
        assert npz["layers.0.weight"].shape == (8, 2)
        np.testing.assert_array_equal(npz["layers.2.bias"], mlp.state_dict()["layers.2.bias"])

    svg = api.graph_svg(job["model_id"])
    assert ET.fromstring(svg).tag.endswith("svg")

    assert job["id"] in [j["id"] for j in api.list_jobs(status="succeeded", page_size=100)["items"]]
    assert job["model_id"] in [m["id"] for m in api.list_models(page_size=100)["items"]]
    assert dataset["id"] in [d["id"] for d in api.list_datasets(page_size=100)["items"]]
    assert api.get_dataset(dataset["id"])["name"] == "moons"


def test_csv_upload_inline_dataset_and_csv_predict(service: LiveService, tmp_path: Path) -> None:
    api = service.client()
    x, y = blobs(90, classes=3)
    csv_path = tmp_path / "blobs.csv"
    lines = ["a,kind,b"] + [f"{p[0]},c{k},{p[1]}" for p, k in zip(x, y, strict=True)]
    csv_path.write_text("\n".join(lines) + "\n")
    dataset = api.upload_csv(csv_path, target="kind")
    assert dataset["name"] == "blobs" and dataset["n_features"] == 2
    assert dataset["classes"] == ["c0", "c1", "c2"]
    last = tmp_path / "last.csv"
    last.write_text(
        "a,b,kind\n" + "".join(f"{p[0]},{p[1]},{k}\n" for p, k in zip(x, y, strict=True))
    )
    by_path = api.upload_dataset(last, name="by path")  # the last column is the target
    assert by_path["name"] == "by path" and by_path["classes"] == [0, 1, 2]

    # an inline dataset, lists in, labels back in the submitted type
    job = api.submit_job(
        {"name": "inline", "features": x.tolist(), "targets": [f"c{k}" for k in y]},
        [8, 3], loss="cross_entropy", optimizer="adam", learning_rate=0.05, epochs=30,
        batch_size=None,
    )  # fmt: skip
    assert job["training"]["batch_size"] is None
    job = api.wait(job["id"], poll_interval=0.1, timeout=90)
    assert job["status"] == "succeeded" and job["metrics"]["accuracy"] >= 0.9

    features_csv = tmp_path / "features.csv"
    features_csv.write_text("a,b\n" + "\n".join(f"{p[0]},{p[1]}" for p in x[:10]) + "\n")
    answer = api.predict(job["model_id"], features_csv)
    assert len(answer["predictions"]) == 10
    assert set(answer["predictions"]) <= {"c0", "c1", "c2"}
    assert np.allclose(np.asarray(answer["probabilities"]).sum(axis=1), 1.0)


def test_api_errors_become_exceptions_with_code_message_fields(service: LiveService) -> None:
    api = service.client()
    dataset = api.upload_dataset([[0.0], [1.0]], [0.0, 1.0], name="tiny")
    with pytest.raises(ApiError) as info:
        api.submit_job(dataset["id"], [4, 1], epochs=0)
    assert info.value.status == 422 and info.value.code == "validation_error"
    assert "training.epochs" in info.value.fields

    with pytest.raises(ApiError) as info:
        api.upload_dataset([[1.0, 2.0], [3.0]], [0, 1], name="ragged")
    assert info.value.status == 422 and info.value.fields

    with pytest.raises(NotFoundError) as missing:
        api.get_job("no-such-job")
    assert missing.value.status == 404 and missing.value.code == "not_found"
    assert "no-such-job" in missing.value.message

    finished = api.wait(
        api.submit_job(dataset["id"], [2, 1], epochs=2)["id"], poll_interval=0.1, timeout=60
    )
    with pytest.raises(ApiError) as conflict:
        api.cancel_job(finished["id"])
    assert conflict.value.status == 409 and conflict.value.code == "conflict"

    with pytest.raises(ConnectionFailed):
        Client(f"http://127.0.0.1:{free_port()}", "", timeout=5).list_jobs()


def test_wait_times_out_and_cancel_stops_a_job(service: LiveService) -> None:
    api = service.client()
    x, y = moons(400)
    dataset = api.upload_dataset(x, y, name="long")
    job = api.submit_job(dataset["id"], [32, 32, 1], loss="binary_cross_entropy", epochs=5000,
                         batch_size=8)  # fmt: skip
    with pytest.raises(WaitTimeout):
        api.wait(job["id"], poll_interval=0.1, timeout=0.5)
    api.cancel_job(job["id"])
    job = api.wait(job["id"], poll_interval=0.1, timeout=60)
    assert job["status"] == "cancelled"
    assert job["progress"]["epoch"] < 5000


def test_api_key_from_argument_env_or_var_file(tmp_path: Path) -> None:
    var = tmp_path / "custom-var"
    var.mkdir()
    (var / "api-key").write_text("from-var-dir\n")
    (tmp_path / "var").mkdir()
    (tmp_path / "var" / "api-key").write_text("from-cwd\n")
    assert find_api_key({"TRAINYARD_API_KEY": "from-env"}, cwd=tmp_path) == "from-env"
    assert find_api_key({"TRAINYARD_VAR_DIR": str(var)}, cwd=tmp_path) == "from-var-dir"
    assert find_api_key({}, cwd=tmp_path) == "from-cwd"
    assert find_api_key({}, cwd=tmp_path / "custom-var") is None

    client = Client("http://example.invalid/", "k1")
    assert client.url == "http://example.invalid"
    assert client.http.headers["Authorization"] == "Bearer k1"
    assert "Authorization" not in Client("http://example.invalid", "").http.headers


def test_client_imports_no_flask_service_or_workers() -> None:
    from tests.conftest import ROOT
    from tests.test_architecture import imported_packages

    for path in (ROOT / "client").rglob("*.py"):
        assert not imported_packages(path) & {"flask", "service", "workers", "celery"}, path
