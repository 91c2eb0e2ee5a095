"""The datasets page uploads with the tus protocol (static/tus.js) in a real browser (Debian's
Chromium, Playwright), against a live service: an upload that was interrupted half way (its URL
in localStorage under the file's name, size and modification time) resumes from the server's
offset when the same file is picked again, and its dataset is made; no console errors, no CSP
violations."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
import requests
from playwright.sync_api import expect

from tests.dashboard.test_browser import Watched, page  # noqa: F401 (the fixture)
from tests.support import LiveService

pytestmark = pytest.mark.slow

TUS = {"Tus-Resumable": "1.0.0"}


def test_an_interrupted_upload_resumes_in_the_browser(
    page: Watched,  # noqa: F811
    service: LiveService,
    tmp_path: Path,
) -> None:
    path = tmp_path / "resumed.csv"
    path.write_text("x,y,label\n" + "".join(f"{i},{i % 7},{'ab'[i % 2]}\n" for i in range(60_000)))
    data = path.read_bytes()
    auth = {"Authorization": f"Bearer {service.api_key}"}
    meta = ",".join(
        f"{k} {base64.b64encode(v.encode()).decode()}"
        for k, v in {"filename": path.name, "name": "resumed", "target": "label"}.items()
    )
    created = requests.post(
        f"{service.url}/api/v1/uploads",
        headers={**TUS, **auth, "Upload-Length": str(len(data)), "Upload-Metadata": meta},
        timeout=10,
    )
    url = f"{service.url}{created.headers['Location']}"
    half = len(data) // 2 + 17  # the tab was closed here
    sent = requests.patch(
        url,
        data=data[:half],
        headers={**TUS, **auth, "Upload-Offset": "0",
                 "Content-Type": "application/offset+octet-stream"},
        timeout=30,
    )  # fmt: skip
    assert sent.status_code == 204

    p = page.page
    p.goto(f"{service.url}/#token={service.api_key}")
    p.click("#nav-datasets")
    p.wait_for_url("**/datasets")
    p.set_input_files("#upload-file", str(path))
    p.fill("#upload-target", "label")
    p.fill("#upload-name", "resumed")
    # the same options as the interrupted upload (other options would be another upload)
    key = p.evaluate(
        "() => TrainyardTus.storageKey(document.getElementById('upload-file').files[0],"
        " {filename: 'resumed.csv', target: 'label', name: 'resumed'})"
    )
    other = p.evaluate(
        "() => TrainyardTus.storageKey(document.getElementById('upload-file').files[0],"
        " {filename: 'resumed.csv', target: 'x', name: 'resumed'})"
    )
    assert other != key
    p.evaluate("([k, u]) => localStorage.setItem(k, u)", [key, url])
    p.click("#upload-submit")
    p.wait_for_url("**/datasets/*")
    dataset_id = p.url.rsplit("/", 1)[1]
    expect(p.locator("#dataset-name")).to_have_text("resumed")
    upload = requests.get(url, headers=auth, timeout=10).json()
    assert upload["status"] == "completed" and upload["dataset_id"] == dataset_id
    assert service.client().get_dataset(dataset_id)["n_samples"] == 60_000
    assert p.evaluate("(k) => localStorage.getItem(k)", key) is None  # forgotten once done
    assert page.problems == []
