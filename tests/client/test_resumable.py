"""Resumable uploads against a live service (gunicorn, real sockets): a PATCH cut mid-body with
a raw socket keeps what arrived and the upload goes on from its HEAD offset; a real tus client
from PyPI (`tuspy`) drives the endpoint; the Python client and the `trainyard` command resume an
interrupted upload (Ctrl-C) and make the same dataset as a plain upload of the same file."""

from __future__ import annotations

import base64
import hashlib
import json
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from tusclient import client as tus_client

from client import Client
from client.resumable import UploadStates
from tests.support import VENV_BIN, LiveService
from tests.support.flaky_link import cut_patch, flaky_link

pytestmark = pytest.mark.slow

TUS = {"Tus-Resumable": "1.0.0"}


def write_table(path: Path, n: int, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    lines = ["a,b,colour,label"]
    for i in range(n):
        a, b = rng.normal(size=2)
        colour = ["red", "green", "blue", ""][i % 4]
        lines.append(f"{a:.6f},{b:.6f},{colour},{'yes' if a + b > 0 else 'no'}")
    data = ("\n".join(lines) + "\n").encode()
    path.write_bytes(data)
    return data


def plain_upload(service: LiveService, path: Path, name: str) -> dict[str, Any]:
    response = service.api.http.post(
        f"{service.url}/api/v1/datasets",
        params={"name": name, "target": "label"},
        data=path.read_bytes(),
        headers={"Content-Type": "text/csv"},
        timeout=60,
    )
    assert response.status_code == 201, response.text
    return response.json()


def auth(service: LiveService) -> dict[str, str]:
    return {"Authorization": f"Bearer {service.api_key}"}


def head(service: LiveService, url: str) -> requests.Response:
    return requests.head(url, headers={**TUS, **auth(service)}, timeout=10)


def create(service: LiveService, length: int, **meta: str) -> str:
    encoded = ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in meta.items())
    response = requests.post(
        f"{service.url}/api/v1/uploads",
        headers={**TUS, **auth(service), "Upload-Length": str(length), "Upload-Metadata": encoded},
        timeout=10,
    )
    assert response.status_code == 201, response.text
    return f"{service.url}{response.headers['Location']}"


def offset_once_settled(service: LiveService, url: str, expected: int) -> int:
    """The upload's offset once the server saw the cut (its request ends a moment later)."""
    deadline = time.monotonic() + 15
    while True:
        offset = int(head(service, url).headers["Upload-Offset"])
        if offset == expected or time.monotonic() > deadline:
            return offset
        time.sleep(0.1)


def test_a_cut_patch_keeps_what_arrived_and_the_upload_goes_on(
    service: LiveService, tmp_path: Path
) -> None:
    data = write_table(tmp_path / "cut.csv", 3000, seed=1)
    url = create(service, len(data), name="cut", target="label")
    first = 12_345  # an arbitrary byte, mid-line
    cut_patch(url, service.api_key, 0, data[:first], len(data))
    assert offset_once_settled(service, url, first) == first
    # with a checksum, a cut chunk cannot be checked: nothing of it is kept
    digest = base64.b64encode(hashlib.sha1(data[first:]).digest()).decode()
    cut_patch(url, service.api_key, first, data[first : first + 5000], len(data) - first,
              f"sha1 {digest}")  # fmt: skip
    time.sleep(1.0)
    assert int(head(service, url).headers["Upload-Offset"]) == first
    response = requests.patch(
        url,
        data=data[first:],
        headers={**TUS, **auth(service), "Upload-Offset": str(first),
                 "Content-Type": "application/offset+octet-stream"},
        timeout=60,
    )  # fmt: skip
    assert response.status_code == 204, response.text
    dataset_id = response.headers["Upload-Dataset-Id"]
    assert head(service, url).headers["Upload-Dataset-Id"] == dataset_id
    plain = plain_upload(service, tmp_path / "cut.csv", "cut")
    made = service.client().get_dataset(dataset_id)
    assert made["n_samples"] == plain["n_samples"] == 3000
    assert made["storage"]["checksum"] == plain["storage"]["checksum"]


def test_tuspy_drives_the_endpoint(service: LiveService, tmp_path: Path) -> None:
    path = tmp_path / "tuspy.csv"
    data = write_table(path, 10_000, seed=2)
    half = len(data) // 2  # an interruption at an arbitrary byte
    tus = tus_client.TusClient(f"{service.url}/api/v1/uploads", headers=auth(service))
    uploader = tus.uploader(
        str(path),
        chunk_size=50_000,
        metadata={"filename": path.name, "name": "tuspy", "target": "label"},
        upload_checksum=True,  # sha1 per PATCH
    )
    uploader.upload(stop_at=half)
    assert uploader.offset == half and uploader.get_offset() == half
    # a new uploader for the same URL (another process, say) asks for the offset and goes on
    again = tus.uploader(str(path), url=uploader.url, chunk_size=64_000, upload_checksum=True)
    assert again.offset == half
    again.upload()
    assert again.offset == len(data)
    dataset_id = head(service, uploader.url).headers["Upload-Dataset-Id"]
    plain = plain_upload(service, path, "tuspy")
    made = service.client().get_dataset(dataset_id)
    assert made["name"] == "tuspy" and made["n_samples"] == 10_000
    assert made["storage"]["checksum"] == plain["storage"]["checksum"]
    assert made["columns"] == plain["columns"]


