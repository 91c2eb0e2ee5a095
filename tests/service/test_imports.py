"""Datasets by reference (SQLite and PostgreSQL, sources on the session's SeaweedFS S3 server):
`POST /datasets` with a `source` makes an import job; its attempt, run in this process by the
worker's own code, makes the same dataset as uploading the file; sources outside
`TRAINYARD_IMPORT_PREFIXES` are refused; a cancel stores nothing."""

from __future__ import annotations

import dataclasses
import gzip
import io
import math
import uuid
from collections.abc import Iterator
from typing import Any

import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from flask import Flask
from flask.testing import FlaskClient

from service import imports, lifecycle
from service.config import Limits, Settings
from service.dataset_store import s3_filesystem, store_for
from service.problems import ApiError, InputError
from service.schemas import ImportJobSchema
from tests.client.tables import write_penguins_csv
from tests.service.helpers import assert_error
from tests.service.test_response_shapes import check
from tests.support import STORE_URL
from tests.support.s3 import S3Server
from workers import importing
from workers.tasks import run_job

URL = "/api/v1"
SETTINGS = dataclasses.replace(Settings(), store_url=STORE_URL, heartbeat_interval=5.0)
FOLDER = f"imports-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def sources(s3_server: S3Server, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A penguins CSV, the same rows as one Parquet file and as three Parquet parts, in S3."""
    folder = tmp_path_factory.mktemp("sources")
    write_penguins_csv(folder / "penguins.csv", n=500, seed=2)
    csv_bytes = (folder / "penguins.csv").read_bytes()
    table = pacsv.read_csv(io.BytesIO(csv_bytes))
    whole = io.BytesIO()
    pq.write_table(table, whole)
    fs = s3_filesystem()
    base = f"{s3_server.bucket}/{FOLDER}"
    with fs.open_output_stream(f"{base}/penguins.csv") as out:
        out.write(csv_bytes)
    for i, start in enumerate(range(0, table.num_rows, 200)):
        with fs.open_output_stream(f"{base}/parts/part-{i}.parquet") as out:
            pq.write_table(table.slice(start, 200), out)
    return {
        "prefix": f"s3://{base}/",
        "csv": f"s3://{base}/penguins.csv",
        "parts": f"s3://{base}/parts/",
        "csv_bytes": csv_bytes,
        "parquet_bytes": whole.getvalue(),
    }


@pytest.fixture
def allowed(app: Flask, sources: dict[str, Any]) -> Iterator[None]:
    app.config["IMPORT_PREFIXES"] = f"file:///nowhere/, {sources['prefix']}"
    yield


def run(app: Flask, job_id: str) -> str:
    return run_job(
        app.extensions["db_sessionmaker"],
        job_id,
        SETTINGS,
        lambda f, claim, limit: importing.run_import(f, claim, limit, SETTINGS),
    )


def submit(client: FlaskClient, **body: Any) -> dict[str, Any]:
    r = client.post(f"{URL}/datasets", json=body)
    assert r.status_code == 202, r.get_json()
    job = r.get_json()
    assert r.headers["Location"].endswith(f"/api/v1/jobs/{job['id']}")
    return job


def upload(client: FlaskClient, data: bytes, filename: str) -> dict[str, Any]:
    r = client.post(
        f"{URL}/datasets",
        data={"file": (io.BytesIO(data), filename), "target": "species", "name": "penguins"},
        content_type="multipart/form-data",
    )
    assert r.status_code == 201, r.get_json()
    return r.get_json()


