"""The dashboard in a real browser: Debian's Chromium, headless, driven by Playwright, against a
live embedded-mode service (gunicorn + a real celery worker).

The test submits a job through the jobs page, watches its row reach `succeeded`, opens the job
page and checks the loss chart, the graph SVG, the decision boundary, predict and the weights
download, with no console errors and no CSP violations. Screenshots go to the test's temporary
folder, and also to `$TRAINYARD_SCREENSHOTS_DIR` when set (that is how docs/screenshots/ is made).
"""

from __future__ import annotations

import io
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, expect, sync_playwright

from engine.nn import MLP
from tests.client.live import LiveService
from tests.workers.datasets import moons

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
TIMEOUT_MS = 60_000


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=60_000)
        try:
            yield browser
        finally:
            browser.close()


class Watched:
    """A page whose console errors, page errors and CSP violations are collected."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.problems: list[str] = []
        page.on("console", self._console)
        page.on("pageerror", lambda exc: self.problems.append(f"page error: {exc}"))
        # CSP violations are reported to the page as events; record them where Python sees them
        page.add_init_script(
            "document.addEventListener('securitypolicyviolation', e => console.error("
            "'CSP violation: ' + e.violatedDirective + ' ' + e.blockedURI));"
        )

    def _console(self, message: ConsoleMessage) -> None:
        if message.type in ("error", "warning"):
            url = message.location.get("url", "")
            self.problems.append(f"console {message.type}: {message.text} ({url})")


@pytest.fixture
def page(browser: Browser, service: LiveService) -> Iterator[Watched]:
    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    context.set_default_timeout(TIMEOUT_MS)
    try:
        yield Watched(context.new_page())
    finally:
        context.close()


def screenshot(page: Page, tmp_path: Path, name: str, **kwargs: object) -> Path:
    path = tmp_path / name
    page.screenshot(path=str(path), **kwargs)
    assert path.stat().st_size > 10_000
    folder = os.environ.get("TRAINYARD_SCREENSHOTS_DIR")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(folder) / name)
    return path


def test_submit_watch_and_inspect_a_job(
    page: Watched, service: LiveService, tmp_path: Path
) -> None:
    api = service.client()
    x, y = moons(200, noise=0.1, seed=3)
    # an older dataset whose name is markup (it must show as text), then the one to train on
    api.upload_dataset(x[:20], np.where(y[:20] == 1, "inner", "outer"), name="moons <b>bold</b>")
    api.upload_dataset(x, np.where(y == 1, "inner", "outer"), name="two moons")
    # a finished job already in the table, so the page shows more than one status
    old = api.submit_job(api.list_datasets()["items"][0]["id"], [4, 1],
                         loss="binary_cross_entropy", epochs=3)  # fmt: skip
    api.wait(old["id"], poll_interval=0.1, timeout=60)

    p = page.page
    key = service.api_key or "no-key-needed-yet"
    p.goto(f"{service.url}/#token={key}")
    # the key is kept by the browser and taken out of the address bar
    expect(p.locator("#jobs-body tr")).to_have_count(1)
    assert "token" not in p.url
    assert p.evaluate("localStorage.getItem('trainyard-api-key')") == key

    # user text is text: the dataset's name shows literally, no <b> element is made
    expect(p.locator("#job-dataset option").nth(1)).to_contain_text("moons <b>bold</b>")
    assert p.locator("#job-dataset b").count() == 0
    expect(p.locator("#job-dataset option").first).to_contain_text("two moons")

    # submit a job through the form (dataset chosen: loss and output width are suggested)
    p.fill("#job-layers", "16,16,1")
    p.fill("#job-epochs", "60")
    p.fill("#job-lr", "0.03")
    p.click("#job-submit")
    rows = p.locator("#jobs-body tr")
    expect(rows).to_have_count(2)
    new_row = rows.first
    job_id = new_row.get_attribute("data-job-id")
    assert job_id and job_id != old["id"]
    expect(new_row).to_have_attribute("data-status", "succeeded", timeout=120_000)
    expect(new_row.locator(".badge")).to_have_text("succeeded")
    expect(new_row.locator("td").nth(3)).not_to_have_text("\u2013")  # final loss
    screenshot(p, tmp_path, "dashboard-jobs.png", full_page=True)

    # the status filter
    p.select_option("#status-filter", "queued")
    expect(p.locator("#jobs-body tr")).to_have_count(0)
    p.select_option("#status-filter", "succeeded")
    expect(p.locator("#jobs-body tr")).to_have_count(2)

    # a validation error from the API is shown with its field
    p.fill("#job-layers", "16,16,4")  # binary labels need one output
    p.click("#job-submit")
    expect(p.locator("#job-form-error")).to_contain_text("model.layers")

    # the job page
    new_row.locator("a.job-link").click()
    p.wait_for_url(f"**/jobs/{job_id}")
    expect(p.locator("#job-status")).to_have_text("succeeded")
    expect(p.locator("#job-progress-text")).to_contain_text("epoch 60 of 60")
    expect(p.locator("#metrics-table")).to_contain_text("val_accuracy")
    chart_points = p.evaluate("Chart.getChart('loss-chart').data.datasets.map(d => d.data.length)")
    assert chart_points == [60, 60]  # training and validation curves
    graph = p.locator("#graph-img")
    expect(graph).to_be_visible()
    p.wait_for_function("document.getElementById('graph-img').naturalWidth > 0")
    assert graph.get_attribute("src").startswith("blob:")
    expect(p.locator("#boundary-chart")).to_have_attribute("data-drawn", "true")
    # the training points over the boundary, one series per class, the range fitted to them
    per_class = p.evaluate("Chart.getChart('boundary-chart').data.datasets.map(d => d.data.length)")
    assert sorted(per_class) == sorted([int((y == 1).sum()), int((y == 0).sum())])
    x_range = [float(p.input_value("#bx-min")), float(p.input_value("#bx-max"))]
    assert x_range[0] < x[:, 0].min() < x[:, 0].max() < x_range[1]

    # predict through the form
    p.fill("#predict-input", "0, 1\n1, -0.5")
    p.click("#predict-form button[type=submit]")
    expect(p.locator("#predict-table tbody tr")).to_have_count(2)
    answers = p.locator("#predict-table td.prediction").all_text_contents()
    assert (
        answers == api.predict(api.get_job(job_id)["model_id"], [[0, 1], [1, -0.5]])["predictions"]
    )
    p.locator("#boundary-panel").scroll_into_view_if_needed()
    screenshot(p, tmp_path, "dashboard-job.png", full_page=True)
    # the whole graph SVG, as the browser draws it
    graph_path = tmp_path / "graph.png"
    graph_page = p.context.new_page()
    graph_page.set_content(api.graph_svg(api.get_job(job_id)["model_id"]))
    graph_page.screenshot(path=str(graph_path), full_page=True)
    graph_page.close()
    screenshot_dir = os.environ.get("TRAINYARD_SCREENSHOTS_DIR")
    if screenshot_dir:
        shutil.copy(graph_path, Path(screenshot_dir) / "graph.png")

    # the weights download: an .npz that loads into engine.nn.MLP
    with p.expect_download() as download_info:
        p.click("#weights-button")
    download = download_info.value
    assert download.suggested_filename.endswith(".npz")
    weights = Path(download.path()).read_bytes()
    MLP(2, [16, 16, 1]).load_state_dict(dict(np.load(io.BytesIO(weights))))

    # the only failed request is the deliberately invalid job
    assert page.problems == [
        "console error: Failed to load resource: the server responded with a status of "
        f"422 (UNPROCESSABLE ENTITY) ({service.url}/api/v1/jobs)"
    ]


def test_key_form_stores_the_key(page: Watched, service: LiveService) -> None:
    p = page.page
    p.goto(f"{service.url}/")
    panel = p.locator("#key-panel")
    if service.api_key:  # the API wants a key and the browser has none: the form asks for it
        expect(panel).to_be_visible()
        expect(p.locator("#flash")).to_contain_text("key")
    else:
        expect(panel).to_be_hidden()
        p.click("#key-button")
    expect(panel).to_be_visible()
    key = service.api_key or "pasted-key"
    p.fill("#key-input", key)
    with p.expect_navigation():
        p.click("#key-form button[type=submit]")
    assert p.evaluate("localStorage.getItem('trainyard-api-key')") == key
    expect(p.locator("#page-info")).to_contain_text("jobs")  # the API answered
    expect(panel).to_be_hidden()
    p.click("#key-button")
    with p.expect_navigation():
        p.click("#key-forget")
    assert p.evaluate("localStorage.getItem('trainyard-api-key')") is None
