"""Resumable uploads (tus 1.0, `/api/v1/uploads`) through the app: chunks, offsets, checksums,
termination, expiry, owners, and the dataset a completed upload makes, which is the one a plain
`POST /api/v1/datasets` makes of the same file. On SQLite with a `file://` store and on
PostgreSQL with the real S3 server (SeaweedFS); PATCHes cut mid-body on a real socket
(werkzeug's server). The live service (gunicorn) with real tus clients and a flaky link is
tests/client/test_resumable.py's."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import io
import itertools
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa
from celery import Celery
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.serving import make_server

from service import table_stream, uploads
from service.celery import celery_config
from service.config import Settings
from service.dataset_store import DatasetStore
from service.db import utcnow
from service.problems import ApiError
from service.tables import Dataset, Upload
from service.tus import encode_metadata
from service.upload_store import UploadStore
from tests.service.helpers import assert_error
from tests.support.flaky_link import cut_patch
from workers.maintenance import sweep

URL = "/api/v1/uploads"
TUS = {"Tus-Resumable": "1.0.0"}
OCTETS = "application/offset+octet-stream"
CSV = b"x,colour,y\n" + b"".join(
    f"{i * 0.5},{['red', 'green', ''][i % 3]},{['no', 'yes'][i % 2]}\n".encode() for i in range(500)
)


@pytest.fixture
def store_url(app: Flask, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """SQLite: a `file://` store; PostgreSQL: a prefix of its own on the real S3 server."""
    if app.config["DATABASE_URL"].startswith("sqlite"):
        url = (tmp_path / "store").as_uri()
    else:
        url = f"{request.getfixturevalue('s3_store_url')}/{uuid.uuid4().hex[:12]}"
    app.config["STORE_URL"] = url
    return url


def create(client: FlaskClient, length: int, **meta: str) -> str:
    response = client.post(
        URL, headers={**TUS, "Upload-Length": str(length), "Upload-Metadata": encode_metadata(meta)}
    )
    assert response.status_code == 201, response.data
    assert response.headers["Tus-Resumable"] == "1.0.0"
    location = response.headers["Location"]
    assert location.startswith(f"{URL}/") and response.headers["Upload-Expires"].endswith("GMT")
    return location


def patch(client: FlaskClient, location: str, offset: int, body: bytes, algorithm: str = ""
          ) -> Any:  # fmt: skip
    headers = {**TUS, "Upload-Offset": str(offset), "Content-Type": OCTETS}
    if algorithm:
        digest = base64.b64encode(hashlib.new(algorithm, body).digest()).decode()
        headers["Upload-Checksum"] = f"{algorithm} {digest}"
    return client.patch(location, data=body, headers=headers)


def offset_of(client: FlaskClient, location: str) -> int:
    response = client.head(location, headers=TUS)
    assert response.status_code == 200 and response.headers["Cache-Control"] == "no-store"
    return int(response.headers["Upload-Offset"])


def chunk_names(store_url: str, location: str) -> list[str]:
    return UploadStore(store_url).names(location.rsplit("/", 1)[1])


def stored_rows(client: FlaskClient, dataset_id: str) -> Any:
    rows = client.get(f"/api/v1/datasets/{dataset_id}/data").get_json()
    rows.pop("id")
    return rows


def test_chunks_make_the_dataset_a_plain_upload_makes(client: FlaskClient, store_url: str) -> None:
    location = create(client, len(CSV), name="colours", target="y", filename="c.csv")
    cuts = [0, 1, 4000, 4001, len(CSV)]  # a one-byte chunk, chunks that split lines
    for start, end in itertools.pairwise(cuts):
        assert offset_of(client, location) == start
        response = patch(client, location, start, CSV[start:end], "sha256" if start else "")
        assert response.status_code == 204, response.data
        assert response.headers["Upload-Offset"] == str(end)
    dataset_id = response.headers["Upload-Dataset-Id"]
    head = client.head(location, headers=TUS)
    assert head.headers["Upload-Dataset-Id"] == dataset_id and "Upload-Expires" not in head.headers
    assert head.headers["Upload-Metadata"] == encode_metadata(
        {"name": "colours", "target": "y", "filename": "c.csv"}
    )
    described = client.get(location).get_json()
    assert described["status"] == "completed" and described["dataset_id"] == dataset_id
    assert described["metadata"] == {"name": "colours", "target": "y", "filename": "c.csv"}
    assert chunk_names(store_url, location) == []  # the chunks are freed

    plain = client.post(
        "/api/v1/datasets?name=colours&target=y", data=CSV, content_type="text/csv"
    ).get_json()
    made = client.get(f"/api/v1/datasets/{dataset_id}").get_json()
    assert made["name"] == "colours" and made["n_samples"] == plain["n_samples"] == 500
    assert made["storage"]["checksum"] == plain["storage"]["checksum"]
    assert made["columns"] == plain["columns"] and made["classes"] == ["no", "yes"]
    assert stored_rows(client, dataset_id) == stored_rows(client, plain["id"])
    listed = client.get("/api/v1/datasets").get_json()["items"]
    assert {d["id"] for d in listed} == {dataset_id, plain["id"]}


def test_an_offset_that_is_not_the_uploads_is_409(client: FlaskClient, store_url: str) -> None:
    location = create(client, len(CSV), target="y")
    assert patch(client, location, 0, CSV[:100]).status_code == 204
    for stale in (0, 50, 150):
        response = patch(client, location, stale, CSV[stale : stale + 10])
        assert_error(response, 409)
        assert response.headers["Upload-Offset"] == "100"
    assert offset_of(client, location) == 100 and len(chunk_names(store_url, location)) == 1


def test_a_chunk_whose_checksum_fails_is_not_kept(client: FlaskClient, store_url: str) -> None:
    location = create(client, len(CSV), target="y")
    headers = {**TUS, "Upload-Offset": "0", "Content-Type": OCTETS}
    wrong = base64.b64encode(hashlib.sha1(b"other bytes").digest()).decode()
    response = client.patch(
        location, data=CSV[:300], headers={**headers, "Upload-Checksum": f"sha1 {wrong}"}
    )
    assert response.status_code == 460 and response.get_json()["error"]["code"] == (
        "checksum_mismatch"
    )
    assert offset_of(client, location) == 0 and chunk_names(store_url, location) == []
    for checksum in ("md5 AAAA", "sha1 not-base64!", "sha256 " + wrong):
        response = client.patch(
            location, data=CSV[:300], headers={**headers, "Upload-Checksum": checksum}
        )
        assert_error(response, 400)
    assert patch(client, location, 0, CSV[:300], "sha1").status_code == 204
    assert offset_of(client, location) == 300 and len(chunk_names(store_url, location)) == 1


def test_the_protocols_answers(client: FlaskClient, anonymous: FlaskClient, app: Flask,
                               store_url: str) -> None:  # fmt: skip
    options = anonymous.options(URL)  # no key needed (a browser's preflight carries none)
    assert options.status_code == 204
    assert options.headers["Tus-Version"] == "1.0.0"
    assert options.headers["Tus-Extension"] == "creation,termination,checksum,expiration"
    assert options.headers["Tus-Max-Size"] == str(app.config["MAX_UPLOAD_BYTES"])
    assert options.headers["Tus-Checksum-Algorithm"] == "sha1,sha256"
    assert "Upload-Offset" in options.headers["Access-Control-Expose-Headers"]
    assert anonymous.head(f"{URL}/{'a' * 32}", headers=TUS).status_code == 401

    response = client.post(URL, headers={"Upload-Length": "10"})
    assert_error(response, 412)
    assert response.headers["Tus-Version"] == "1.0.0"
    assert_error(client.post(URL, headers={**TUS, "Tus-Resumable": "0.2.2"}), 412)
    assert_error(client.post(URL, headers=TUS), 400)  # no Upload-Length
    assert_error(client.post(URL, headers={**TUS, "Upload-Length": "-3"}), 400)
    assert_error(client.post(URL, headers={**TUS, "Upload-Defer-Length": "1"}), 400)
    concat = {**TUS, "Upload-Length": "10", "Upload-Concat": "partial"}
    assert_error(client.post(URL, headers=concat), 400)
    too_big = str(app.config["MAX_UPLOAD_BYTES"] + 1)
    assert_error(client.post(URL, headers={**TUS, "Upload-Length": too_big}), 413)
    bad_meta = {**TUS, "Upload-Length": "10", "Upload-Metadata": "name %%%"}
    assert_error(client.post(URL, headers=bad_meta), 400)
    types = {
        **TUS,
        "Upload-Length": "10",
        "Upload-Metadata": encode_metadata({"column_types": "["}),
    }
    assert_error(client.post(URL, headers=types), 422, "column_types")

    location = create(client, 10)
    wrong_type = {**TUS, "Upload-Offset": "0", "Content-Type": "text/csv"}
    assert_error(client.patch(location, data=b"a,b\n1,2\n", headers=wrong_type), 415)
    assert_error(client.patch(location, data=b"a", headers={"Content-Type": OCTETS}), 412)
    assert_error(patch(client, location, 0, b"a,b\n1,2\n3,4\n"), 413)  # past Upload-Length
    assert offset_of(client, location) == 0 and chunk_names(store_url, location) == []
    # X-HTTP-Method-Override, for clients that can send only POST
    override = client.post(
        location,
        data=b"a,b\n",
        headers={**TUS, "Upload-Offset": "0", "Content-Type": OCTETS,
                 "X-HTTP-Method-Override": "PATCH"},
    )  # fmt: skip
    assert override.status_code == 204 and offset_of(client, location) == 4


def test_another_owners_upload_is_not_found(client: FlaskClient, bob: FlaskClient,
                                            store_url: str) -> None:  # fmt: skip
    location = create(client, len(CSV), target="y")
    assert patch(client, location, 0, CSV[:10]).status_code == 204
    assert bob.head(location, headers=TUS).status_code == 404
    assert_error(bob.get(location), 404)
    assert_error(patch(bob, location, 10, CSV[10:20]), 404)
    assert_error(bob.delete(location, headers=TUS), 404)
    assert client.head(f"{URL}/not-an-id", headers=TUS).status_code == 404
    assert offset_of(client, location) == 10 and len(chunk_names(store_url, location)) == 1


def test_termination_frees_the_bytes(client: FlaskClient, store_url: str) -> None:
    location = create(client, len(CSV), target="y")
    assert patch(client, location, 0, CSV[:1000]).status_code == 204
    assert patch(client, location, 1000, CSV[1000:2000]).status_code == 204
    assert len(chunk_names(store_url, location)) == 2
    assert client.delete(location, headers=TUS).status_code == 204
    assert chunk_names(store_url, location) == []
    assert client.head(location, headers=TUS).status_code == 404
    assert_error(patch(client, location, 2000, CSV[2000:]), 404)


def test_expired_uploads_are_gone_and_the_sweep_frees_their_bytes(
    client: FlaskClient, app: Flask, store_url: str, tmp_path: Path
) -> None:
    expired = create(client, len(CSV), target="y")
    assert patch(client, expired, 0, CSV[:1000]).status_code == 204
    fresh = create(client, len(CSV), target="y")
    assert patch(client, fresh, 0, CSV[:10]).status_code == 204
    head = client.head(fresh, headers=TUS)
    assert "GMT" in head.headers["Upload-Expires"]
    factory = app.extensions["db_sessionmaker"]
    with factory() as session:
        session.execute(
            sa.update(Upload)
            .where(Upload.id == expired.rsplit("/", 1)[1])
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )
        session.commit()
    assert client.head(expired, headers=TUS).status_code == 410
    assert_error(patch(client, expired, 1000, CSV[1000:2000]), 410)

    settings = dataclasses.replace(
        Settings(), database_url=app.config["DATABASE_URL"], store_url=store_url
    )
    broker = f"filesystem://{(tmp_path / 'sweep-broker').as_posix()}"
    celery = Celery("t")
    celery.config_from_object(celery_config(dataclasses.replace(settings, broker_url=broker)))
    sweep(factory, celery, settings)  # the workers' maintenance pass
    assert client.head(expired, headers=TUS).status_code == 404
    assert chunk_names(store_url, expired) == []
    assert offset_of(client, fresh) == 10 and len(chunk_names(store_url, fresh)) == 1
    with factory() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(Upload)) == 1


def test_data_refused_at_completion_is_recorded_and_freed(
    client: FlaskClient, app: Flask, store_url: str
) -> None:
    location = create(client, len(CSV), target="species")
    assert patch(client, location, 0, CSV[:2000]).status_code == 204
    response = patch(client, location, 2000, CSV[2000:])
    error = assert_error(response, 422, "target")
    assert "species" in error["message"]
    described = client.get(location).get_json()
    assert described["status"] == "failed" and "species" in described["error"]
    assert described["offset"] == len(CSV) and described["dataset_id"] is None
    assert chunk_names(store_url, location) == []
    assert DatasetStore(store_url).dataset_ids() == {}
    with app.extensions["db_sessionmaker"]() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(Dataset)) == 0
    assert_error(patch(client, location, len(CSV), b""), 409)  # finished


def test_metadata_picks_the_format(client: FlaskClient, store_url: str) -> None:
    table = pa.table({"a": [1.5, None, 3.0, -2.0], "b": ["x", "y", None, "x"], "y": [0, 1, 1, 0]})
    sink = io.BytesIO()
    pq.write_table(table, sink)
    parquet = sink.getvalue()
    made = {}
    for meta in ({"filetype": "application/vnd.apache.parquet"}, {"filename": "t.parquet"}, {}):
        location = create(client, len(parquet), **meta)
        response = patch(client, location, 0, parquet[:100])
        response = patch(client, location, 100, parquet[100:])
        assert response.status_code == 204, response.data
        made[str(meta)] = client.get(
            f"/api/v1/datasets/{response.headers['Upload-Dataset-Id']}"
        ).get_json()
    names = {d["name"] for d in made.values()}
    assert names == {"dataset", "t"}  # the name, else the file's stem, else "dataset"
    assert {d["n_samples"] for d in made.values()} == {4}
    assert len({d["storage"]["checksum"] for d in made.values()}) == 1
    lines = b'{"a": 1, "y": 0}\n{"a": 2, "y": 1}\n'
    location = create(client, len(lines), filename="l.jsonl", name="lines")
    response = patch(client, location, 0, lines)
    dataset = client.get(f"/api/v1/datasets/{response.headers['Upload-Dataset-Id']}").get_json()
    assert dataset["name"] == "lines" and dataset["n_samples"] == 2
    # a first chunk shorter than the magic (a cut PATCH): still told by its first bytes
    location = create(client, len(parquet))
    assert patch(client, location, 0, parquet[:2]).status_code == 204
    response = patch(client, location, 2, parquet[2:])
    assert response.status_code == 204, response.data
    dataset = client.get(f"/api/v1/datasets/{response.headers['Upload-Dataset-Id']}").get_json()
    assert dataset["n_samples"] == 4 and dataset["storage"]["checksum"] in {
        d["storage"]["checksum"] for d in made.values()
    }


def test_chunks_without_an_upload_row_are_deleted_once_old(
    client: FlaskClient, app: Flask, store_url: str
) -> None:
    kept = create(client, len(CSV), target="y")
    assert patch(client, kept, 0, CSV[:10]).status_code == 204
    store = UploadStore(store_url)
    written = store.write("e" * 32, 0, io.BytesIO(b"lost bytes"), 100, None)  # no row
    assert written.size == 10 and store.names("e" * 32) == [written.name]
    factory = app.extensions["db_sessionmaker"]
    assert uploads.delete_orphan_chunks(factory, store_url) == []  # fresh: perhaps in flight
    later = time.time() + 7 * 3600
    assert uploads.delete_orphan_chunks(factory, store_url, now=later) == ["e" * 32]
    assert store.names("e" * 32) == [] and len(chunk_names(store_url, kept)) == 1


@pytest.fixture
def served(app: Flask) -> Iterator[str]:
    """The app behind a real socket (werkzeug's threaded server), for cut connections."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(10)


def test_a_patch_cut_at_any_byte_keeps_what_arrived_then_goes_on(
    client: FlaskClient, api_key: str, served: str, store_url: str
) -> None:
    location = create(client, len(CSV), name="cut", target="y")
    offset = 0
    for cut in (1, 2_345, 5_000):  # arbitrary bytes, mid-line
        cut_patch(f"{served}{location}", api_key, offset, CSV[offset:cut], len(CSV) - offset)
        deadline = time.monotonic() + 10
        while offset_of(client, location) != cut and time.monotonic() < deadline:
            time.sleep(0.05)
        assert offset_of(client, location) == cut
        offset = cut
    assert len(chunk_names(store_url, location)) == 3
    # a cut chunk with a checksum is not kept: the part cannot be checked
    digest = base64.b64encode(hashlib.sha1(CSV[offset:]).digest()).decode()
    cut_patch(f"{served}{location}", api_key, offset, CSV[offset : offset + 999],
              len(CSV) - offset, f"sha1 {digest}")  # fmt: skip
    time.sleep(0.5)
    assert offset_of(client, location) == offset and len(chunk_names(store_url, location)) == 3
    response = patch(client, location, offset, CSV[offset:], "sha1")
    assert response.status_code == 204, response.data
    made = client.get(f"/api/v1/datasets/{response.headers['Upload-Dataset-Id']}").get_json()
    plain = client.post(
        "/api/v1/datasets?name=cut&target=y", data=CSV, content_type="text/csv"
    ).get_json()
    assert made["n_samples"] == 500 and made["storage"]["checksum"] == plain["storage"]["checksum"]
    assert chunk_names(store_url, location) == []


def raw_patch_start(base: str, location: str, key: str, offset: int, length: int
                    ) -> socket.socket:  # fmt: skip
    """Open a PATCH announcing `length` bytes; its body is sent later."""
    sock = socket.create_connection(("127.0.0.1", int(base.rsplit(":", 1)[1])), timeout=10)
    head = (
        f"PATCH {location} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
        f"Tus-Resumable: 1.0.0\r\nUpload-Offset: {offset}\r\n"
        f"Content-Type: {OCTETS}\r\nContent-Length: {length}\r\nConnection: close\r\n\r\n"
    )
    sock.sendall(head.encode())
    return sock


def test_two_requests_at_one_offset_one_wins(
    client: FlaskClient, api_key: str, served: str, store_url: str
) -> None:
    """Both pass the offset check and stream their chunks; the conditional UPDATE takes one,
    the other answers 409 and deletes its chunk."""
    location = create(client, len(CSV), target="y")
    short, long = CSV[:1000], CSV[:3000]
    first = raw_patch_start(served, location, api_key, 0, len(short))
    second = raw_patch_start(served, location, api_key, 0, len(long))
    first.sendall(short[:10])
    second.sendall(long[:10])
    time.sleep(0.3)  # both are past the offset check, streaming
    second.sendall(long[10:])
    status_second = second.recv(100).split(b" ")[1]
    first.sendall(short[10:])
    status_first = first.recv(100).split(b" ")[1]
    first.close()
    second.close()
    assert (status_first, status_second) == (b"409", b"204")
    assert offset_of(client, location) == 3000 and len(chunk_names(store_url, location)) == 1


def test_a_completion_that_lost_its_claim_makes_no_dataset_and_a_delete_waits(
    client: FlaskClient, app: Flask, store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A DELETE during a completion is a 409; a completion whose lease another request took
    over (its lease ran out) stores no dataset and answers 409, not a second dataset or a 500."""
    location = create(client, len(CSV), target="y")
    upload_id = location.rsplit("/", 1)[1]
    assert patch(client, location, 0, CSV[:1000]).status_code == 204
    factory = app.extensions["db_sessionmaker"]
    real = table_stream.ingest_upload
    seen: dict[str, Any] = {}

    def taken_over(*args: Any, **kwargs: Any) -> Any:
        made = real(*args, **kwargs)  # the rows are stored; the dataset's row comes next
        seen["dataset_id"] = args[5]
        with factory() as session:
            with pytest.raises(ApiError) as refused:  # a DELETE now: the lease holds
                uploads.terminate(session, session.get(Upload, upload_id))
            assert refused.value.status == 409
            session.rollback()
            assert uploads.describe(session.get(Upload, upload_id))["status"] == "completing"
            session.execute(  # nor does the sweep of expired uploads take it
                sa.update(Upload)
                .where(Upload.id == upload_id)
                .values(expires_at=utcnow() - timedelta(seconds=1))
            )
            session.commit()
            assert upload_id not in uploads.delete_expired(factory)
            # another request claims, as if this one's lease had run out
            session.execute(
                sa.update(Upload)
                .where(Upload.id == upload_id)
                .values(completing_since=utcnow(), expires_at=utcnow() + timedelta(hours=1))
            )
            session.commit()
        return made

    monkeypatch.setattr(table_stream, "ingest_upload", taken_over)
    assert_error(patch(client, location, 1000, CSV[1000:]), 409)
    with factory() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(Dataset)) == 0
        assert session.get(Upload, upload_id).dataset_id is None
    assert seen["dataset_id"] not in DatasetStore(store_url).dataset_ids()
    monkeypatch.setattr(uploads, "COMPLETION_LEASE_S", 0.0)  # the other claim is dead now
    monkeypatch.setattr(table_stream, "ingest_upload", real)
    assert patch(client, location, len(CSV), b"").status_code == 204
    assert client.get(location).get_json()["status"] == "completed"


def test_non_ascii_metadata_or_checksum_is_a_400_naming_the_header(
    client: FlaskClient, store_url: str
) -> None:
    response = client.post(
        URL, headers={**TUS, "Upload-Length": "10", "Upload-Metadata": "filename d\u00e9j\u00e0"}
    )
    assert "Upload-Metadata" in assert_error(response, 400)["message"]
    location = create(client, len(CSV), target="y")
    headers = {**TUS, "Upload-Offset": "0", "Content-Type": OCTETS}
    response = client.patch(
        location, data=CSV, headers={**headers, "Upload-Checksum": "sha1 \u00e9\u00e9\u00e9\u00e9"}
    )
    assert "Upload-Checksum" in assert_error(response, 400)["message"]
    assert offset_of(client, location) == 0


def test_control_characters_in_the_filename_are_refused_and_unexpected_errors_recorded(
    client: FlaskClient, store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key in ("filename", "filetype"):
        response = client.post(
            URL,
            headers={
                **TUS,
                "Upload-Length": "10",
                "Upload-Metadata": encode_metadata({key: "a\0b"}),
            },
        )
        assert_error(response, 422, key)
    location = create(client, len(CSV), target="y")

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(table_stream, "ingest_upload", broken)
    assert patch(client, location, 0, CSV).status_code == 500  # a bug: logged, and recorded
    described = client.get(location).get_json()
    assert described["status"] == "failed" and "a bug" in described["error"]
    assert chunk_names(store_url, location) == []
