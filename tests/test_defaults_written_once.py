"""Each default of a job's spec and each registry is written once, in `core/spec.py`
(preprocessing's in `core/preprocessing.py`): the service, the workers, the client, the rest
of the core and the dashboard read them (`core.spec`, `GET /api/v1/spec/defaults`) and write
none of their own."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from core import spec
from tests.support import ROOT

OWNERS = {ROOT / "core" / "spec.py", ROOT / "core" / "preprocessing.py"}
#: the default values that are names: written anywhere else, they are a second copy
DEFAULT_NAMES = {
    spec.MODEL_DEFAULTS["activation"],
    spec.DEFAULT_LR_SCHEDULE,
    spec.TRAINING_DEFAULTS["optimizer"],
    spec.TRAINING_DEFAULTS["dtype"],
    spec.LEGACY_MODEL_DTYPE,
}
#: every name a registry holds
REGISTRY_NAMES = {
    *spec.LOSSES,
    *spec.OPTIMIZERS,
    *spec.ACTIVATIONS,
    *spec.LR_SCHEDULES,
    *spec.DTYPES,
}
#: the spec's fields: `x.get(field, default)` or `x[field] or default` writes a default
SPEC_FIELDS = {
    *spec.MODEL_KEYS,
    *spec.TRAINING_KEYS,
    *spec.EARLY_STOPPING_DEFAULTS,
    *(k for params in spec.LR_SCHEDULE_DEFAULTS.values() for k in params),
    "type",
}


def python_files() -> list[Path]:
    files = [
        p for pkg in ("service", "workers", "client", "core") for p in (ROOT / pkg).rglob("*.py")
    ]
    return sorted(p for p in files if p not in OWNERS)


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (
            isinstance(body, list)
            and body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)
        ):
            ids.add(id(body[0].value))
    return ids


def _field_of(node: ast.AST) -> str | None:
    """The spec field `node` reads: `x.get("field", ...)` or `x["field"]`."""
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "get"
        and node.args
        and isinstance(node.args[0], ast.Constant)
    ):
        return node.args[0].value if node.args[0].value in SPEC_FIELDS else None
    if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant):
        return node.slice.value if node.slice.value in SPEC_FIELDS else None
    return None


def default_literals(path: Path) -> list[str]:
    """Where `path` writes a spec default of its own."""
    tree = ast.parse(path.read_text(), filename=str(path))
    docstrings = _docstrings(tree)
    found = []
    for node in ast.walk(tree):
        where = f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Constant) and id(node) not in docstrings:
            if node.value in DEFAULT_NAMES:
                found.append(f"{where} the default {node.value!r}")
        elif isinstance(node, ast.arguments):
            for default in [*node.defaults, *node.kw_defaults]:
                if isinstance(default, ast.Constant) and default.value in REGISTRY_NAMES:
                    found.append(f"{where} a parameter defaulting to {default.value!r}")
        elif isinstance(node, ast.keyword) and node.arg in ("default", "load_default"):
            if isinstance(node.value, ast.Constant) and node.value.value in REGISTRY_NAMES:
                found.append(f"{where} {node.arg}={node.value.value!r}")
        elif isinstance(node, ast.Call) and (field := _field_of(node)) is not None:
            default = node.args[1] if len(node.args) > 1 else None
            if isinstance(default, ast.Constant) and default.value is not None:
                found.append(f"{where} .get({field!r}, {default.value!r})")
        elif isinstance(node, ast.BoolOp) and isinstance(node.op, ast.Or):
            left, right = node.values[0], node.values[-1]
            field = _field_of(left)
            written = isinstance(right, ast.Dict) or (
                isinstance(right, ast.Constant)
                and right.value is not None
                and (not isinstance(right.value, str) or right.value in REGISTRY_NAMES)
            )
            if field is not None and written:
                found.append(f"{where} {field!r} or {ast.unparse(right)}")
    return found


def test_no_spec_default_is_written_outside_core_spec() -> None:
    found = [hit for path in python_files() for hit in default_literals(path)]
    assert found == []


@pytest.mark.parametrize(
    "source",
    [
        'def f(activation="tanh"): ...',
        'x = fields.String(load_default="constant")',
        'dtype = spec.get("dtype") or "float64"',
        'split = float(training.get("validation_split", 0.1))',
        'es = t["early_stopping"] or {"patience": 10}',
    ],
)
def test_the_check_finds_a_default(source: str, tmp_path: Path) -> None:
    path = ROOT / "service" / "_probe_default.py"
    try:
        path.write_text(source + "\n")
        assert default_literals(path)
    finally:
        path.unlink()


DASHBOARD = ROOT / "service" / "dashboard"


def test_the_dashboard_copies_no_choice_and_no_default() -> None:
    """Its selects are filled from GET /spec/defaults; its scripts name no default."""
    names = "|".join(sorted(REGISTRY_NAMES))
    for path in sorted((DASHBOARD / "templates").rglob("*.html")):
        text = path.read_text()
        assert not re.search(rf"<option[^>]*>\s*({names})\s*</option>", text), path
        assert not re.search(rf'<option[^>]*value="({names})"', text), path
    defaults = "|".join(sorted(DEFAULT_NAMES))
    for path in sorted((DASHBOARD / "static").glob("*.js")):
        text = path.read_text()
        assert not re.search(rf"[\"']({defaults})[\"']", text), path
        assert f"{spec.EARLY_STOPPING_SPLIT} for early stopping" not in text, path
