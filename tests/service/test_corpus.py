"""Every request of the malformed-request corpus gets its documented 4xx in the one error format,
nothing is stored or queued for any of them, and the service keeps serving afterwards."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from flask import Flask
from flask.testing import FlaskClient

from service.tables import Dataset, Job
from tests.service.corpus import check_error_body, load_cases, request_bytes
from tests.service.helpers import binary_dataset, count_rows, post_dataset
from tests.service.test_models import add_model

CASES = load_cases()


def test_corpus_covers_each_kind_of_bad_input() -> None:
    names = " ".join(c["name"] for c in CASES).lower()
    for kind in ("truncated", "deep", "utf-16", "latin-1", "garbage", "ragged", "empty",
                 "1e400", "5000 digits", "nul"):  # fmt: skip
        assert kind in names, kind
    assert len(CASES) >= 100
    assert all(400 <= c["status"] < 500 for c in CASES)


def documented(spec: dict[str, Any], app: Flask, method: str, path: str, status: int) -> bool:
    """Is `status` among the responses the OpenAPI document gives for this operation?"""
    adapter = app.url_map.bind("localhost")
    try:
        rule, _ = adapter.match(path.split("?")[0], method=method, return_rule=True)
    except Exception:
        return status in (404, 405)  # no such route or method: no operation to document it
    template = re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", rule.rule)
    return str(status) in spec["paths"][template][method.lower()]["responses"]


def test_corpus_gets_documented_4xx_and_changes_nothing(
    app: Flask, client: FlaskClient, queued_messages: Callable[[], int]
) -> None:
    ids = {"dataset_id": post_dataset(client)}
    ids["model_id"], _, _ = add_model(app, [3, 1], "binary_cross_entropy", [0, 1])
    before = (count_rows(app, Dataset), count_rows(app, Job), queued_messages())
    spec = client.get("/api/v1/openapi.json").get_json()
    failures, undocumented = [], []
    for case in CASES:
        req = request_bytes(case, ids)
        r = client.open(req.path, method=req.method, headers=req.headers, data=req.body)
        try:
            check_error_body(r.status_code, r.content_type or "", r.get_data(), req)
        except AssertionError as exc:
            failures.append(str(exc)[:400])
        if not documented(spec, app, req.method, req.path, r.status_code):
            undocumented.append((req.name, r.status_code))
    assert failures == []
    assert undocumented == []
    assert (count_rows(app, Dataset), count_rows(app, Job), queued_messages()) == before
    # still serving
    assert client.get("/healthz").status_code == 200
    assert client.post("/api/v1/datasets", json=binary_dataset()).status_code == 201
