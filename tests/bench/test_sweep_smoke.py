"""bench/sweep.py on a tiny size (4 trials of 5 epochs), so that the benchmark cannot silently
break: its own distributed cluster (PostgreSQL, Redis, gunicorn, two workers), both sweeps, the
figures it reports."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.support import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]


@pytest.mark.timeout(180)
def test_sweep_benchmark_runs_on_a_tiny_size() -> None:
    proc = subprocess.run(
        [sys.executable, "bench/sweep.py", "--epochs", "5", "--trials", "4"],
        cwd=ROOT, capture_output=True, text=True, timeout=170,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert proc.stdout.count("4 trials succeeded") == 2, proc.stdout
    assert len(re.findall(r"ratio \d\.\d{3}", proc.stdout)) == 2
    assert len(re.findall(r"median \d+ ms, max \d+ ms over 2 hand-offs", proc.stdout)) == 2
