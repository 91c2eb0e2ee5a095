"""The dashboard in a real browser: Debian's Chromium, headless, driven by Playwright, against a
live embedded-mode service (gunicorn + a real celery worker).

The first test submits a job through the jobs page, watches its row reach `succeeded`, opens the
job page and checks the loss chart, the graph SVG, the decision boundary, predict and the weights
download; the second uploads a CSV (a text column, a missing cell) on the datasets page, sees its
columns, trains on it with early stopping and a test split from the form, and checks the
evaluation table, the confusion matrix, the best epoch and predict with named values. Both with
no console errors and no CSP violations. Screenshots go to the test's temporary
folder, and also to `$TRAINYARD_SCREENSHOTS_DIR` when set (that is how docs/screenshots/ is made).
"""

from __future__ import annotations

import io
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, expect

from engine.nn import MLP
from tests.support import LiveService
from tests.workers.datasets import moons

pytestmark = pytest.mark.slow

TIMEOUT_MS = 60_000


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
    expect(p.locator("#metrics-table")).to_contain_text("accuracy, validation rows")
    chart_points = p.evaluate("Chart.getChart('loss-chart').data.datasets.map(d => d.data.length)")
    assert chart_points[:2] == [60, 60]  # training and validation curves
    # the best epoch (lowest validation loss) is marked
    best = api.get_job(job_id)["best_epoch"]
    expect(p.locator("#loss-chart")).to_have_attribute("data-best-epoch", str(best))
    expect(p.locator("#job-stop")).to_contain_text(f"Ran all 60 epochs. Best epoch {best}.")
    # no test split: the evaluation has the training and validation columns
    expect(p.locator("#evaluation-table thead th[data-split]")).to_have_text(
        ["training", "validation"]
    )
    expect(p.locator("#confusion-matrix")).to_have_attribute("data-split", "validation")
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

    # predict through the form: an input per column (x0, x1), a row of inputs per row
    expect(p.locator("#predict-rows thead th")).to_have_count(2)
    p.click("#predict-add-row")
    inputs = p.locator("#predict-rows tbody input")
    for cell, value in zip(inputs.all(), ["0", "1", "1", "-0.5"], strict=True):
        cell.fill(value)
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

    # the ONNX export: a file onnxruntime runs, agreeing with the predict endpoint
    with p.expect_download() as download_info:
        p.click("#onnx-button")
    download = download_info.value
    assert download.suggested_filename.endswith(".onnx")
    session = ort.InferenceSession(download.path())
    x = np.array([[0.5, -0.25], [1.5, 0.5]])
    feeds = {i.name: x[:, j : j + 1] for j, i in enumerate(session.get_inputs())}
    labels, _ = session.run(["label", "probabilities"], feeds)
    model_id = p.inner_text("#model-id")
    expected = service.client().predict(model_id, x.tolist())["predictions"]
    assert labels.tolist() == expected

    # the only failed request is the deliberately invalid job
    assert page.problems == [
        "console error: Failed to load resource: the server responded with a status of "
        f"422 (UNPROCESSABLE ENTITY) ({service.url}/api/v1/jobs)"
    ]