def test_an_interrupted_upload_resumes_from_the_client_and_the_command(
    service: LiveService, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "config"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(config))
    path = tmp_path / "big.csv"
    rows = 100_000  # about 3 MB
    write_table(path, rows, seed=3)
    sent: list[int] = []

    def interrupt_after_three_chunks(done: int, total: int) -> None:
        sent.append(done)
        if len(sent) == 4:  # the start, then three chunks
            raise KeyboardInterrupt

    # a slow link (never cut): the command below is still sending when its Ctrl-C comes
    with flaky_link(service.url, cut_every=1 << 60, pause=0.01) as link:
        client = Client(link.url, service.api_key, timeout=30)
        with pytest.raises(KeyboardInterrupt):
            client.upload_resumable(
                path, target="label", chunk_size=64 << 10, on_progress=interrupt_after_three_chunks
            )
        assert sent == [0, 65536, 131072, 196608]
        states = json.loads((config / "trainyard" / "uploads.json").read_text())
        key = UploadStates.key(path, {"filename": "big.csv", "name": "big", "target": "label"})
        assert list(states) == [key]
        url = states[key]
        assert url.startswith(link.url)
        assert int(head(service, url).headers["Upload-Offset"]) == 196608

        # the command, run again on the same file, goes on from there (its own Ctrl-C, too)
        command = [str(VENV_BIN / "trainyard"), "datasets", "upload", str(path), "--target",
                   "label", "--resumable", "--chunk-size", "16K", "--json"]  # fmt: skip
        env = service.env(XDG_CONFIG_HOME=str(config), COLUMNS="120")
        env["TRAINYARD_URL"] = link.url
        # Ctrl-C as a terminal gives it, whatever this process's own SIGINT disposition
        proc = subprocess.Popen(
            command,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        deadline = time.monotonic() + 60
        while int(head(service, url).headers["Upload-Offset"]) <= 196608:
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 130, proc.communicate()
        stopped = int(head(service, url).headers["Upload-Offset"])
        assert 196608 < stopped < path.stat().st_size

        finished = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)
    assert finished.returncode == 0, finished.stderr
    dataset = json.loads(finished.stdout)
    upload = requests.get(url.replace(link.url, service.url), headers=auth(service), timeout=10)
    assert upload.json()["status"] == "completed"
    assert upload.json()["dataset_id"] == dataset["id"]
    assert json.loads((config / "trainyard" / "uploads.json").read_text()) == {}
    plain = plain_upload(service, path, "big")
    assert dataset["name"] == "big" and dataset["n_samples"] == plain["n_samples"] == rows
    assert dataset["storage"]["checksum"] == plain["storage"]["checksum"]


def test_uploads_through_a_link_that_is_cut_complete_with_the_same_dataset(
    service: LiveService, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The issue's flaky link, small: cut every 300 kB, with tuspy (its retries ask the offset)
    and with the client (backoff, then HEAD)."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    path = tmp_path / "flaky.csv"
    data = write_table(path, 40_000, seed=4)  # about 1.2 MB
    plain = plain_upload(service, path, "flaky")
    with flaky_link(service.url, cut_every=300_000) as link:
        tus = tus_client.TusClient(f"{link.url}/api/v1/uploads", headers=auth(service))
        uploader = tus.uploader(
            str(path), chunk_size=128_000, metadata={"filename": path.name, "target": "label"},
            upload_checksum=True, retries=20, retry_delay=0.1,
        )  # fmt: skip
        uploader.upload()
        assert uploader.offset == len(data) and link.cuts >= 3
        by_tuspy = head(service, uploader.url.replace(link.url, service.url))
        client = Client(link.url, service.api_key, timeout=30)
        cuts = link.cuts
        by_client = client.upload_resumable(path, target="label", chunk_size=128_000)
        assert link.cuts >= cuts + 3
    for dataset_id in (by_tuspy.headers["Upload-Dataset-Id"], by_client["id"]):
        made = service.client().get_dataset(dataset_id)
        assert made["name"] == "flaky" and made["n_samples"] == plain["n_samples"] == 40_000
        assert made["storage"]["checksum"] == plain["storage"]["checksum"]


def test_the_stored_key_holds_the_metadata(tmp_path: Path) -> None:
    """Another `--target` or `--name` is another upload, not the old one resumed."""
    path = tmp_path / "t.csv"
    write_table(path, 10)
    one = UploadStates.key(path, {"filename": "t.csv", "target": "label"})
    assert one == UploadStates.key(path, {"target": "label", "filename": "t.csv"})
    assert one != UploadStates.key(path, {"filename": "t.csv", "target": "colour"})
    assert one.startswith(f"{path.resolve()}|")
