"""pyproject.toml against the lock and the code: every pin of requirements*.txt is declared with a
range that admits it (and nothing is declared that the lock does not pin), the base install is
the client alone (no server framework), the code's third-party imports are covered by what its
install declares, and the wheel holds the dashboard's files, built without setuptools' warnings.
"""

from __future__ import annotations

import ast
import importlib.metadata as md
import shutil
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import Iterable
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.support import ROOT

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]
FIRST_PARTY = {"engine", "core", "service", "workers", "client", "migrations"}
SERVER_ONLY = {"flask", "flask-smorest", "celery", "sqlalchemy", "alembic", "pandas", "gunicorn"}


def lock(path: Path) -> list[Requirement]:
    """The requirements pinned in `path` itself (`-r` includes are not followed)."""
    reqs = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            reqs.append(Requirement(line))
    return reqs


def declared(*groups: str) -> list[Requirement]:
    """The requirements of the base install ("") and of the named extras, without the
    project's own extras (`trainyard[server]` in dev)."""
    reqs = []
    for group in groups:
        lines = PROJECT["dependencies"] if group == "" else PROJECT["optional-dependencies"][group]
        reqs += [Requirement(line) for line in lines]
    return [r for r in reqs if canonicalize_name(r.name) != PROJECT["name"]]


def by_name(reqs: Iterable[Requirement]) -> dict[str, Requirement]:
    return {canonicalize_name(r.name): r for r in reqs}


RUNTIME_LOCK = lock(ROOT / "requirements.txt")
DEV_LOCK = lock(ROOT / "requirements-dev.txt")


@pytest.mark.parametrize(
    ("pins", "groups"),
    [(RUNTIME_LOCK, ("", "server")), (DEV_LOCK, ("dev",))],
    ids=["requirements.txt", "requirements-dev.txt"],
)
def test_every_pin_is_declared_with_a_range_that_admits_it(
    pins: list[Requirement], groups: tuple[str, ...]
) -> None:
    ranges = by_name(declared(*groups))
    for pin in pins:
        (spec,) = pin.specifier
        assert spec.operator == "==", f"{pin} is not an exact pin"
        name = canonicalize_name(pin.name)
        assert name in ranges, f"{pin} is pinned but not declared in pyproject {groups}"
        assert ranges[name].extras == pin.extras, (pin, ranges[name])
        assert ranges[name].specifier.contains(spec.version), (
            f"pyproject's {ranges[name]} does not admit the pinned {pin}"
        )
    # and nothing is declared that the lock does not pin (it would go untested)
    assert set(ranges) <= {canonicalize_name(p.name) for p in pins}


def test_client_install_is_the_base_and_has_no_server_framework() -> None:
    base = by_name(declared(""))
    assert base == by_name(declared("client"))
    assert set(base) & SERVER_ONLY == set()
    assert set(by_name(declared("server"))) >= SERVER_ONLY


def installed_closure(reqs: Iterable[Requirement]) -> set[str]:
    """The distributions that installing `reqs` brings (read from the installed metadata)."""
    seen: set[str] = set()
    todo = [(r, "") for r in reqs]
    while todo:
        req, extra = todo.pop()
        if req.marker is not None and not req.marker.evaluate({"extra": extra}):
            continue
        name = canonicalize_name(req.name)
        extras = set(req.extras)
        if name in seen and not extras:
            continue
        seen.add(name)
        for line in md.requires(name) or []:
            sub = Requirement(line)
            for wanted in ("", *extras):
                todo.append((sub, wanted))
    return seen


def third_party_imports(packages: Iterable[str]) -> set[str]:
    names: set[str] = set()
    for package in packages:
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
                if isinstance(node, ast.Import):
                    names.update(alias.name.split(".")[0] for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    names.add(node.module.split(".")[0])
    local = FIRST_PARTY | {"tests", "bench", "__future__"}
    return names - local - set(sys.stdlib_module_names)


@pytest.mark.parametrize(
    ("packages", "groups"),
    [
        (("engine", "core", "client"), ("",)),
        (("service", "workers", "migrations"), ("", "server")),
        (("tests",), ("", "server", "dev")),
    ],
    ids=["client", "server", "tests"],
)
def test_imports_are_covered_by_the_declared_install(
    packages: tuple[str, ...], groups: tuple[str, ...]
) -> None:
    closure = installed_closure(declared(*groups))
    distributions = md.packages_distributions()
    missing = {
        module: distributions.get(module)
        for module in third_party_imports(packages)
        if not {canonicalize_name(d) for d in distributions.get(module, [])} & closure
    }
    assert missing == {}, f"imported by {packages} but not installed by {groups}"


def test_wheel_holds_the_dashboard_files_and_builds_without_warnings(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(ROOT / "pyproject.toml", src)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for package in sorted(FIRST_PARTY):
        shutil.copytree(ROOT / package, src / package, ignore=ignore)
    out = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "--no-build-isolation",
         "-w", str(tmp_path / "dist"), str(src)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    log = out.stdout + out.stderr
    assert "would be ignored" not in log and "absent from the `packages`" not in log, log

    (wheel,) = (tmp_path / "dist").glob("trainyard-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    dashboard = ROOT / "service" / "dashboard"
    files = [
        p.relative_to(ROOT).as_posix()
        for folder in ("static", "templates")
        for p in (dashboard / folder).rglob("*")
        if p.is_file()
    ]
    assert any(f.endswith(".js") for f in files) and any(f.endswith(".html") for f in files)
    assert set(files) <= names, sorted(set(files) - names)
    assert {name.split("/")[0] for name in names if "/" in name} == {
        *FIRST_PARTY,
        wheel.name.removesuffix("-py3-none-any.whl") + ".dist-info",
    }
    assert not any("__pycache__" in name for name in names)
    entry_points = zipfile.ZipFile(wheel).read(
        wheel.name.removesuffix("-py3-none-any.whl") + ".dist-info/entry_points.txt"
    )
    assert b"trainyard = client.cli:main" in entry_points
    assert b"trainyard-server = workers.server_command:main" in entry_points
    # the migrations travel with the service (`service.migrate` runs them from site-packages)
    revisions = {p.name for p in (ROOT / "migrations" / "versions").glob("*.py")}
    assert revisions and {
        "migrations/env.py", "migrations/script.py.mako",
        *(f"migrations/versions/{name}" for name in revisions),
    } <= names  # fmt: skip


def test_trainyard_server_on_a_client_install_says_what_to_install() -> None:
    """The command exists in every install; without `[server]` (here: SQLAlchemy made
    unimportable) it names the extra, exit code 2, no traceback."""
    code = (
        "import sys; sys.modules['sqlalchemy'] = None\n"
        "from workers.server_command import main; sys.exit(main([]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert out.returncode == 2, out
    assert 'pip install "trainyard[server]"' in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize(
    ("module", "usage"),
    [("workers.server_command", "trainyard-server"), ("workers.embedded", "python -m")],
)
def test_the_embedded_modes_help_starts_nothing(module: str, usage: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", module, "--help"],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert out.returncode == 0 and f"usage: {usage}" in out.stdout, out
    assert "TRAINYARD_VAR_DIR" in out.stdout and "starting" not in out.stdout + out.stderr
