"""The dashboard's HTML shell through Flask's test client: served without a key, with a strict
Content-Security-Policy, and written for it (no inline scripts, styles or handlers)."""

from __future__ import annotations

import re

import pytest
from flask.testing import FlaskClient

from service import create_app


@pytest.fixture
def client(sqlite_database_url: str) -> FlaskClient:
    app = create_app({"TESTING": True, "DATABASE_URL": sqlite_database_url})
    return app.test_client()


@pytest.mark.parametrize(
    "path", ["/", "/jobs/abc123", "/datasets", "/datasets/abc123", "/keys", "/audit"]
)
def test_pages_are_a_static_shell_under_a_strict_csp(client: FlaskClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 200 and response.mimetype == "text/html"
    csp = response.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert response.headers["Referrer-Policy"] == "no-referrer"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    html = response.get_data(as_text=True)
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html)  # no inline script
    assert not re.search(r"\sstyle\s*=", html) and "<style" not in html
    assert not re.search(r"\son[a-z]+\s*=", html)  # no event-handler attributes
    for src in re.findall(r'(?:src|href)="(/dashboard/static/[^"]+)"', html):
        assert client.get(src).status_code == 200, src


@pytest.mark.parametrize("prefix", ["/jobs/", "/datasets/"])
def test_ids_are_escaped_into_an_attribute(client: FlaskClient, prefix: str) -> None:
    html = client.get(prefix + '"><img src=x>').get_data(as_text=True)
    assert "<img src=x>" not in html and "&#34;&gt;&lt;img" in html


def test_every_page_links_the_datasets_page(client: FlaskClient) -> None:
    for path in ("/", "/jobs/abc123", "/datasets", "/datasets/abc123"):
        assert 'href="/datasets"' in client.get(path).get_data(as_text=True), path


def test_chart_library_is_vendored_with_its_license(client: FlaskClient) -> None:
    js = client.get("/dashboard/static/vendor/chart.umd.min.js")
    assert js.status_code == 200 and b"Chart.js v4" in js.data[:200]
    assert b"MIT" in client.get("/dashboard/static/vendor/chart.js.LICENSE.md").data
