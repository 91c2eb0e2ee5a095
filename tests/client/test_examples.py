"""The scripts in examples/ run against a live service and print what they learnt."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.support import ROOT, LiveService

pytestmark = pytest.mark.slow


def run_example(service: LiveService, name: str) -> str:
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / name)],
        cwd=ROOT, env=service.env(), capture_output=True, text=True, timeout=150,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_article_four_samples(service: LiveService) -> None:
    out = run_example(service, "article_four_samples.py")
    assert float(re.search(r"final loss ([\d.]+)", out).group(1)) < 0.05
    predictions = [float(v) for v in re.findall(r"prediction ([+-][\d.]+)", out)]
    assert len(predictions) == 4
    assert [p > 0 for p in predictions] == [True, False, False, True]


def test_moons(service: LiveService) -> None:
    out = run_example(service, "moons.py")
    assert float(re.search(r"accuracy ([\d.]+)", out).group(1)) >= 0.95
    assert "local logits" in out
    local, remote = re.search(
        r"local predictions .*: (\[.*\]) \(the service: (\[.*\])\)", out
    ).groups()
    assert local == remote == "['upper', 'lower']"


def test_spiral(service: LiveService) -> None:
    out = run_example(service, "spiral.py")
    assert float(re.search(r"accuracy ([\d.]+)", out).group(1)) >= 0.9
    assert len(re.findall(r"-> class [012]", out)) == 3
