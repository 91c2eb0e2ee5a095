"""bench/large_io.py end to end on a small table (20,000 rows, embedded mode), so that the
benchmark cannot silently break: tuspy through the cutting proxy (cut every 1 MB, chunks of
0.25 MiB, so several times), the plain upload, the same dataset from both, a job, the batch
prediction job, its streamed download and the JSON report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ROOT

pytestmark = pytest.mark.slow

ROWS = 20_000


@pytest.mark.timeout(180)
def test_large_io_benchmark_runs_on_a_small_table(tmp_path: Path) -> None:
    out = tmp_path / "large_io.json"
    args = ["--rows", str(ROWS), "--cut-mb", "1", "--chunk-mb", "0.25", "--no-torch",
            "--json", str(out), "--folder", str(tmp_path / "data")]  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "bench/large_io.py", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=170,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]

    report = json.loads(out.read_text())
    csv_bytes = report["table"]["csv_bytes"]
    tus, plain = report["tus"], report["plain"]
    # the link was cut several times and tuspy still finished with the plain upload's dataset
    assert tus["cuts"] >= csv_bytes // 10**6 - 1 >= 2
    assert tus["forwarded_bytes"] >= csv_bytes
    assert tus["same_dataset"] and tus["rows"] == plain["rows"] == ROWS
    assert len(tus["checksum"]) == 64
    assert report["api_idle_mib"] > 20
    predict = report["predict"]
    assert predict["rows_per_s"] > 0 and predict["worker_peak_mib"] > 20
    download = report["download"]
    assert download["all_rows"] and download["rows"] == ROWS
    assert 0 < download["first_byte_s"] <= download["seconds"]
