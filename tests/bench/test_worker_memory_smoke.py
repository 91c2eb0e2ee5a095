"""bench/worker_memory.py on a tiny generated source (20,000 rows, 2 epochs), so that the
benchmark cannot silently break: the training child, the RssAnon sampling from outside it, the
phase marks, the epoch timing and the JSON report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ROOT

ROWS = 20_000


@pytest.mark.timeout(120)
def test_worker_memory_benchmark_runs_on_a_tiny_source(tmp_path: Path) -> None:
    out = tmp_path / "memory.json"
    args = ["--rows", str(ROWS), "--epochs", "2", "--target-chunks", "--json", str(out)]
    proc = subprocess.run(
        [sys.executable, "bench/worker_memory.py", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=110,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]

    (report,) = json.loads(out.read_text())
    assert report["rows"] == ROWS and report["target_chunks"] is True
    # a training process's own memory: more than an idle interpreter's, far less than a GiB
    assert 20 < report["peak_mib"] < 1024
    assert report["s_per_epoch"] is not None and report["s_per_epoch"] > 0
    assert len(report["loss_history"]) == 2
    test = report["evaluation"]["test"]
    assert test["n"] == pytest.approx(ROWS * 0.1, abs=2) and 0.5 < test["roc_auc"] <= 1.0
    assert f"{ROWS:,} rows: peak RssAnon" in proc.stdout
