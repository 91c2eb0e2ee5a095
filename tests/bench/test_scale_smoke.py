"""bench/scale.py end to end on a tiny table (3,000 rows, embedded mode, 2 epochs), so that the
benchmark cannot silently break: the generated CSV, the upload through the API, the memory
sampling, the job and its epoch timing, the JSON report and its table. PyTorch and LightGBM are
compared when installed; without them their columns are skipped with a note, and our own figures
are checked either way."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ROOT

pytestmark = pytest.mark.slow

ROWS = 3000


@pytest.mark.timeout(150)
def test_scale_benchmark_runs_on_a_tiny_table(tmp_path: Path) -> None:
    out = tmp_path / "scale.json"
    args = ["--quick", "--rows", str(ROWS), "--epochs", "2", "--json", str(out),
            "--folder", str(tmp_path / "data"), "--logs", str(tmp_path / "logs")]  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "bench/scale.py", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=140,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]

    report = json.loads(out.read_text())
    assert report["modes"] == ["embedded"] and report["epochs"] == 2
    (table,) = report["tables"]
    assert table["rows"] == ROWS and table["csv_bytes"] > ROWS * 100
    assert 0.2 < table["positive_rate"] < 0.8

    (row,) = report["results"]
    assert row["mode"] == "embedded" and row["rows"] == ROWS
    assert row["csv_mb"] == pytest.approx(table["csv_bytes"] / 1e6)
    assert row["ingest_s"] > 0 and row["ingest_mb_s"] > 0
    # RssAnon of real processes: gunicorn's and celery's trees are tens of MiB at least
    assert row["api_idle_mib"] > 20 and row["api_peak_mib"] >= row["api_above_idle_mib"]
    assert row["worker_idle_mib"] > 20 and row["worker_peak_mib"] > 20
    phases = row["worker_peak_by_phase_mib"]
    assert set(phases) == {"prepare", "epochs", "after"}
    assert max(v for v in phases.values() if v is not None) <= row["worker_peak_mib"]
    assert row["s_per_epoch_per_m"] > 0 and row["epoch_basis"]
    assert row["train_rows"] + row["n_test"] == ROWS and row["n_test"] == ROWS // 10
    # the table is learnable: the job scores well above chance on its test rows
    assert 0.6 < row["auc"] <= 1 and 0 < row["accuracy"] <= 1
    assert row["warnings"] == []

    has_torch = importlib.util.find_spec("torch") is not None
    has_lightgbm = importlib.util.find_spec("lightgbm") is not None
    if has_torch:
        assert row["torch_s_per_epoch_per_m"] > 0 and 0.5 < row["torch_auc"] <= 1
        assert row["epoch_ratio"] == pytest.approx(
            row["s_per_epoch_per_m"] / row["torch_s_per_epoch_per_m"]
        )
        assert report["torch"]["n_test"] == row["n_test"]  # the same split
    else:
        assert any("PyTorch columns skipped" in note for note in report["notes"])
    if has_lightgbm:
        assert row["lightgbm_fit_s"] > 0 and 0.5 < row["lightgbm_auc"] <= 1
        assert report["lightgbm"]["n_test"] == row["n_test"]
    else:
        assert any("LightGBM columns skipped" in note for note in report["notes"])

    goals = report["goals"]["embedded"]
    assert {"api_above_idle_mib <= 300", "worker_peak_mib <= 1536", "ingest_mb_s >= 100",
            "epoch_ratio <= 1.2"} <= set(goals)  # fmt: skip
    assert "| mode | rows | CSV MB | ingest MB/s |" in proc.stdout
    assert "| embedded | 3,000 |" in proc.stdout and "issue 21's goals" in proc.stdout
    # nothing left behind: the temporary folder is gone
    assert list((tmp_path / "data").iterdir()) == []