def small_table(path: Path) -> Path:
    """A CSV with a numeric column, a text column and a missing cell; three classes."""
    rng = np.random.default_rng(7)
    lines = ["x1,colour,size,label"]
    colours = ["red", "green", "blue"]
    for i in range(90):
        k = i % 3
        x1 = rng.normal(k - 1.0, 0.6)
        size = "" if i == 4 else f"{rng.normal(10 * k, 4):.2f}"
        colour = colours[k] if rng.random() < 0.8 else colours[int(rng.integers(3))]
        lines.append(f"{x1:.3f},{colour},{size},{'abc'[k]}")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_upload_a_csv_and_submit_a_job_with_early_stopping(
    page: Watched, service: LiveService, tmp_path: Path
) -> None:
    api = service.client()
    p = page.page
    key = service.api_key or "no-key-needed-yet"
    p.goto(f"{service.url}/#token={key}")
    p.click("#nav-datasets")
    p.wait_for_url("**/datasets")
    expect(p.locator("#page-info")).to_contain_text("datasets")

    # pick a file: its header offers the target's name
    p.set_input_files("#upload-file", str(small_table(tmp_path / "shapes.csv")))
    expect(p.locator("#upload-columns-hint")).to_have_text("Columns: x1, colour, size, label")
    expect(p.locator("#upload-columns option")).to_have_count(4)
    p.fill("#upload-target", "label")
    p.fill("#upload-name", "shapes <i>csv</i>")
    p.click("#upload-submit")
    p.wait_for_url("**/datasets/*")
    dataset_id = p.url.rsplit("/", 1)[1]
    described = api.get_dataset(dataset_id)
    assert described["name"] == "shapes <i>csv</i>"
    expect(p.locator("#dataset-name")).to_have_text("shapes <i>csv</i>")  # text, not markup
    assert p.locator("#dataset-name i").count() == 0

    # its columns: type, missing count, stats or the most frequent levels; and the target
    columns = p.locator("#columns-body tr")
    expect(columns).to_have_count(3)
    assert [r.get_attribute("data-column") for r in columns.all()] == ["x1", "colour", "size"]
    assert [r.get_attribute("data-type") for r in columns.all()] == [
        "numeric", "categorical", "numeric"
    ]  # fmt: skip
    assert [r.get_attribute("data-missing") for r in columns.all()] == ["0", "0", "1"]
    expect(columns.nth(1)).to_contain_text("3 levels: ")
    expect(columns.nth(0)).to_contain_text("mean")
    expect(p.locator("#target-table")).to_contain_text("label")
    expect(p.locator("#target-table")).to_contain_text("3: a, b, c")
    screenshot(p, tmp_path, "dashboard-dataset.png", full_page=True)

    # the list links to it
    p.click("#nav-datasets")
    expect(p.locator(f"#datasets-body tr[data-dataset-id='{dataset_id}']")).to_contain_text("90")
    screenshot(p, tmp_path, "dashboard-datasets.png", full_page=True)
    p.locator(f"#datasets-body tr[data-dataset-id='{dataset_id}'] a").click()
    p.wait_for_url(f"**/datasets/{dataset_id}")

    # train on it from the jobs page's form: early stopping, a test split, loss left on auto
    p.click("#train-link")
    p.wait_for_url("**/?dataset=*")
    expect(p.locator("#job-dataset")).to_have_value(dataset_id)
    expect(p.locator("#job-layers")).to_have_value("16,16,3")  # auto loss: cross_entropy
    assert p.input_value("#job-loss") == ""
    expect(p.locator("#job-patience")).to_be_disabled()
    p.check("#job-early")
    p.fill("#job-patience", "5")
    p.fill("#job-test", "0.2")
    p.fill("#job-val", "0")
    p.fill("#job-epochs", "300")
    p.select_option("#job-dtype", "float64")
    p.select_option("#job-numeric", "minmax")
    with p.expect_response(
        lambda r: r.url.endswith("/api/v1/jobs") and r.request.method == "POST"
    ) as info:
        p.click("#job-submit")
    response = info.value
    assert response.status == 202
    sent = response.request.post_data_json["training"]
    assert "loss" not in sent
    assert sent["early_stopping"] == {"patience": 5} and sent["test_split"] == 0.2
    assert sent["dtype"] == "float64" and sent["preprocessing"]["numeric"] == "minmax"
    job_id = response.json()["id"]
    row = p.locator(f"#jobs-body tr[data-job-id='{job_id}']")
    expect(row).to_have_attribute("data-status", "succeeded", timeout=60_000)
    job = api.get_job(job_id)
    assert job["training"]["loss"] == "cross_entropy"
    assert job["stop_reason"] == "early_stopping" and job["best_epoch"] < job["stopped_epoch"]

    # the job page: why it stopped, the best epoch, the evaluation on the three splits
    row.locator("a.job-link").click()
    p.wait_for_url(f"**/jobs/{job_id}")
    stop = p.locator("#job-stop")
    expect(stop).to_have_attribute("data-stop-reason", "early_stopping")
    expect(stop).to_contain_text(f"Stopped early at epoch {job['stopped_epoch']} of 300")
    expect(p.locator("#loss-chart")).to_have_attribute("data-best-epoch", str(job["best_epoch"]))
    marked = p.evaluate(
        "(() => { const c = Chart.getChart('loss-chart'); return [c.options.plugins.bestEpoch"
        ".epoch, c.data.datasets[2].data.filter(v => v !== null).length]; })()"
    )
    assert marked == [job["best_epoch"], 1]
    splits = p.locator("#evaluation-table thead th[data-split]")
    expect(splits).to_have_text(["training", "validation", "test"])
    accuracy = p.locator("#evaluation-table tr[data-metric=accuracy] td")
    expect(accuracy).to_have_count(3)
    test_eval = job["evaluation"]["test"]
    expect(p.locator("#evaluation-table tr[data-metric=n] td")).to_have_text(
        [str(job["evaluation"][s]["n"]) for s in ("train", "validation", "test")]
    )
    # the confusion matrix of the test rows, shaded by CSS classes
    matrix = p.locator("#confusion-matrix")
    expect(matrix).to_have_attribute("data-split", "test")
    cells = matrix.locator("td.heat")
    expect(cells).to_have_count(9)
    counts = [int(c.get_attribute("data-count") or -1) for c in cells.all()]
    assert counts == [n for row_ in test_eval["confusion_matrix"]["matrix"] for n in row_]
    assert sum(counts) == test_eval["n"]
    expect(matrix.locator("thead th.predicted")).to_have_text(["a", "b", "c"])
    expect(p.locator("#per-class-table tbody tr")).to_have_count(3)
    p.select_option("#cm-split", "train")
    expect(matrix).to_have_attribute("data-split", "train")
    p.select_option("#cm-split", "test")
    p.locator("#evaluation-panel").scroll_into_view_if_needed()
    screenshot(p, tmp_path, "dashboard-evaluation.png", full_page=True)

    # predict with named inputs: text for the categorical column, an empty one is missing
    expect(p.locator("#predict-rows thead th")).to_have_count(3)
    inputs = p.locator("#predict-rows tbody input")
    assert [i.get_attribute("data-column") for i in inputs.all()] == ["x1", "colour", "size"]
    inputs.nth(0).fill("0.9")
    inputs.nth(1).fill("blue")
    p.click("#predict-form button[type=submit]")
    expect(p.locator("#predict-table tbody tr")).to_have_count(1)
    expected = api.predict(job["model_id"], [{"x1": 0.9, "colour": "blue"}])["predictions"]
    expect(p.locator("#predict-table td.prediction")).to_have_text(expected)
    expect(p.locator("#predict-table tbody td").first).to_have_text(
        "x1 = 0.9, colour = blue, size = missing"
    )
    # a bad value gets the API's message
    inputs.nth(0).fill("tall")
    p.click("#predict-form button[type=submit]")
    expect(p.locator("#predict-error")).to_contain_text("x1")

    assert page.problems == [
        "console error: Failed to load resource: the server responded with a status of "
        f"422 (UNPROCESSABLE ENTITY) ({service.url}/api/v1/models/{job['model_id']}/predict)"
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
