"""The Python client against a live embedded-mode service (real gunicorn, real celery worker)."""

from __future__ import annotations

import csv
import io
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from client import (
    ApiError,
    Client,
    ConnectionFailed,
    LocalModel,
    NotFoundError,
    WaitTimeout,
    api_key_locations,
    find_api_key,
)
from core.model import Model as CoreModel
from engine.nn import MLP
from tests.client.tables import HEADER, SPECIES, penguin_rows, write_penguins_csv
from tests.support import LiveService, free_port
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
    # load_model: weights plus the fitted preprocessing (the inputs are standardized), local
    model = api.load_model(job["model_id"])
    assert isinstance(model, CoreModel) and isinstance(model, LocalModel)
    assert isinstance(model.mlp, MLP)
    assert model.columns == [{"name": "x0", "type": "numeric"}, {"name": "x1", "type": "numeric"}]
    answer = api.predict(job["model_id"], x[:30])
    local = model.predict(x[:30])
    assert local["predictions"] == answer["predictions"]
    np.testing.assert_allclose(local["probabilities"], answer["probabilities"], atol=1e-6)
    # the engine MLP takes the encoded inputs
    logits = model.mlp(model.encode(x[:30])).numpy().reshape(-1)
    assert answer["predictions"] == [int(v) for v in (logits > 0)]
    np.testing.assert_allclose(
        np.asarray(answer["probabilities"])[:, 1], 1 / (1 + np.exp(-logits)), atol=1e-5
    )
    # code written when load_model returned the bare MLP still runs: raw rows in, logits out
    np.testing.assert_allclose(model(x[:30]).numpy().reshape(-1), logits, atol=1e-5)
    # weights as an .npz: the MLP's state_dict, loadable as it is
    with np.load(io.BytesIO(api.weights(job["model_id"]))) as npz:
        assert npz["layers.0.weight"].shape == (8, 2)
        np.testing.assert_array_equal(npz["layers.2.bias"], model.mlp.state_dict()["layers.2.bias"])
    # the bundle, as core reads it
    bundle = CoreModel.from_bytes(api.bundle(job["model_id"]))
    assert bundle.predict(x[:30].tolist())["predictions"] == answer["predictions"]

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


