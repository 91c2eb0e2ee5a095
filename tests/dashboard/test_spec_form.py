"""The jobs page's form lists the spec's choices and starts at its defaults, both read from
GET /api/v1/spec/defaults (the dashboard copies neither)."""

from __future__ import annotations

import pytest
from playwright.sync_api import Browser, expect

from core import preprocessing, spec
from tests.support import LiveService

pytestmark = pytest.mark.slow


def test_the_form_reads_choices_and_defaults(browser: Browser, service: LiveService) -> None:
    context = browser.new_context()
    try:
        p = context.new_page()
        p.goto(f"{service.url}/#token={service.api_key or 'no-key-needed-yet'}")
        activation = p.locator("#job-activation option")
        expect(activation).to_have_count(len(spec.ACTIVATIONS))
        assert activation.evaluate_all("os => os.map(o => o.value)") == list(spec.ACTIVATIONS)
        assert p.input_value("#job-activation") == spec.MODEL_DEFAULTS["activation"]
        options = p.locator("#job-optimizer option").evaluate_all("os => os.map(o => o.value)")
        assert options == list(spec.OPTIMIZERS)
        losses = p.locator("#job-loss option").evaluate_all("os => os.map(o => o.value)")
        assert losses == ["", *spec.LOSSES] and p.input_value("#job-loss") == ""
        assert p.input_value("#job-dtype") == spec.TRAINING_DEFAULTS["dtype"]
        numeric = p.locator("#job-numeric option").evaluate_all("os => os.map(o => o.value)")
        assert numeric == list(preprocessing.CHOICES["numeric"])
        assert p.input_value("#job-numeric") == preprocessing.DEFAULTS["numeric"]
        assert p.input_value("#job-epochs") == str(spec.TRAINING_DEFAULTS["epochs"])
        assert p.input_value("#job-seed") == str(spec.TRAINING_DEFAULTS["seed"])
        assert p.input_value("#job-patience") == str(spec.EARLY_STOPPING_DEFAULTS["patience"])
    finally:
        context.close()
