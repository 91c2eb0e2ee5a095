"""The dashboard's live pages in a real browser (headless Chromium, Playwright) against the live
embedded service: the job page follows the job's event stream (fetch with the key: one stream,
no polling of the job) to the finished job, every epoch on the chart; the jobs page lists jobs
without downloading their loss histories.
"""

from __future__ import annotations

import json

import pytest
from playwright.sync_api import Browser, Request, expect

from tests.support import LiveService
from tests.workers.datasets import moons

pytestmark = pytest.mark.slow


def test_the_job_page_follows_the_stream_and_the_list_skips_histories(
    browser: Browser, service: LiveService
) -> None:
    api = service.client()
    x, y = moons(400, noise=0.1, seed=5)
    dataset = api.upload_dataset(x, y, name="live moons")
    job = api.submit_job(dataset["id"], [32, 32, 1], loss="binary_cross_entropy", epochs=300,
                         batch_size=8, validation_split=0.2)  # fmt: skip
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(60_000)
    try:
        p = context.new_page()
        problems: list[str] = []
        p.on("pageerror", lambda exc: problems.append(str(exc)))
        p.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
        requests: list[str] = []

        def seen(request: Request) -> None:
            if "/api/v1/" in request.url:
                requests.append(request.url.split("/api/v1", 1)[1])

        p.on("request", seen)
        p.goto(f"{service.url}/jobs/{job['id']}#token={service.api_key}")
        chart = p.locator("#loss-chart")
        expect(chart).to_have_attribute("data-live", "stream")
        expect(p.locator("#job-status")).to_have_text("succeeded", timeout=120_000)
        expect(p.locator("#job-progress-text")).to_contain_text("epoch 300 of 300")
        # every epoch reached the chart
        points = p.evaluate(
            "Chart.getChart(document.getElementById('loss-chart')).data.labels.length"
        )
        assert points == 300
        job_path = f"/jobs/{job['id']}"
        polls = [r for r in requests if r == job_path]
        streams = [r for r in requests if r.startswith(job_path + "/events")]
        assert len(streams) >= 1 and len(polls) <= 1 + len(streams), requests
        assert problems == []

        # the jobs page: no histories in what it downloads
        bodies: list[str] = []
        p.on(
            "response",
            lambda r: bodies.append(r.text()) if "/api/v1/jobs?" in r.url else None,
        )
        p.goto(f"{service.url}/")
        row = p.locator(f"#jobs-body tr[data-job-id='{job['id']}']")
        expect(row).to_have_attribute("data-status", "succeeded")
        expect(row.locator("td").nth(3)).not_to_have_text("\u2013")  # the final loss
        assert bodies and all("loss_history" not in json.loads(b)["items"][0] for b in bodies)
    finally:
        context.close()
