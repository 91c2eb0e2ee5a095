"""Dependencies point one way (engine <- service <- workers; the client talks HTTP only),
every change of a job's state lives in `service/lifecycle.py` (and, for a sweep's trials, in
`service/sweeps.py`, which alone writes sweeps), and no application code creates tables."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.support import ROOT

FORBIDDEN = {
    "engine": {"service", "workers", "flask", "celery", "sqlalchemy"},
    "service": {"workers", "client"},
    "client": {"service", "workers", "flask", "celery", "sqlalchemy"},
}


def imported_packages(path: Path, runtime_only: bool = False) -> set[str]:
    """Top-level packages that `path` imports (`runtime_only`: not counting imports under
    `if TYPE_CHECKING:`, which exist for type hints only)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    if runtime_only:
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and ast.unparse(node.test) in (
                "TYPE_CHECKING",
                "typing.TYPE_CHECKING",
            ):
                node.body = []
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_point_one_way(package: str) -> None:
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"no Python files under {package}/"
    offenders = {
        str(path.relative_to(ROOT)): sorted(imported_packages(path) & FORBIDDEN[package])
        for path in files
        if imported_packages(path) & FORBIDDEN[package]
    }
    assert offenders == {}


def test_no_create_all_in_application_code() -> None:
    for package in ("service", "workers"):
        for path in (ROOT / package).rglob("*.py"):
            assert "create_all(" not in path.read_text(), path


def test_lifecycle_knows_no_framework_and_no_worker() -> None:
    """The job lifecycle takes the Celery app as an argument (its type under TYPE_CHECKING
    only) and its settings from `service.config`: it imports no web or task framework and
    nothing from `workers` (which would close a circle: the workers call it)."""
    path = ROOT / "service" / "lifecycle.py"
    assert imported_packages(path, runtime_only=True) & {"workers", "flask", "celery"} == set()
    tree = ast.parse(path.read_text())
    local = {
        node.module
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("service")
    }
    assert local <= {"service.config", "service.db", "service.tables"}, local


def job_writes(path: Path) -> list[str]:
    """`update(...)`, `insert(...)` and `delete(...)` calls on `Job` or `JobEpoch` in `path`."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if not isinstance(node, ast.Call) or not node.args:
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        target = node.args[0]
        if (
            name in ("update", "insert", "delete")
            and isinstance(target, ast.Name)
            and target.id in ("Job", "JobEpoch")
        ):
            found.append(f"{path.relative_to(ROOT)}:{node.lineno} {ast.unparse(node)}")
    return found


#: the modules that may write jobs: the job's lifecycle, and the sweep's (its trials)
JOB_WRITERS = {Path("service/lifecycle.py"), Path("service/sweeps.py")}


def test_job_writes_live_in_the_lifecycle_module() -> None:
    """The task, the maintenance loop and the API hold no UPDATE of a job of their own."""
    files = [*sorted((ROOT / "workers").rglob("*.py")), *sorted((ROOT / "service").rglob("*.py"))]
    offenders = [
        write
        for path in files
        if path.relative_to(ROOT) not in JOB_WRITERS
        for write in job_writes(path)
    ]
    assert offenders == []
    for name in ("tasks.py", "maintenance.py"):
        text = (ROOT / "workers" / name).read_text()
        assert "update(Job)" not in text, name
    assert job_writes(ROOT / "service" / "lifecycle.py")  # the check finds what it looks for


def writes_of(path: Path, models: tuple[str, ...]) -> dict[str, list[str]]:
    """Function name -> the `update/insert/delete(<model>)` calls in it, for `models`."""
    found: dict[str, list[str]] = {}
    for fn in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if not isinstance(fn, ast.FunctionDef):
            continue
        for node in ast.walk(fn):
            if (
                isinstance(node, ast.Call)
                and node.args
                and isinstance(node.args[0], ast.Name)
                and node.args[0].id in models
                and (node.func.attr if isinstance(node.func, ast.Attribute) else "")
                in ("update", "insert", "delete")
            ):
                found.setdefault(fn.name, []).append(ast.unparse(node))
    return found


def test_sweep_writes_live_in_the_sweeps_module_and_its_table() -> None:
    """Only `service/sweeps.py` writes the `sweeps` table, and it writes jobs only in the
    functions its docstring's table lists (the trials' transitions)."""
    files = [*sorted((ROOT / "workers").rglob("*.py")), *sorted((ROOT / "service").rglob("*.py"))]
    for path in files:
        if path.relative_to(ROOT) != Path("service/sweeps.py"):
            assert writes_of(path, ("Sweep",)) == {}, path
    sweeps = ROOT / "service" / "sweeps.py"
    doc = ast.get_docstring(ast.parse(sweeps.read_text())) or ""
    listed = {line.split("`")[1] for line in doc.splitlines() if line.startswith("`")}
    writers = set(writes_of(sweeps, ("Job", "Sweep")))
    assert writers and writers <= listed, writers - listed
    assert imported_packages(sweeps, runtime_only=True) & {"workers", "flask", "celery"} == set()


def test_shared_helpers_come_from_tests_support_never_a_conftest() -> None:
    """conftest files hold fixtures only; what tests and benchmarks share is `tests.support`."""
    offenders = []
    for folder in ("tests", "bench"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            tree = ast.parse(path.read_text(), filename=str(path))
            for node in ast.walk(tree):
                if (
                    isinstance(node, ast.ImportFrom)
                    and node.module
                    and (node.module.endswith("conftest") or node.module == "tests.client.live")
                ):
                    offenders.append(f"{path.relative_to(ROOT)}: from {node.module}")
    assert offenders == []


def schema_dumps(path: Path) -> list[str]:
    """Calls of a marshmallow schema's `dump` in `path` (`XSchema().dump(...)`, `schema.dump`)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            receiver = ast.unparse(node.func.value)
            if node.func.attr == "dump" and "schema" in receiver.lower():
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_one_rule_for_the_json_of_a_response() -> None:
    """Domain functions build a response's JSON; schemas document it and never dump it again
    (`service.api.Blueprint.response`)."""
    files = [
        p for package in ("service", "workers") for p in sorted((ROOT / package).rglob("*.py"))
    ]
    assert [hit for path in files for hit in schema_dumps(path)] == []
