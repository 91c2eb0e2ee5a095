"""bench/engine.py on a tiny size, so that the benchmark cannot silently break. torch is not a
test dependency: the run blocks its import, so it takes the engine-only path the script takes
wherever torch is missing (and must say so)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.support import ROOT

# Run bench/engine.py as __main__ with `import torch` failing, as where it is not installed.
RUNNER = """
import runpy, sys
sys.modules["torch"] = None
sys.argv = ["bench/engine.py", *sys.argv[1:]]
runpy.run_path("bench/engine.py", run_name="__main__")
"""


@pytest.mark.timeout(120)
def test_engine_benchmark_runs_on_a_tiny_size_without_torch() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", RUNNER, "--tiny"],
        cwd=ROOT, capture_output=True, text=True, timeout=110,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    out = proc.stdout
    assert "torch is not installed" in out and "measuring the engine only" in out
    rows = [line for line in out.splitlines() if line.startswith("(")]
    assert [r.split()[0] for r in rows] == ["(1)", "(2)", "(2)", "(3)", "(3)"]
    for row in rows:
        engine_ms = float(re.search(r"(float32|float64)\s+([\d.]+)", row).group(2))
        assert engine_ms > 0
        assert " - " in row  # no PyTorch time and no ratio, rather than NaN
    assert "nan" not in out.lower()
    memory = [line for line in out.splitlines() if line.startswith("memory")]
    assert len(memory) == 2 and all("0 objects left" in line for line in memory)
