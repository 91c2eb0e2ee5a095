"""Batch predictions end to end in the embedded mode (SQLite, the file store, a real celery
worker): the Python client and the `trainyard` command submit, follow and download them, and
they equal `POST /models/{id}/predict` on the same rows (text columns, missing cells and a
target column in the file included)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from client import ApiError, Client, NotFoundError
from tests.client.tables import SPECIES, write_penguins_csv
from tests.client.test_cli import as_json, trainyard
from tests.support import LiveService

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def penguins(service: LiveService, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A model trained on penguins, and a second upload of a penguins file to score (its
    `species` column is the target: not read)."""
    api = service.client()
    folder = tmp_path_factory.mktemp("penguins")
    write_penguins_csv(folder / "train.csv", n=180, seed=0)
    write_penguins_csv(folder / "score.csv", n=300, seed=1)
    trained = api.upload_csv(folder / "train.csv", target="species")
    job = api.submit_job(
        trained["id"], [8, 3], loss="cross_entropy", optimizer="adam", learning_rate=0.05,
        epochs=10, batch_size=32,
    )  # fmt: skip
    job = api.wait(job["id"], timeout=90)
    assert job["status"] == "succeeded", job
    scored = api.upload_csv(folder / "score.csv", target="species")
    # the same rows without their target, for POST /models/{id}/predict
    lines = (folder / "score.csv").read_text().splitlines()
    (folder / "features.csv").write_text("".join(f"{line.rsplit(',', 1)[0]}\n" for line in lines))
    return {
        "model_id": job["model_id"],
        "dataset_id": scored["id"],
        "csv": str(folder / "features.csv"),
    }


def test_the_client_predicts_a_dataset_and_downloads_what_predict_answers(
    service: LiveService, penguins: dict[str, str], tmp_path: Path
) -> None:
    api = service.client()
    job = api.predict_dataset(penguins["model_id"], penguins["dataset_id"], name="score")
    assert (job["kind"], job["status"], job["name"]) == ("predict", "queued", "score")
    seen: list[int] = []
    done = api.wait(
        job["id"], timeout=90, on_progress=lambda j: seen.append(j["progress"]["rows_done"])
    )
    assert done["status"] == "succeeded", done
    assert seen == sorted(seen) and done["progress"] == {"rows_done": 300, "rows_total": 300}
    assert done["result"]["rows"] == 300 and done["attempts"] == 1

    answer = api.predict_csv(penguins["model_id"], penguins["csv"])
    labels = [f"p_{s}" for s in SPECIES]
    csv_path = api.download_predictions(job["id"], tmp_path / "out.csv")
    table = pacsv.read_csv(csv_path)
    assert table.column_names == ["prediction", *labels]
    assert table.column("prediction").to_pylist() == answer["predictions"]
    np.testing.assert_allclose(
        np.column_stack([table.column(n).to_numpy() for n in labels]),
        answer["probabilities"],
        rtol=1e-12,
    )
    parquet = pq.read_table(api.download_predictions(job["id"], tmp_path / "out.parquet"))
    assert parquet.column("prediction").to_pylist() == answer["predictions"]
    assert (
        np.column_stack([parquet.column(n).to_numpy() for n in labels]).tolist()
        == (answer["probabilities"])
    )
    lines = (api.download_predictions(job["id"], tmp_path / "x.txt", "jsonl")).read_text()
    assert [json.loads(line)["prediction"] for line in lines.splitlines()] == answer["predictions"]
    listed = api.list_jobs(kind="predict", page_size=100)["items"]
    assert job["id"] in [j["id"] for j in listed]
    assert all(j["kind"] == "predict" for j in listed)


def test_another_owner_sees_no_predict_job_and_a_queued_one_downloads_409(
    service: LiveService, penguins: dict[str, str], tmp_path: Path
) -> None:
    api = service.client()
    job = api.predict_dataset(penguins["model_id"], penguins["dataset_id"])
    stranger = Client(service.url, "not-a-key-of-anyone")
    with pytest.raises(ApiError) as refused:
        stranger.get_job(job["id"])
    assert refused.value.status == 401
    done = api.wait(job["id"], timeout=90)
    assert done["status"] == "succeeded"
    with pytest.raises(NotFoundError):
        api.download_predictions("0" * 32, tmp_path / "none.csv")
    with pytest.raises(ApiError) as missing:
        api.predict_dataset(penguins["model_id"], "0" * 32)
    assert missing.value.status == 404 and "dataset_id" in missing.value.fields


def test_the_command_predicts_a_dataset_waits_and_writes_the_file(
    service: LiveService, penguins: dict[str, str], tmp_path: Path
) -> None:
    run = lambda *a: trainyard(service, *a, cwd=tmp_path)  # noqa: E731
    waited = run(
        "models", "predict-dataset", penguins["model_id"], "--dataset", penguins["dataset_id"],
        "-o", "predictions.parquet",
    )  # fmt: skip
    assert waited.returncode == 0, waited.stderr
    assert "300 predictions" in waited.stdout and "predictions.parquet" in waited.stdout
    assert "300/300" in waited.stderr
    table = pq.read_table(tmp_path / "predictions.parquet")
    answer = service.client().predict_csv(penguins["model_id"], penguins["csv"])
    assert table.column("prediction").to_pylist() == answer["predictions"]

    submitted = as_json(
        run("--json", "models", "predict-dataset", penguins["model_id"],
            "--dataset", penguins["dataset_id"])
    )  # fmt: skip
    assert submitted["kind"] == "predict"
    watched = as_json(run("--json", "jobs", "watch", submitted["id"]))
    assert watched["status"] == "succeeded"
    assert run("predictions", "download", submitted["id"], "-o", "p.csv").returncode == 0
    assert pacsv.read_csv(tmp_path / "p.csv").num_rows == 300
    shown = run("jobs", "get", submitted["id"])
    assert shown.returncode == 0 and "300/300 rows" in shown.stdout
    listed = run("jobs", "list", "--kind", "predict")
    assert listed.returncode == 0 and submitted["id"] in listed.stdout
    gone = run("predictions", "download", "0" * 32, "-o", "x.csv")
    assert gone.returncode == 4 and not (tmp_path / "x.csv").exists()