def test_typed_csv_early_stopping_test_split_predict_evaluate_and_local_model(
    service: LiveService, tmp_path: Path
) -> None:
    """A CSV with text columns and missing cells, a job with early stopping and a test split,
    predictions on named rows, raw cells and a CSV, `evaluate`, and the model run locally."""
    api = service.client()
    path = tmp_path / "penguins.csv"
    rows = write_penguins_csv(path)
    dataset = api.upload_csv(path, target="species", column_types={"zip": "categorical"})
    assert dataset["name"] == "penguins" and dataset["n_samples"] == len(rows)
    assert dataset["classes"] == list(SPECIES)
    assert dataset["target"]["name"] == "species" and dataset["target"]["kind"] == "labels"
    columns = {c["name"]: c for c in dataset["columns"]}
    assert list(columns) == list(HEADER[:-1])
    assert {name: c["type"] for name, c in columns.items()} == {
        "bill_length_mm": "numeric", "island": "categorical", "zip": "categorical",
        "body_mass_g": "numeric",
    }  # fmt: skip
    for name, column in columns.items():
        assert column["missing"] == sum(row[name] is None for row in rows), name
    assert columns["bill_length_mm"]["min"] <= columns["bill_length_mm"]["mean"]
    assert {t["value"] for t in columns["island"]["top"]} == {"Biscoe", "Dream", "Torgersen"}

    # loss left to the server; early stopping (a validation split of its own) and a test split
    job = api.submit_job(
        dataset["id"], [16, 3], optimizer="adam", learning_rate=0.02, epochs=300, seed=0,
        early_stopping={"patience": 8}, test_split=0.2, class_weight="balanced",
    )  # fmt: skip
    training = job["training"]
    assert training["loss"] == "cross_entropy" and training["test_split"] == 0.2
    assert training["early_stopping"] == {
        "patience": 8, "min_delta": 0.0, "restore_best": True, "refit": True
    }  # fmt: skip
    assert training["class_weight"] == "balanced"
    job = api.wait(job["id"], poll_interval=0.1, timeout=120)
    assert job["status"] == "succeeded", job
    evaluation = job["evaluation"] or {}
    assert set(evaluation) == {"train", "validation", "test"}
    test = evaluation["test"]
    assert test["n"] == round(0.2 * len(rows))
    assert test["accuracy"] >= 0.8, test
    assert test["confusion_matrix"]["labels"] == list(SPECIES)
    assert sum(map(sum, test["confusion_matrix"]["matrix"])) == test["n"]
    assert set(test["f1"]["per_class"]) == set(SPECIES)
    assert job["stop_reason"] in ("early_stopping", "completed")
    assert 1 <= job["best_epoch"] <= job["stopped_epoch"] == job["progress"]["epoch"]
    model_id = job["model_id"]

    # named rows: a key left out and None are missing cells, an unseen island is no error
    named = [
        {"bill_length_mm": 39.0, "island": "Torgersen", "zip": "1001", "body_mass_g": 3650},
        {"bill_length_mm": 50.5, "island": "Biscoe", "body_mass_g": None},
        {"bill_length_mm": 44.0, "island": "Atlantis", "zip": 2002},
        {"island": None, "zip": "9999", "body_mass_g": 4000},
    ]
    answer = api.predict(model_id, named)
    assert len(answer["predictions"]) == 4 and set(answer["predictions"]) <= set(SPECIES)
    assert answer["predictions"][:2] == ["Adelie", "Gentoo"]
    np.testing.assert_allclose(np.asarray(answer["probabilities"]).sum(axis=1), 1.0)
    # raw cells in the training column order, strings and None included: the same answer
    cells = [[row.get(c) for c in HEADER[:-1]] for row in named]
    by_cells = api.predict(model_id, cells)
    assert by_cells["predictions"] == answer["predictions"]
    np.testing.assert_allclose(by_cells["probabilities"], answer["probabilities"])
    # a CSV posted as it is: the header names the columns, in any order; an empty cell, an NA
    upload = tmp_path / "new.csv"
    order = ["island", "body_mass_g", "zip", "bill_length_mm"]
    lines = [",".join(order)]
    for i, row in enumerate(named):
        missing = "NA" if i % 2 else ""
        lines.append(",".join(missing if row.get(c) is None else str(row[c]) for c in order))
    upload.write_text("\n".join(lines) + "\n")
    by_csv = api.predict_csv(model_id, upload)
    assert by_csv["predictions"] == answer["predictions"]
    np.testing.assert_allclose(by_csv["probabilities"], answer["probabilities"])
    text = api.predict_csv(model_id, upload, as_csv=True)
    table = list(csv.DictReader(io.StringIO(text)))
    assert list(table[0]) == ["prediction", *(f"p_{s}" for s in SPECIES)]
    assert [r["prediction"] for r in table] == answer["predictions"]

    # the model run locally: the server's predictions, from named rows or raw cells
    model = api.load_model(model_id)
    assert [c["name"] for c in model.columns] == list(HEADER[:-1])
    local = model.predict(named)
    assert local["predictions"] == answer["predictions"]
    np.testing.assert_allclose(local["probabilities"], answer["probabilities"], atol=1e-6)
    assert model.predict(cells)["predictions"] == answer["predictions"]
    with pytest.raises(ValueError, match="unknown column 'flipper'"):
        model.predict([{"flipper": 200}])
    with pytest.raises(ApiError) as unknown:
        api.predict(model_id, [{"flipper": 200}])
    assert unknown.value.status == 422 and "flipper" in unknown.value.fields["rows"]

    # evaluate on another dataset with the same columns: named rows this time
    fresh = penguin_rows(90, seed=7)
    other = api.upload_rows(fresh, "species", "penguins 2", column_types={"zip": "categorical"})
    assert other["n_samples"] == 90 and other["target"]["name"] == "species"
    scored = api.evaluate(model_id, other["id"])
    assert scored["model_id"] == model_id and scored["dataset_id"] == other["id"]
    metrics = scored["evaluation"]
    assert metrics["n"] == 90 and 0.7 <= metrics["accuracy"] <= 1.0
    assert sum(map(sum, metrics["confusion_matrix"]["matrix"])) == 90
    assert {"balanced_accuracy", "precision", "recall", "f1", "log_loss", "roc_auc"} <= set(metrics)
    features = [{k: v for k, v in row.items() if k != "species"} for row in fresh]
    hits = [
        p == row["species"]
        for p, row in zip(model.predict(features)["predictions"], fresh, strict=True)
    ]
    assert metrics["accuracy"] == pytest.approx(sum(hits) / len(hits))


