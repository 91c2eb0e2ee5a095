"""Streamed out, through the client and the CLI against a live service: a dataset downloaded
as CSV, JSON lines or Parquet (written to a file as it arrives), uploaded again as the same
dataset; predictions on a labelled file streamed to a file."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from client import Client, NotFoundError
from client.api import download_format
from tests.client.tables import SPECIES, write_penguins_csv
from tests.client.test_cli import as_json, trainyard
from tests.support import LiveService

pytestmark = pytest.mark.slow

CONTENT_KEYS = ("n_samples", "n_features", "n_targets", "columns", "target", "feature_names")
ZIP = {"zip": "categorical"}


def rounded(value: Any) -> Any:
    """Statistics to 12 digits: merged block by block, their last bit depends on the blocks."""
    if isinstance(value, float):
        return float(f"{value:.12g}")
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [rounded(v) for v in value]
    return value


def content(dataset: dict[str, Any]) -> dict[str, Any]:
    return rounded({key: dataset[key] for key in CONTENT_KEYS})


def stored_records(api: Client, dataset: dict[str, Any]) -> list[dict[str, Any]]:
    data = api.request("GET", f"/datasets/{dataset['id']}/data").json()
    names = [*dataset["feature_names"], dataset["target"]["name"]]
    return [
        dict(zip(names, [*features, y], strict=True))
        for features, y in zip(data["features"], data["targets"], strict=True)
    ]


@pytest.fixture(scope="module")
def penguins(service: LiveService, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The penguins table uploaded, and a model trained on it."""
    api = service.client()
    folder = tmp_path_factory.mktemp("penguins")
    write_penguins_csv(folder / "penguins.csv")
    dataset = api.upload_csv(folder / "penguins.csv", target="species", column_types=ZIP)
    job = api.submit_job(dataset["id"], [8, 3], optimizer="adam", learning_rate=0.05, epochs=20)
    job = api.wait(job["id"], poll_interval=0.1, timeout=120)
    assert job["status"] == "succeeded", job
    return {"dataset": dataset, "model_id": job["model_id"]}


def test_download_format_by_suffix_or_name() -> None:
    assert download_format("a.csv") == "csv" and download_format("a.PARQUET") == "parquet"
    assert download_format("a.ndjson") == "jsonl" and download_format("a.pq") == "parquet"
    assert download_format("a.txt") == "csv" and download_format("a.csv", "jsonl") == "jsonl"
    with pytest.raises(ValueError, match="xlsx"):
        download_format("a.csv", "xlsx")


def test_download_dataset_in_each_format_and_upload_it_again(
    service: LiveService, penguins: dict[str, Any], tmp_path: Path
) -> None:
    api = service.client()
    dataset = penguins["dataset"]
    expected = stored_records(api, dataset)

    path = api.download_dataset(dataset["id"], tmp_path / "rows.csv")
    assert path == tmp_path / "rows.csv"
    rows = list(csv.DictReader(io.StringIO(path.read_text(), newline="")))
    assert list(rows[0]) == list(expected[0])
    assert [r["species"] for r in rows] == [r["species"] for r in expected]
    assert [r["bill_length_mm"] or None for r in rows] == [
        None if r["bill_length_mm"] is None else f"{r['bill_length_mm']:g}" for r in expected
    ]
    again = api.upload_csv(path, column_types=ZIP)  # the target: the last column
    assert content(again) == content(dataset)
    assert stored_records(api, again) == expected

    lines = api.download_dataset(dataset["id"], tmp_path / "rows.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == expected
    table = pq.read_table(api.download_dataset(dataset["id"], tmp_path / "rows.parquet"))
    assert table.to_pylist() == expected
    other = api.download_dataset(dataset["id"], tmp_path / "rows.txt", format="parquet")
    assert pq.read_table(other).to_pylist() == expected
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "rows.csv",
        "rows.jsonl",
        "rows.parquet",
        "rows.txt",
    ]  # fmt: skip  (no .part left behind)

    with pytest.raises(NotFoundError):
        api.download_dataset("0" * 32, tmp_path / "missing.csv")
    assert not (tmp_path / "missing.csv").exists()
    assert not (tmp_path / "missing.csv.part").exists()


def test_predict_csv_scores_a_labelled_file_and_streams_to_a_file(
    service: LiveService, penguins: dict[str, Any], tmp_path: Path
) -> None:
    api = service.client()
    model_id = penguins["model_id"]
    labelled = api.download_dataset(penguins["dataset"]["id"], tmp_path / "labelled.csv")
    answer = api.predict_csv(model_id, labelled)
    assert len(answer["predictions"]) == 180 and set(answer["predictions"]) <= set(SPECIES)
    text = api.predict_csv(model_id, labelled, as_csv=True)
    written = api.predict_csv(model_id, labelled, out=tmp_path / "predictions.csv")
    assert written.read_text() == text
    assert text.splitlines()[0] == "prediction," + ",".join(f"p_{s}" for s in SPECIES)
    table = pq.read_table(api.predict_csv(model_id, labelled, out=tmp_path / "p.parquet"))
    assert table.column("prediction").to_pylist() == answer["predictions"]
    lines = api.predict_csv(model_id, labelled, out=tmp_path / "p.out", format="jsonl")
    rows = [json.loads(line) for line in lines.read_text().splitlines()]
    assert [r["prediction"] for r in rows] == answer["predictions"]


def test_cli_downloads_a_dataset_and_streams_predictions(
    service: LiveService, penguins: dict[str, Any], tmp_path: Path
) -> None:
    run = lambda *a: trainyard(service, *a, cwd=tmp_path)  # noqa: E731
    dataset_id, model_id = penguins["dataset"]["id"], penguins["model_id"]
    done = run("datasets", "download", dataset_id, "-o", "out.csv")
    assert done.returncode == 0, done.stderr
    assert f"written to out.csv (csv, {(tmp_path / 'out.csv').stat().st_size:,} bytes)" in (
        done.stdout
    )
    assert (tmp_path / "out.csv").read_text().splitlines()[0] == (
        "bill_length_mm,island,zip,body_mass_g,species"
    )
    info = as_json(run("--json", "datasets", "download", dataset_id, "--format", "parquet"))
    assert info["path"] == f"dataset-{dataset_id}.parquet" and info["format"] == "parquet"
    assert pq.read_metadata(tmp_path / info["path"]).num_rows == 180
    info = as_json(run("datasets", "download", dataset_id, "-o", "rows.jsonl", "--json"))
    assert info["format"] == "jsonl" and info["bytes"] == (tmp_path / "rows.jsonl").stat().st_size
    missing = run("datasets", "download", "0" * 32, "-o", "none.csv")
    assert missing.returncode == 4 and not (tmp_path / "none.csv").exists()

    # a labelled file (the download, species included) scored, streamed to a file
    done = run("predict", model_id, "out.csv", "-o", "predictions.csv")
    assert done.returncode == 0, done.stderr
    assert "180 predictions written to predictions.csv" in done.stdout
    info = as_json(run("--json", "predict", model_id, "out.csv", "-o", "predictions.parquet"))
    assert info["format"] == "parquet" and info["rows"] is None
    predictions = pq.read_table(tmp_path / "predictions.parquet").column("prediction")
    with (tmp_path / "predictions.csv").open(newline="") as f:
        assert predictions.to_pylist() == [row["prediction"] for row in csv.DictReader(f)]
    missing = run("predict", model_id, "nowhere.csv", "-o", "p.csv")
    assert missing.returncode == 2 and "cannot read nowhere.csv" in missing.stderr
