"""Schemathesis against the OpenAPI document: generated requests for every operation (a bounded
number of examples each, valid and invalid), with a valid API key. No answer is a 5xx, and every
answer conforms to the document (status documented, body matches its schema, headers).

One check is left out: `positive_data_acceptance` (a schema-valid request must not get 4xx).
The document cannot say everything the API validates (rows of equal length, one target per
row, a last layer that fits the targets, the limits); those answers are documented 422s.
"""

from __future__ import annotations

import time

import pytest
import schemathesis
from flask import Flask
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from tests.service.helpers import post_dataset

# a tus PATCH body is bytes, as schemathesis sends `application/octet-stream`
schemathesis.serializer.alias("application/offset+octet-stream", "application/octet-stream")

EXAMPLES = {GenerationMode.POSITIVE: 6, GenerationMode.NEGATIVE: 4}
EXCLUDED = [positive_data_acceptance]
REJECTED = ["400", "401", "403", "404", "405", "406", "409", "412", "413", "415", "422", "428",
            "429", "460"]  # fmt: skip


@pytest.mark.parametrize("mode", list(EXAMPLES), ids=lambda m: m.value)
def test_openapi_document_holds_for_generated_requests(
    app: Flask, client: object, api_key: str, mode: GenerationMode
) -> None:
    post_dataset(client)  # type: ignore[arg-type]  # something to list
    config = schemathesis.Config.from_dict(
        {
            "auth": {"openapi": {"bearerAuth": {"bearer": api_key}}},
            # a tus request without `Tus-Resumable: 1.0.0` is a 412, as the protocol says
            "checks": {"negative_data_rejection": {"expected-statuses": REJECTED}},
        }
    )
    schema = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", app, config=config)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 12
    started = time.monotonic()
    tested = set()
    statuses: list[int] = []
    for operation in operations:

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=EXAMPLES[mode],
            deadline=None,
            database=None,
            derandomize=True,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        def check(case: schemathesis.Case) -> None:
            statuses.append(case.call_and_validate(excluded_checks=EXCLUDED).status_code)

        try:
            check()
        except Unsatisfiable:
            # nothing to make invalid (e.g. a path with one free string: every value is valid)
            assert mode == GenerationMode.NEGATIVE, operation.label
            continue
        tested.add(operation.label)
    assert len(statuses) >= 30 and all(s < 500 for s in statuses)
    assert any(400 <= s < 500 for s in statuses)
    if mode == GenerationMode.POSITIVE:
        assert any(200 <= s < 300 for s in statuses)
    assert {"POST /api/v1/jobs", "POST /api/v1/datasets", "GET /api/v1/jobs"} <= tested
    assert time.monotonic() - started < 60
