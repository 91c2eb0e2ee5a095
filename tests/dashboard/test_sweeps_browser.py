"""Sweeps in the real browser (headless Chromium, Playwright) against the live embedded service:
the new-sweep form, the sweep page filling in live (trials table sorted by the metric, the best
marked, every trial's validation-loss curve, each parameter against the metric), the compare
view of jobs picked on the jobs page, and a refused sweep's fields. No console errors, no CSP
violations."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from playwright.sync_api import expect

from tests.dashboard.test_browser import Watched, page, screenshot  # noqa: F401
from tests.support import LiveService, live_service
from tests.workers.datasets import moons

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveService]:
    """A service of this module's own: its jobs and sweeps tables hold only this test's rows
    (the package's service has the other browser tests' jobs)."""
    with live_service(tmp_path_factory.mktemp("sweeps-dashboard-service")) as live:
        yield live


def test_submit_a_sweep_watch_it_and_compare_trials(
    page: Watched,  # noqa: F811
    service: LiveService,
    tmp_path: Path,
) -> None:
    api = service.client()
    x, y = moons(160, seed=5)
    api.upload_dataset(x, np.where(y == 1, "inner", "outer"), name="sweep moons")
    p = page.page
    p.goto(f"{service.url}/#token={service.api_key or 'none'}")
    p.click("#nav-sweeps")
    expect(p.locator("#sweep-dataset option").first).to_contain_text("sweep moons")
    # the form suggests a base spec and a grid that fit the dataset; make them quick
    base = json.loads(p.input_value("#sweep-base"))
    assert base["model"]["layers"][-1] == 1
    assert base["training"]["loss"] == "binary_cross_entropy"
    base["training"]["epochs"] = 25
    p.fill("#sweep-base", json.dumps(base))
    grid = {"training.learning_rate": {"values": [0.003, 0.05]},
            "model.layers": {"values": [[8, 1], [16, 1]]}}  # fmt: skip
    p.fill("#sweep-parameters", json.dumps(grid))
    p.fill("#sweep-name", "browser <i>sweep</i>")
    p.fill("#sweep-max-parallel", "2")
    p.click("#sweep-submit")

    p.wait_for_url("**/sweeps/*")
    main = p.locator("#main")
    expect(main).to_have_attribute("data-status", "succeeded", timeout=180_000)
    expect(p.locator("#sweep-name")).to_have_text("browser <i>sweep</i>")  # text, not markup
    assert p.locator("#sweep-name i").count() == 0
    rows = p.locator("#trials-body tr")
    expect(rows).to_have_count(4)
    expect(p.locator("#trials-body tr.best-row")).to_have_count(1)
    expect(p.locator("#sweep-best")).to_contain_text("Best trial: val_loss")
    # sort by the metric: the best (lowest val_loss) first
    p.click("#trials-head th[data-key='metric']")
    values = [float(v) for v in p.locator("#trials-body td.metric").all_inner_texts()]
    assert values == sorted(values)
    expect(rows.first).to_have_class("best-row")
    p.click("#trials-head th[data-key='metric']")  # again: descending
    values = [float(v) for v in p.locator("#trials-body td.metric").all_inner_texts()]
    assert values == sorted(values, reverse=True)
    expect(p.locator("#curves-chart")).to_have_attribute("data-curves", "4")
    for path in grid:
        expect(p.locator(f"canvas[data-param='{path}']")).to_have_attribute("data-points", "4")
    screenshot(p, tmp_path, "dashboard-sweep.png", full_page=True)

    p.click("#nav-sweeps")
    expect(p.locator("#sweeps-body tr")).to_have_count(1)
    expect(p.locator("#sweeps-body tr").first).to_have_attribute("data-status", "succeeded")

    # a refused sweep: the form shows the field the API named
    p.fill("#sweep-parameters", json.dumps({"training.lr": {"values": [0.1]}}))
    p.click("#sweep-submit")
    expect(p.locator("#sweep-form-error")).to_contain_text("parameters.training.lr")

    # compare two trials picked on the jobs page
    p.click("#nav-jobs")
    expect(p.locator("#jobs-body tr")).to_have_count(4)
    expect(p.locator("#compare-button")).to_be_disabled()
    p.locator("#jobs-body tr input.pick").nth(0).check()
    p.locator("#jobs-body tr input.pick").nth(3).check()
    p.click("#compare-button")
    p.wait_for_url("**/compare?jobs=*")
    expect(main).to_have_attribute("data-loaded", "true")
    fields = p.locator("#diff-body tr").evaluate_all("rows => rows.map(r => r.dataset.field)")
    assert "training.learning_rate" in fields and "model.layers" in fields
    assert "training.epochs" not in fields  # the same in both: not shown
    expect(p.locator("#compare-chart")).to_have_attribute("data-curves", "4")  # train + val each
    screenshot(p, tmp_path, "dashboard-compare.png", full_page=True)

    problems = [
        m
        for m in page.problems
        # the refused sweep's 422, which the form showed
        if "the server responded with a status of 422" not in m
    ]
    assert problems == []