def close(a: Any, b: Any) -> bool:
    """Equal, floats within 1e-12 (column statistics add up batch by batch: Parquet parts
    batch the rows otherwise than one file)."""
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-12)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(close(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(close(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def same_dataset(imported: dict[str, Any], uploaded: dict[str, Any]) -> None:
    """The same rows, described the same (ids and times aside)."""
    different = {"id", "created_at", "storage"}
    mine = {k: v for k, v in imported.items() if k not in different}
    theirs = {k: v for k, v in uploaded.items() if k not in different}
    assert close(mine, theirs), (mine, theirs)
    assert imported["storage"]["checksum"] == uploaded["storage"]["checksum"]
    assert imported["storage"]["bytes"] == uploaded["storage"]["bytes"]


@pytest.mark.usefixtures("allowed")
def test_a_csv_in_s3_imports_as_the_same_dataset_as_its_upload(
    app: Flask, client: FlaskClient, sources: dict[str, Any]
) -> None:
    job = submit(client, source=sources["csv"], name="penguins", target="species")
    check(ImportJobSchema(), job, "submitted")
    assert (job["kind"], job["status"], job["dataset_id"]) == ("import", "queued", None)
    assert job["options"]["format"] == "csv" and job["progress"]["unit"] == "bytes"
    assert run(app, job["id"]) == "succeeded"
    done = client.get(f"{URL}/jobs/{job['id']}").get_json()
    check(ImportJobSchema(), done, "succeeded")
    total = len(sources["csv_bytes"])
    assert done["progress"] == {"done": total, "total": total, "unit": "bytes"}
    imported = client.get(f"{URL}/datasets/{done['dataset_id']}").get_json()
    same_dataset(imported, upload(client, sources["csv_bytes"], "penguins.csv"))
    assert imported["n_samples"] == 500
    listed = client.get(f"{URL}/jobs?kind=import").get_json()["items"]
    assert [j["id"] for j in listed] == [job["id"]]


@pytest.mark.usefixtures("allowed")
def test_a_prefix_of_parquet_parts_imports_as_the_same_dataset_as_the_file(
    app: Flask, client: FlaskClient, sources: dict[str, Any]
) -> None:
    job = submit(client, source=sources["parts"], name="penguins", target="species")
    assert job["options"]["format"] == "parquet" and job["progress"]["unit"] == "rows"
    assert run(app, job["id"]) == "succeeded"
    done = client.get(f"{URL}/jobs/{job['id']}").get_json()
    assert done["progress"] == {"done": 500, "total": 500, "unit": "rows"}
    imported = client.get(f"{URL}/datasets/{done['dataset_id']}").get_json()
    same_dataset(imported, upload(client, sources["parquet_bytes"], "penguins.parquet"))


def test_sources_outside_the_prefixes_are_refused_naming_the_setting(
    app: Flask, client: FlaskClient, sources: dict[str, Any]
) -> None:
    # the default: no prefix, no import
    error = assert_error(client.post(f"{URL}/datasets", json={"source": sources["csv"]}), 403)
    assert "TRAINYARD_IMPORT_PREFIXES" in error["message"] and sources["csv"] in error["message"]
    app.config["IMPORT_PREFIXES"] = sources["prefix"]
    outside = [
        sources["csv"].replace(FOLDER, "elsewhere"),
        sources["prefix"] + "../other/data.csv",
        "file:///etc/passwd.csv",
    ]
    for source in outside:
        r = client.post(f"{URL}/datasets", json={"source": source})
        assert r.status_code in (403, 422), (source, r.get_json())
        if r.status_code == 403:
            assert "TRAINYARD_IMPORT_PREFIXES" in r.get_json()["error"]["message"]
    assert_error(client.post(f"{URL}/datasets", json={"source": "http://x/y.csv"}), 422, "source")
    r = client.post(f"{URL}/datasets", json={"source": sources["prefix"] + "notes.txt"})
    assert_error(r, 422, "source")
    assert client.get(f"{URL}/jobs?kind=import").get_json()["items"] == []


@pytest.mark.usefixtures("allowed")
def test_a_missing_source_fails_the_job_with_a_message(
    app: Flask, client: FlaskClient, sources: dict[str, Any]
) -> None:
    job = submit(client, source=sources["prefix"] + "missing.csv")
    assert run(app, job["id"]) == "failed"
    done = client.get(f"{URL}/jobs/{job['id']}").get_json()
    assert "does not exist" in done["error"] and done["dataset_id"] is None


@pytest.mark.usefixtures("allowed")
def test_a_cancelled_import_stops_and_stores_nothing(
    app: Flask, client: FlaskClient, sources: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    job = submit(client, source=sources["csv"], target="species")
    real = imports.ingest

    def cancelled_first(*args: Any, **kwargs: Any) -> Any:
        with app.extensions["db_sessionmaker"]() as session:  # the attempt runs: the flag
            assert lifecycle.cancel(session, job["id"], "alice").done
        return real(*args, **kwargs)

    monkeypatch.setattr(imports, "ingest", cancelled_first)
    monkeypatch.setattr(importing, "PROGRESS_EVERY_S", 0.0)
    before = set(store_for(STORE_URL).dataset_ids())
    assert run(app, job["id"]) == "cancelled"
    done = client.get(f"{URL}/jobs/{job['id']}").get_json()
    assert done["status"] == "cancelled" and done["dataset_id"] is None
    assert set(store_for(STORE_URL).dataset_ids()) == before
    assert client.get(f"{URL}/datasets").get_json()["items"] == []


def test_a_twice_encoded_dot_dot_or_query_is_refused_and_the_path_is_decoded_once(
    tmp_path: Any,
) -> None:
    allowed = f"file://{tmp_path}/allowed/"
    for source in (
        f"file://{tmp_path}/allowed/%252e%252e/secret.csv",
        f"file://{tmp_path}/allowed/%2e%2e/secret.csv",
        f"file://{tmp_path}/allowed/a.csv?x=1",
        f"file://{tmp_path}/allowed/a.csv#frag",
        f"file://{tmp_path}/allowed/a%3Fb.csv",
    ):
        with pytest.raises(InputError):
            imports.check_allowed(source, [allowed])
    url = imports.check_allowed(f"file://{tmp_path}/allowed/my%20data.csv", [allowed])
    assert imports.filesystem(url)[1] == f"{tmp_path}/allowed/my data.csv"


def test_prefixes_match_on_segment_boundaries_and_symlinks_out_are_refused(tmp_path: Any) -> None:
    ok = imports.check_allowed("s3://bucket/allowed/x.csv", ["s3://bucket/allowed"])
    assert ok == "s3://bucket/allowed/x.csv"
    assert imports.check_allowed("s3://bkt/x.csv", ["s3://bkt"]) == "s3://bkt/x.csv"
    for source, prefix in (
        ("s3://bucket/allowed-evil/x.csv", "s3://bucket/allowed"),
        ("s3://bkt-other/x.csv", "s3://bkt"),
    ):
        with pytest.raises(ApiError) as refused:
            imports.check_allowed(source, [prefix])
        assert refused.value.status == 403
    (tmp_path / "allowed").mkdir()
    (tmp_path / "secret.csv").write_text("a\n1\n")
    (tmp_path / "allowed" / "link.csv").symlink_to(tmp_path / "secret.csv")
    with pytest.raises(ApiError) as refused:
        imports.check_allowed(
            f"file://{tmp_path}/allowed/link.csv", [f"file://{tmp_path}/allowed/"]
        )
    assert refused.value.status == 403


@pytest.mark.usefixtures("allowed")
def test_sources_in_the_services_own_store_are_refused_saying_why(
    app: Flask, client: FlaskClient
) -> None:
    app.config["IMPORT_PREFIXES"] = "s3://, file:///"
    store = str(app.config["STORE_URL"]).rstrip("/")
    source = f"{store}/datasets/{uuid.uuid4()}/part-00000.parquet"
    error = assert_error(client.post(f"{URL}/datasets", json={"source": source}), 403)
    assert "TRAINYARD_STORE_URL" in error["message"]
    assert client.get(f"{URL}/jobs?kind=import").get_json()["items"] == []


def test_a_gzipped_csvs_progress_counts_the_stored_bytes(tmp_path: Any) -> None:
    write_penguins_csv(tmp_path / "penguins.csv", n=2000, seed=4)
    packed = tmp_path / "penguins.csv.gz"
    packed.write_bytes(gzip.compress((tmp_path / "penguins.csv").read_bytes()))
    job = {
        "source": f"file://{packed}",
        "import_options": {"name": "p", "target": "species", "format": "csv", "unit": "bytes"},
    }
    seen: list[tuple[int, int]] = []
    store = store_for(STORE_URL)
    dataset_id = uuid.uuid4().hex
    _facts, stored = imports.ingest(
        job, Limits(), store, dataset_id, lambda done, total: seen.append((done, total))
    )
    store.delete(dataset_id)
    assert stored.n_rows == 2000
    assert seen and all(done <= total for done, total in seen)
    assert seen[-1] == (packed.stat().st_size, packed.stat().st_size)
