"""The `trainyard` command (the installed console script) against a live service: tables,
`--json`, files it writes, and its exit codes."""

from __future__ import annotations

import json
import subprocess
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from client.cli import (
    EXIT_API_ERROR,
    EXIT_JOB_FAILED,
    EXIT_NOT_FOUND,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
)
from core.model import Model as CoreModel
from engine.nn import MLP
from tests.client.tables import HEADER, SPECIES, write_penguins_csv
from tests.support import VENV_BIN, LiveService, free_port
from tests.workers.datasets import moons

pytestmark = pytest.mark.slow


def trainyard(
    service: LiveService, *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(VENV_BIN / "trainyard"), *args],
        cwd=cwd, env=env or service.env(COLUMNS="200"), capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip


def as_json(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def moons_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    x, y = moons(160)
    path = tmp_path_factory.mktemp("csv") / "moons.csv"
    rows = [f"{a},{b},{'upper' if k == 0 else 'lower'}" for (a, b), k in zip(x, y, strict=True)]
    path.write_text("x1,x2,label\n" + "\n".join(rows) + "\n")
    return path


def test_upload_submit_watch_models_graph_predict(
    service: LiveService, moons_csv: Path, tmp_path: Path
) -> None:
    run = lambda *a: trainyard(service, *a, cwd=tmp_path)  # noqa: E731
    dataset = as_json(run("--json", "datasets", "upload", str(moons_csv), "--target", "label"))
    assert dataset["name"] == "moons" and dataset["classes"] == ["lower", "upper"]
    shown = run("datasets", "get", dataset["id"])
    assert shown.returncode == 0 and "moons" in shown.stdout and "Columns" in shown.stdout
    assert "x1" in shown.stdout and "numeric" in shown.stdout
    listed = as_json(run("--json", "datasets", "list", "--page-size", "100"))
    assert dataset["id"] in [d["id"] for d in listed["items"]]

    # submit --watch: a progress bar on stderr, the evaluation on stdout, exit 0; no scaling
    # (numeric=none), so that the downloaded weights take the raw features
    watched = run(
        "jobs", "submit", "--dataset", dataset["id"], "--layers", "8,8,1",
        "--loss", "binary_cross_entropy", "--optimizer", "adam", "--lr", "0.05",
        "--epochs", "30", "--batch-size", "32", "--seed", "1", "--validation-split", "0.25",
        "--preprocessing", "numeric=none", "--watch",
    )  # fmt: skip
    assert watched.returncode == 0, watched.stderr
    assert "succeeded" in watched.stdout and "Evaluation: validation" in watched.stdout
    assert "stop reason completed" in watched.stdout
    assert "30/30" in watched.stderr and "loss" in watched.stderr

    jobs = as_json(run("--json", "jobs", "list", "--status", "succeeded", "--page-size", "100"))
    job = next(j for j in jobs["items"] if j["dataset_id"] == dataset["id"])
    assert job["training"]["validation_split"] == 0.25 and job["training"]["seed"] == 1
    assert job["training"]["preprocessing"]["numeric"] == "none"
    table = run("jobs", "list", "--status", "succeeded")
    assert table.returncode == 0 and job["id"] in table.stdout and "loss" in table.stdout
    again = as_json(run("--json", "jobs", "watch", job["id"]))  # finished: returns at once
    assert again["status"] == "succeeded" and again["model_id"] == job["model_id"]
    assert job["id"] in run("jobs", "get", job["id"]).stdout

    model_id = job["model_id"]
    got = run("models", "get", model_id, "--weights", "model.npz", "--bundle", "model.bundle")
    assert got.returncode == 0 and "binary_cross_entropy" in got.stdout
    assert "x1 (numeric), x2 (numeric)" in got.stdout
    model = as_json(run("--json", "models", "get", model_id))
    mlp = MLP(2, [8, 8, 1])
    mlp.load_state_dict(dict(np.load(tmp_path / "model.npz")))
    assert model_id in [m["id"] for m in as_json(run("--json", "models", "list"))["items"]]
    np.testing.assert_allclose(mlp.state_dict()["layers.0.weight"],
                               model["parameters"]["layers.0.weight"])  # fmt: skip

    assert run("models", "graph", model_id, "-o", "graph.svg").returncode == 0
    assert ET.parse(tmp_path / "graph.svg").getroot().tag.endswith("svg")

    x = np.array([[0.0, 1.0], [1.0, -0.5], [2.0, 0.2]])
    (tmp_path / "points.csv").write_text("x1,x2\n" + "\n".join(f"{a},{b}" for a, b in x) + "\n")
    predicted = as_json(run("--json", "predict", model_id, "points.csv"))
    logits = mlp(x).numpy().reshape(-1)
    assert predicted["predictions"] == [["lower", "upper"][int(v > 0)] for v in logits]
    bundle = CoreModel.from_bytes((tmp_path / "model.bundle").read_bytes())
    assert bundle.predict(x)["predictions"] == predicted["predictions"]
    human = run("predict", model_id, "points.csv")
    assert human.returncode == 0 and "prediction" in human.stdout and "upper" in human.stdout
    assert "p(lower)" in human.stdout and "p(upper)" in human.stdout


def test_typed_csv_early_stopping_evaluation_predict_evaluate(
    service: LiveService, tmp_path: Path
) -> None:
    """A real-looking table (text columns, missing cells) from upload to a test-set report,
    predictions on a CSV with named columns and `evaluate`."""
    run = lambda *a: trainyard(service, *a, cwd=tmp_path)  # noqa: E731
    rows = write_penguins_csv(tmp_path / "penguins.csv")
    dataset = as_json(run("datasets", "upload", "penguins.csv", "--target", "species",
                          "--column-type", "zip=categorical", "--json"))  # fmt: skip
    assert [c["type"] for c in dataset["columns"]] == [
        "numeric", "categorical", "categorical", "numeric"
    ]  # fmt: skip
    shown = run("datasets", "show", dataset["id"])
    assert shown.returncode == 0, shown.stderr
    lines = {line.split()[0]: line for line in shown.stdout.splitlines() if line.strip()}
    missing = sum(row["bill_length_mm"] is None for row in rows)
    assert "numeric" in lines["bill_length_mm"] and f" {missing} " in lines["bill_length_mm"]
    assert "min" in lines["bill_length_mm"] and "mean" in lines["bill_length_mm"]
    assert "categorical" in lines["island"] and "3 levels" in lines["island"]
    assert "Torgersen (" in lines["island"]
    assert "species (labels)" in shown.stdout

    # no --loss: the server picks cross_entropy; early stopping, a test split, the options
    watched = run(
        "jobs", "submit", "--dataset", dataset["id"], "--layers", "16,3", "--optimizer", "adam",
        "--lr", "0.02", "--epochs", "300", "--early-stopping", "--patience", "8",
        "--test-split", "0.2", "--class-weight", "balanced", "--lr-schedule", "cosine",
        "--dtype", "float64", "--preprocessing", "numeric=minmax", "--watch",
    )  # fmt: skip
    assert watched.returncode == 0, watched.stderr
    out = watched.stdout
    assert "succeeded" in out and "best epoch" in out and "stop reason" in out
    # the test split first, then validation and train; per class and the confusion matrix
    test_at = out.index("Evaluation: test (36 rows)")
    assert test_at < out.index("Evaluation: validation") < out.index("Evaluation: train")
    assert "accuracy" in out and "f1 (macro)" in out and "roc auc" in out
    assert "Per class: test" in out and "Confusion matrix: test" in out
    assert all(label in out for label in SPECIES)

    job = as_json(run("--json", "jobs", "list", "--status", "succeeded", "--page-size", "100"))
    job = next(j for j in job["items"] if j["dataset_id"] == dataset["id"])
    training = job["training"]
    assert training["loss"] == "cross_entropy" and training["test_split"] == 0.2
    assert training["early_stopping"]["patience"] == 8
    assert training["class_weight"] == "balanced" and training["dtype"] == "float64"
    assert training["lr_schedule"]["type"] == "cosine"
    assert training["preprocessing"]["numeric"] == "minmax"
    assert job["stop_reason"] in ("early_stopping", "completed") and job["best_epoch"] >= 1
    shown = run("jobs", "show", job["id"])
    assert shown.returncode == 0 and "test split" in shown.stdout
    assert shown.stdout.index("Evaluation: test") < shown.stdout.index("Evaluation: train")
    assert f"{job['stopped_epoch']}" in shown.stdout and "early stopping" in shown.stdout
    model_id = job["model_id"]

    # predict on a CSV posted as it is: columns in another order, a text value never seen in
    # training, a missing cell, a column left out (zip)
    (tmp_path / "new.csv").write_text(
        "island,body_mass_g,bill_length_mm\nTorgersen,3650,39.1\nAtlantis,,50.2\nBiscoe,NA,\n"
    )
    named = [
        {"island": "Torgersen", "body_mass_g": 3650, "bill_length_mm": 39.1},
        {"island": "Atlantis", "bill_length_mm": 50.2},
        {"island": "Biscoe"},
    ]
    expected = service.client().predict(model_id, named)
    assert as_json(run("--json", "predict", model_id, "new.csv")) == expected
    assert as_json(run("predict", model_id, "new.csv", "--json")) == expected
    human = run("predict", model_id, "new.csv")
    assert human.returncode == 0, human.stderr
    assert "p(Adelie)" in human.stdout and expected["predictions"][0] in human.stdout
    as_csv = run("predict", model_id, "new.csv", "--csv")
    assert as_csv.returncode == 0, as_csv.stderr
    lines = as_csv.stdout.splitlines()
    assert lines[0] == "prediction,p_Adelie,p_Chinstrap,p_Gentoo" and len(lines) == 4
    assert [line.split(",")[0] for line in lines[1:]] == expected["predictions"]
    written = run("predict", model_id, "new.csv", "-o", "predictions.csv")
    assert written.returncode == 0 and "3 predictions written" in written.stdout
    assert (tmp_path / "predictions.csv").read_text() == as_csv.stdout

    # evaluate on another upload with the same columns
    write_penguins_csv(tmp_path / "more.csv", n=90, seed=7)
    other = as_json(run("--json", "datasets", "upload", "more.csv", "--target", "species",
                        "--column-type", "zip=categorical"))  # fmt: skip
    report = run("evaluate", model_id, "--dataset", other["id"])
    assert report.returncode == 0, report.stderr
    assert "Evaluation: dataset (90 rows)" in report.stdout
    assert "balanced accuracy" in report.stdout and "Confusion matrix" in report.stdout
    scored = as_json(run("--json", "evaluate", model_id, "--dataset", other["id"]))
    assert scored == service.client().evaluate(model_id, other["id"])
    assert sum(map(sum, scored["evaluation"]["confusion_matrix"]["matrix"])) == 90
    assert f"{scored['evaluation']['accuracy']:.4g}" in report.stdout

    # what the local model says, the CLI says
    local = service.client().load_model(model_id)
    assert local.predict(named)["predictions"] == expected["predictions"]
    assert [c["name"] for c in local.columns] == list(HEADER[:-1])

    # exported as ONNX, onnxruntime predicts what the service does (no engine needed)
    exported = run("models", "export", model_id, "-o", "model.onnx")
    assert exported.returncode == 0 and "exported as onnx" in exported.stdout
    session = ort.InferenceSession(str(tmp_path / "model.onnx"))
    feeds = {}
    for spec in session.get_inputs():
        cells = [row.get(spec.name) for row in named]
        if spec.type == "tensor(string)":
            feeds[spec.name] = np.array([["" if v is None else str(v)] for v in cells], object)
        else:
            feeds[spec.name] = np.array([[np.nan if v is None else v] for v in cells], float)
    labels, probabilities = session.run(["label", "probabilities"], feeds)
    assert list(labels) == expected["predictions"]
    np.testing.assert_allclose(probabilities, expected["probabilities"], atol=1e-5)
    bundled = run("--json", "models", "export", model_id, "--format", "bundle")
    assert as_json(bundled)["path"] == f"model-{model_id}.zip"
    assert zipfile.is_zipfile(tmp_path / f"model-{model_id}.zip")

    # a column the model does not take (exit 3); a file that is not there (2); no dataset (4)
    (tmp_path / "odd.csv").write_text("flipper_length_mm\n200\n")
    odd = run("predict", model_id, "odd.csv")
    assert odd.returncode == EXIT_API_ERROR and "flipper_length_mm" in odd.stderr
    absent = run("predict", model_id, "absent.csv")
    assert absent.returncode == EXIT_USAGE and "absent.csv" in absent.stderr
    assert run("evaluate", model_id, "--dataset", "no-such").returncode == EXIT_NOT_FOUND


def test_exit_codes(service: LiveService, moons_csv: Path, tmp_path: Path) -> None:
    run = lambda *a: trainyard(service, *a, cwd=tmp_path)  # noqa: E731
    assert run("jobs", "get", "no-such-job").returncode == EXIT_NOT_FOUND
    assert run("models", "graph", "no-such-model").returncode == EXIT_NOT_FOUND

    dataset = as_json(run("--json", "datasets", "upload", str(moons_csv)))
    bad = run("jobs", "submit", "--dataset", dataset["id"], "--layers", "4,1", "--epochs", "0")
    assert bad.returncode == EXIT_API_ERROR
    assert "training.epochs" in bad.stderr and "422" in bad.stderr

    assert run("jobs", "submit", "--dataset", "x", "--layers", "a,b").returncode == EXIT_USAGE
    assert run("jobs", "frobnicate").returncode == EXIT_USAGE
    missing = run("datasets", "upload", "nope.csv")
    assert missing.returncode == EXIT_USAGE and "nope.csv" in missing.stderr

    bad = run("jobs", "submit", "--dataset", "x", "--layers", "4,1", "--preprocessing", "numeric")
    assert bad.returncode == EXIT_USAGE and "KEY=VALUE" in bad.stderr
    bad = run("jobs", "submit", "--dataset", "x", "--layers", "4,1", "--lr-schedule", "warm")
    assert bad.returncode == EXIT_USAGE and "cosine" in bad.stderr

    down = trainyard(service, "--url", f"http://127.0.0.1:{free_port()}", "jobs", "list",
                     cwd=tmp_path)  # fmt: skip
    assert down.returncode == EXIT_UNREACHABLE and "cannot reach" in down.stderr

    # a job that ends cancelled: watch exits 1
    long = as_json(run("--json", "jobs", "submit", "--dataset", dataset["id"], "--layers",
                       "32,32,1", "--loss", "binary_cross_entropy", "--epochs", "5000",
                       "--batch-size", "4"))  # fmt: skip
    assert as_json(run("--json", "jobs", "cancel", long["id"]))["id"] == long["id"]
    watched = run("--json", "jobs", "watch", long["id"])
    assert watched.returncode == EXIT_JOB_FAILED
    assert json.loads(watched.stdout)["status"] == "cancelled"
    # a finished job cannot be cancelled: 409, exit 3
    assert run("jobs", "cancel", long["id"]).returncode == EXIT_API_ERROR


def test_help_documents_the_exit_codes(tmp_path: Path, service: LiveService) -> None:
    result = trainyard(service, "--help", cwd=tmp_path)
    assert result.returncode == 0
    assert "Exit codes" in result.stdout and "5 cannot reach server" in result.stdout
    assert "evaluate" in result.stdout and "http://127.0.0.1:8000" in result.stdout


def test_submit_help_shows_the_options_and_their_defaults(
    tmp_path: Path, service: LiveService
) -> None:
    result = trainyard(service, "jobs", "submit", "--help", cwd=tmp_path,
                       env=service.env(COLUMNS="400"))  # fmt: skip
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    for option in ("--early-stopping", "--patience", "--test-split", "--validation-split",
                   "--dtype", "--preprocessing", "--class-weight", "--lr-schedule"):  # fmt: skip
        assert option in text, option
    assert "the server picks from the targets" in text  # --loss is optional
    assert "(default: float32)" in text and "(default: 100)" in text
    assert "(default: 10; implies --early-stopping)" in text
    assert "numeric=standardize|minmax|none (default standardize)" in text
    assert "0.1 with --early-stopping" in text


def test_first_hour_global_options_anywhere_lists_in_80_columns_and_where_keys_are_looked_for(
    service: LiveService, moons_csv: Path, tmp_path: Path
) -> None:
    as_json(trainyard(service, "--json", "datasets", "upload", str(moons_csv), cwd=tmp_path))
    # global options after the command, as before it
    after = trainyard(service, "datasets", "list", "--url", service.url, "--json", cwd=tmp_path)
    assert as_json(after)["items"]
    # lists fit an 80-column terminal with whole ids
    narrow = trainyard(service, "datasets", "list", cwd=tmp_path, env=service.env(COLUMNS="80"))
    assert narrow.returncode == 0, narrow.stderr
    lines = narrow.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert any(len(word) == 32 for line in lines for word in line.split())
    # no key anywhere: the answer says where it looked
    env = {k: v for k, v in service.env().items() if k not in ("TRAINYARD_VAR_DIR",)}
    env["XDG_DATA_HOME"] = str(tmp_path / "data")
    keyless = trainyard(service, "jobs", "list", cwd=tmp_path, env=env)
    assert keyless.returncode == EXIT_API_ERROR
    said = keyless.stderr.replace("\n", "")
    assert "no API key found" in said and str(tmp_path / "var" / "api-key") in said
    assert str(tmp_path / "data" / "trainyard" / "api-key") in said


def test_datasets_import_outside_the_allowed_prefixes_names_the_setting(
    service: LiveService, tmp_path: Path
) -> None:
    """`trainyard datasets import` sends the reference, never the bytes; the embedded service
    allows no prefix, so the command exits with the API's 403, which names the setting."""
    source = (tmp_path / "rows.csv").as_uri()
    result = trainyard(service, "datasets", "import", source, "--target", "y", cwd=tmp_path)
    assert result.returncode == 3, result.stdout + result.stderr
    assert "TRAINYARD_IMPORT_PREFIXES" in result.stderr + result.stdout
    listed = as_json(trainyard(service, "--json", "jobs", "list", "--kind", "import", cwd=tmp_path))
    assert listed["items"] == []
