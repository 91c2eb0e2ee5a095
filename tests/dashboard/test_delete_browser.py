"""Delete buttons ask before they delete, and the top bar shows usage against the quotas, in a
real browser (Chromium, Playwright) against a live service; no console errors or CSP
violations."""

from __future__ import annotations

import pytest
from playwright.sync_api import Dialog, expect

from client import NotFoundError
from tests.dashboard.test_browser import Watched, page  # noqa: F401 (the fixture)
from tests.support import LiveService
from tests.workers.datasets import moons

pytestmark = pytest.mark.slow


def test_a_dataset_is_deleted_after_a_confirmation(
    page: Watched,  # noqa: F811
    service: LiveService,
) -> None:
    api = service.client()
    x, y = moons(40)
    dataset_id = api.upload_dataset(x, y, name="doomed")["id"]
    p = page.page
    p.goto(f"{service.url}/#token={service.api_key}")
    p.goto(f"{service.url}/datasets/{dataset_id}")
    expect(p.locator("#dataset-name")).to_have_text("doomed")
    expect(p.locator("#usage")).to_contain_text(" of no quota · ")
    answers = iter([False, True])
    asked: list[str] = []

    def answer(dialog: Dialog) -> None:
        asked.append(dialog.message)
        dialog.accept() if next(answers) else dialog.dismiss()

    p.on("dialog", answer)
    p.click("button[data-delete]")  # dismissed: nothing happens
    assert api.get_dataset(dataset_id)["id"] == dataset_id
    p.click("button[data-delete]")
    p.wait_for_url("**/datasets")
    assert len(asked) == 2 and "cannot be undone" in asked[0]
    with pytest.raises(NotFoundError):
        api.get_dataset(dataset_id)
    assert page.problems == []


def test_the_job_page_says_the_dataset_is_gone_and_deletes_the_model(
    page: Watched,  # noqa: F811
    service: LiveService,
) -> None:
    api = service.client()
    x, y = moons(40)
    dataset_id = api.upload_dataset(x, y, name="short-lived")["id"]
    job = api.wait(api.submit_job(dataset_id, layers=[4, 1], epochs=2)["id"], timeout=120)
    assert job["status"] == "succeeded"
    api.delete_dataset(dataset_id)
    p = page.page
    p.goto(f"{service.url}/#token={service.api_key}")
    p.goto(f"{service.url}/jobs/{job['id']}")
    expect(p.locator("#model-dataset-gone")).to_be_visible()
    p.on("dialog", lambda dialog: dialog.accept())
    p.click("#model-delete")
    p.wait_for_load_state()
    expect(p.locator("#model-panel")).to_be_hidden()
    with pytest.raises(NotFoundError):
        api.get_model(job["model_id"])
    assert api.get_job(job["id"])["model_id"] is None
    assert page.problems == []
