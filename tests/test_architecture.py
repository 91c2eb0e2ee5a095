"""Dependencies point one way (engine <- service <- workers; the client talks HTTP only),
and no application code creates tables."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import ROOT

FORBIDDEN = {
    "engine": {"service", "workers", "flask", "celery", "sqlalchemy"},
    "service": {"workers", "client"},
    "client": {"service", "workers", "flask", "celery", "sqlalchemy"},
}


def imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
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
