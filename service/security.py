"""Security headers: every HTML and SVG answer gets `nosniff` and a restrictive CSP.

HTML pages (the dashboard) load scripts, styles and data from this origin only, with no inline
scripts or styles. SVG answers (the model graph) are sandboxed data: no scripts, no loads. The
Swagger UI page (flask-smorest's template) has one inline script; its CSP allows exactly that
script, by hash, computed from the page as served.
"""

from __future__ import annotations

import base64
import hashlib
import re
from typing import Any

from flask import Flask, Response, request
from flask.json.provider import DefaultJSONProvider

HTML_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
    "form-action 'self'"
)
SVG_CSP = "default-src 'none'; style-src 'unsafe-inline'; sandbox"
DOCS_PATH = "/api/v1/docs"

_INLINE_SCRIPT = re.compile(rb"<script>(.*?)</script>", re.DOTALL)


def docs_csp(page: bytes) -> str:
    """The HTML policy, plus the hashes of the page's own inline scripts (Swagger UI's start-up
    script) and inline styles (which Swagger UI sets as it renders)."""
    hashes = " ".join(
        "'sha256-" + base64.b64encode(hashlib.sha256(script).digest()).decode() + "'"
        for script in _INLINE_SCRIPT.findall(page)
    )
    return HTML_CSP.replace("script-src 'self'", f"script-src 'self' {hashes}").replace(
        "style-src 'self'", "style-src 'self' 'unsafe-inline'"
    )


def add_security_headers(response: Response) -> Response:
    """`after_request`: `nosniff` on every answer; a CSP and `Referrer-Policy: no-referrer` on
    HTML and SVG ones."""
    mimetype = response.mimetype or ""
    response.headers["X-Content-Type-Options"] = "nosniff"
    if mimetype in ("text/html", "image/svg+xml", "application/xhtml+xml"):
        # the dashboard's URLs carry ids (and once a #token= fragment): send them nowhere
        response.headers["Referrer-Policy"] = "no-referrer"
        if mimetype == "image/svg+xml":
            response.headers["Content-Security-Policy"] = SVG_CSP
        elif request.path.rstrip("/") == DOCS_PATH and not response.direct_passthrough:
            response.headers["Content-Security-Policy"] = docs_csp(response.get_data())
        else:
            response.headers["Content-Security-Policy"] = HTML_CSP
    return response


class HtmlSafeJSONProvider(DefaultJSONProvider):
    """JSON with `<`, `>` and `&` written as `\\u003c`, `\\u003e`, `\\u0026`: the same JSON to any
    parser, but user text in an answer can never read as markup, whatever reads it."""

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        text = super().dumps(obj, **kwargs)
        return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def init_app(app: Flask) -> None:
    app.json = HtmlSafeJSONProvider(app)
    app.after_request(add_security_headers)