def test_rows_inline_regression_with_schedule_dtype_and_preprocessing(
    service: LiveService,
) -> None:
    api = service.client()
    rng = np.random.default_rng(3)
    rows = [
        {"x": float(v), "colour": ["red", "green", "blue"][i % 3], "noise": None if i % 9 == 0
         else float(rng.normal()), "y": float(3 * v + (i % 3) + 100)}
        for i, v in enumerate(rng.uniform(-1, 1, 120))
    ]  # fmt: skip
    job = api.submit_job(
        {"name": "inline rows", "rows": rows, "target": "y"}, [16, 1], optimizer="adam",
        learning_rate=0.01, epochs=60, test_split=0.25, dtype="float64",
        lr_schedule={"type": "step", "step_size": 20, "gamma": 0.5},
        preprocessing={"numeric": "minmax"},
    )  # fmt: skip
    training = job["training"]
    assert training["loss"] == "mse" and training["dtype"] == "float64"
    assert training["lr_schedule"] == {"type": "step", "step_size": 20, "gamma": 0.5}
    assert training["preprocessing"]["numeric"] == "minmax"
    assert training["preprocessing"]["target"] == "standardize"  # the defaults filled in
    assert training["early_stopping"] is None
    job = api.wait(job["id"], poll_interval=0.1, timeout=120)
    assert job["status"] == "succeeded", job
    evaluation = job["evaluation"] or {}
    assert set(evaluation) == {"train", "test"}
    assert {"mse", "rmse", "mae", "r2"} <= set(evaluation["test"])
    assert evaluation["test"]["r2"] > 0.9, evaluation
    assert job["stop_reason"] == "completed" and job["stopped_epoch"] == 60

    named = [{"x": 0.5, "colour": "red"}, {"x": -0.5, "colour": "purple", "noise": 0.1}]
    answer = api.predict(job["model_id"], named)
    local = api.load_model(job["model_id"]).predict(named)
    np.testing.assert_allclose(local["predictions"], answer["predictions"], rtol=1e-9)
    assert 95 < answer["predictions"][0] < 107  # in the target's own units

    # NaN in a NumPy array is a missing cell
    features = np.array([[0.1, 1.0], [np.nan, 2.0], [0.3, np.nan], [0.4, 4.0]])
    with_gaps = api.upload_dataset(features, [1.0, 2.0, 3.0, 4.0], name="gaps")
    assert [c["missing"] for c in with_gaps["columns"]] == [1, 1]

    # a spec that cannot train: class weights on a regression; a string schedule shorthand
    dataset = api.upload_rows(rows, "y", name="rows")
    with pytest.raises(ApiError) as info:
        api.submit_job(dataset["id"], [4, 1], class_weight="balanced", lr_schedule="cosine")
    assert info.value.status == 422 and "training.class_weight" in info.value.fields


