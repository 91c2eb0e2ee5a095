"""The sweeps, sweep and compare pages' HTML shells: as every page, served without a key under
the strict Content-Security-Policy, written for it, the id escaped into an attribute."""

from __future__ import annotations

import pytest
from flask.testing import FlaskClient

from tests.dashboard.test_pages import client  # noqa: F401 (a fixture)
from tests.dashboard.test_pages import test_pages_are_a_static_shell_under_a_strict_csp as shell


@pytest.mark.parametrize("path", ["/sweeps", "/sweeps/abc123", "/compare?jobs=a,b"])
def test_sweep_pages_are_a_static_shell(client: FlaskClient, path: str) -> None:  # noqa: F811
    shell(client, path)


def test_the_sweep_id_is_escaped(client: FlaskClient) -> None:  # noqa: F811
    html = client.get('/sweeps/"><img src=x>').get_data(as_text=True)
    assert "<img src=x>" not in html and "&#34;&gt;&lt;img" in html


def test_every_page_links_the_sweeps_page(client: FlaskClient) -> None:  # noqa: F811
    for path in ("/", "/jobs/abc123", "/datasets", "/sweeps", "/sweeps/x", "/compare"):
        assert 'href="/sweeps"' in client.get(path).get_data(as_text=True), path
