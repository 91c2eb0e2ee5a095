"""The keys page (create, revoke with a confirmation) and the audit page in a real browser."""

from __future__ import annotations

import pytest
from playwright.sync_api import Dialog, expect

from tests.dashboard.test_browser import Watched, page  # noqa: F401
from tests.support import LiveService

pytestmark = pytest.mark.slow


def test_create_and_revoke_a_key_then_read_the_audit_log(
    page: Watched,  # noqa: F811
    service: LiveService,
) -> None:
    p = page.page
    key = service.api_key or "no-key-needed-yet"
    p.goto(f"{service.url}/keys#token={key}")
    expect(p.locator("#keys-body tr")).not_to_have_count(0)
    p.fill("#key-create-name", "browser-ci")
    p.select_option("#key-create-scope", "read")
    p.click("#key-create-submit")
    expect(p.locator("#key-created-secret")).to_contain_text("ty_")
    row = p.locator("#keys-body tr", has_text="browser-ci")
    expect(row).to_contain_text("read")

    asked: list[str] = []

    def answer(dialog: Dialog) -> None:
        asked.append(dialog.message)
        dialog.dismiss() if len(asked) == 1 else dialog.accept()

    p.on("dialog", answer)
    row.locator(".revoke-key").click()  # dismissed: nothing happens
    expect(row.locator(".revoke-key")).to_be_visible()
    row.locator(".revoke-key").click()
    expect(row.locator(".revoke-key")).to_have_count(0)
    assert len(asked) == 2 and "browser-ci" in asked[0]

    p.goto(f"{service.url}/audit")
    expect(p.locator("#audit-body")).to_contain_text("key.revoke")
    expect(p.locator("#audit-body")).to_contain_text("key.create")
    p.fill("#audit-action", "key.revoke")
    p.click("#audit-filter button[type=submit]")
    expect(p.locator("#audit-body tr")).to_have_count(1)
    expect(p.locator("#audit-body tr")).to_contain_text("204")
    assert page.problems == []
