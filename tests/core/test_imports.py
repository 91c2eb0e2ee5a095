"""The core knows no framework: importing it loads NumPy and engine only."""

from __future__ import annotations

import ast
import subprocess
import sys

from tests.support import ROOT

FRAMEWORKS = (
    "flask",
    "celery",
    "sqlalchemy",
    "kombu",
    "redis",
    "marshmallow",
    "pandas",
    "pyarrow",
)
#: the modules that may import more than NumPy and engine, and what
EXTRA_IMPORTS: dict[str, set[str]] = {}


def test_importing_core_loads_no_framework() -> None:
    code = (
        "import sys, core.metrics, core.model, core.preprocessing, core.spec, core.table, "
        "core.training, core.rows\n"
        f"print(sorted(m for m in {FRAMEWORKS!r} if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


def test_core_imports_only_numpy_engine_and_itself() -> None:
    allowed = {"numpy", "engine", "core", "__future__"}
    stdlib = set(sys.stdlib_module_names)
    for path in sorted((ROOT / "core").rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module.split(".")[0]]
            for name in names:
                extra = EXTRA_IMPORTS.get(path.name, set())
                assert name in allowed | extra or name in stdlib, f"{path.name} imports {name}"
