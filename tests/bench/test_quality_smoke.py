"""bench/quality.py end to end on a tiny size, so that the benchmark cannot silently break: its
own embedded-mode service, a CSV upload, a job, predict on a CSV, scikit-learn on the same split,
the table and the JSON report. Only scikit-learn's datasets, so it needs no bench-only package."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ROOT

pytestmark = pytest.mark.slow


@pytest.mark.timeout(120)
def test_quality_benchmark_runs_on_a_tiny_size(tmp_path: Path) -> None:
    out = tmp_path / "quality.json"
    args = ["--datasets", "iris,diabetes", "--seeds", "1", "--epochs", "5", "--json", str(out),
            "--folder", str(tmp_path / "service")]  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "bench/quality.py", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=110,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]

    report = json.loads(out.read_text())
    assert report["seeds"] == [0] and report["epochs"] == 5 and report["skipped"] == []
    rows = {row["dataset"]: row for row in report["datasets"]}
    assert set(rows) == {"iris", "diabetes"}
    iris, diabetes = rows["iris"], rows["diabetes"]
    assert (iris["task"], iris["rows"], iris["n_test"]) == ("classification", 150, 38)
    assert diabetes["task"] == "regression"
    # 5 epochs (5 steps at batch 200) train little: check the scores are accuracies on the 38
    # test rows, and R² at most 1
    for side in ("ours", "sklearn"):
        assert 0 <= iris[side] <= 1
        assert iris[side] * 38 == pytest.approx(round(iris[side] * 38))
    assert -100 < diabetes["ours"] <= 1 and -100 < diabetes["sklearn"] <= 1
    for row in rows.values():
        assert row["difference"] == pytest.approx(row["ours"] - row["sklearn"])
        (run,) = row["ours_runs"]
        assert run["stopped_epoch"] <= 5 and run["stop_reason"] in ("completed", "early_stopping")
    assert {"mean_difference", "worst_difference", "target_holds"} <= set(report["summary"])

    # the console table and the Markdown table for the README
    assert "| dataset | rows | task |" in proc.stdout and "| iris | 150 |" in proc.stdout
    assert "mean difference" in proc.stdout
