"""The registry's dashboard pages: a static shell like the others, linked from every page's
nav, the name escaped into its attribute; the job page has a place for the registrations."""

from __future__ import annotations

import re

import pytest
from flask.testing import FlaskClient

from service import create_app


@pytest.fixture
def client(sqlite_database_url: str) -> FlaskClient:
    app = create_app({"TESTING": True, "DATABASE_URL": sqlite_database_url})
    return app.test_client()


@pytest.mark.parametrize("path", ["/registry", "/registry/churn"])
def test_registry_pages_are_a_static_shell(client: FlaskClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 200 and response.mimetype == "text/html"
    assert "unsafe-inline" not in response.headers["Content-Security-Policy"]
    html = response.get_data(as_text=True)
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html)  # no inline script
    assert not re.search(r"\sstyle\s*=", html) and not re.search(r"\son[a-z]+\s*=", html)
    for src in re.findall(r'(?:src|href)="(/dashboard/static/[^"]+)"', html):
        assert client.get(src).status_code == 200, src
    assert "/dashboard/static/registry.js" in html
    assert f'data-name="{path.removeprefix("/registry").strip("/")}"' in html


def test_every_page_links_the_registry(client: FlaskClient) -> None:
    for path in ("/", "/jobs/abc123", "/datasets", "/sweeps", "/registry", "/registry/x"):
        assert 'href="/registry"' in client.get(path).get_data(as_text=True), path


def test_the_name_is_escaped(client: FlaskClient) -> None:
    html = client.get('/registry/"><img src=x>').get_data(as_text=True)
    assert "<img src=x>" not in html and "&#34;&gt;&lt;img" in html


def test_the_job_page_shows_where_its_model_is_registered(client: FlaskClient) -> None:
    assert 'id="model-registered"' in client.get("/jobs/abc123").get_data(as_text=True)
    script = client.get("/dashboard/static/job.js").get_data(as_text=True)
    assert "model.registered" in script and '"/registry/"' in script