def test_a_pandas_dataframe_uploads_trains_and_predicts(service: LiveService) -> None:
    """A DataFrame with a text column, a nullable integer column and missing cells (NaN, None,
    pd.NA): its names and types arrive as the CSV's would, and `predict` takes a DataFrame of
    the feature columns in any order, answering as it does for the same named rows."""
    import pandas as pd  # a server dependency, so installed wherever the tests run

    rows = penguin_rows(150, seed=4)
    frame = pd.DataFrame(rows)
    frame["zip"] = frame["zip"].astype("Int64")  # pandas' nullable integers
    frame.loc[3, "zip"] = pd.NA
    frame["island"] = frame["island"].astype("category")
    api = service.client()
    dataset = api.upload_dataset(frame, "species", name="penguin frame")
    assert dataset["name"] == "penguin frame" and dataset["n_samples"] == 150
    assert dataset["target"]["name"] == "species" and dataset["classes"] == list(SPECIES)
    columns = {c["name"]: c for c in dataset["columns"]}
    assert list(columns) == ["bill_length_mm", "island", "zip", "body_mass_g"]
    assert [c["type"] for c in columns.values()] == [
        "numeric", "categorical", "numeric", "numeric"
    ]  # fmt: skip
    assert columns["zip"]["missing"] == 1
    assert columns["island"]["missing"] == sum(r["island"] is None for r in rows)
    with pytest.raises(ValueError):
        api.upload_dataframe(frame, "no such column")

    job = api.submit_job(dataset["id"], [16, 3], optimizer="adam", learning_rate=0.02,
                         epochs=80, seed=0)  # fmt: skip
    job = api.wait(job["id"], poll_interval=0.1, timeout=120)
    assert job["status"] == "succeeded", job
    features = frame.drop(columns=["species"])[["zip", "island", "body_mass_g", "bill_length_mm"]]
    by_frame = api.predict(job["model_id"], features.head(20))
    named = [{k: v for k, v in row.items() if k != "species"} for row in rows[:20]]
    named[3]["zip"] = None
    by_rows = api.predict(job["model_id"], named)
    assert by_frame["predictions"] == by_rows["predictions"]
    np.testing.assert_allclose(by_frame["probabilities"], by_rows["probabilities"], rtol=1e-6)


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
    data = {"XDG_DATA_HOME": str(tmp_path / "data")}  # an installed trainyard-server's folder
    assert find_api_key(data, cwd=tmp_path) == "from-cwd"
    assert find_api_key(data, cwd=tmp_path / "custom-var") is None
    (tmp_path / "data" / "trainyard").mkdir(parents=True)
    (tmp_path / "data" / "trainyard" / "api-key").write_text("from-data-folder\n")
    assert find_api_key(data, cwd=tmp_path / "custom-var") == "from-data-folder"
    home = {"HOME": str(tmp_path / "home")}
    assert api_key_locations(home, cwd=tmp_path)[-1] == (
        tmp_path / "home" / ".local" / "share" / "trainyard" / "api-key"
    )

    client = Client("http://example.invalid/", "k1")
    assert client.url == "http://example.invalid"
    assert client.http.headers["Authorization"] == "Bearer k1"
    assert "Authorization" not in Client("http://example.invalid", "").http.headers


def test_client_imports_no_flask_service_or_workers() -> None:
    from tests.support import ROOT
    from tests.test_architecture import imported_packages

    for path in (ROOT / "client").rglob("*.py"):
        assert not imported_packages(path) & {"flask", "service", "workers", "celery"}, path


def test_wait_follows_the_event_stream_and_falls_back_to_polling(service: LiveService) -> None:
    """`wait` sees every epoch, in order, from the job's event stream (a poll every 10 s would
    see almost none); with the stream breaking every time it still ends with the finished
    job, by polling."""
    api = service.client()
    x, y = moons(200)
    dataset = api.upload_dataset(x, y, name="stream")
    job = api.submit_job(dataset["id"], [32, 32, 1], loss="binary_cross_entropy", epochs=300,
                         batch_size=8, validation_split=0.2)  # fmt: skip
    seen: list[Any] = []
    done = api.wait(job["id"], poll_interval=10, timeout=120, on_progress=seen.append)
    assert done["status"] == "succeeded"
    assert "running" in [j["status"] for j in seen]
    epochs = [j["progress"]["epoch"] for j in seen]
    # once the stream is open, every epoch, in order (its first state may be past some)
    first = next(e for e in epochs if e > 0)
    assert set(range(first, 301)) <= set(epochs) and epochs == sorted(epochs)
    middle = seen[len(seen) // 2]
    n = middle["progress"]["epoch"]
    assert middle["loss_history"] == done["loss_history"][:n]
    assert middle["val_loss_history"] == done["val_loss_history"][:n]
    assert seen[-1] == done

    class Broken(Client):
        def _follow(self, *args: Any, **kwargs: Any) -> Any:
            raise requests.ConnectionError("a proxy cut the stream")

    broken = Broken(api.url, api.api_key)
    job = api.submit_job(dataset["id"], [4, 1], loss="binary_cross_entropy", epochs=5)
    polled: list[Any] = []
    done = broken.wait(job["id"], poll_interval=0.05, timeout=120, on_progress=polled.append)
    assert done["status"] == "succeeded" and len(done["loss_history"]) == 5
    assert polled[-1]["status"] == "succeeded"


def test_an_import_by_reference_outside_the_allowed_prefixes_is_refused(
    service: LiveService,
) -> None:
    """The embedded service allows no import (`TRAINYARD_IMPORT_PREFIXES` empty): the client's
    `import_dataset` gets the 403 that names the setting."""
    with pytest.raises(ApiError) as refused:
        service.client().import_dataset("file:///etc/passwd.csv", target="x")
    assert refused.value.status == 403 and "TRAINYARD_IMPORT_PREFIXES" in refused.value.message
