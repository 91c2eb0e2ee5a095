"""Dependencies point one way (engine <- service <- workers; the client talks HTTP only),
every change of a job's state lives in `service/lifecycle.py` (a sweep's trials too;
`service/sweeps.py` alone writes sweeps), and no application code creates tables."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from service.tables import Job, JobEpoch
from tests.support import ROOT, base_env

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
    nothing from `workers` (which would close a circle: the workers call it). Of the service
    it reads the store and records the outbox's deliveries (in the ending transaction), and
    registers a job's model under its `register_as` (the registry, in the same transaction)."""
    path = ROOT / "service" / "lifecycle.py"
    assert imported_packages(path, runtime_only=True) & {"workers", "flask", "celery"} == set()
    tree = ast.parse(path.read_text())
    local = {
        node.module
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("service")
    }
    allowed = {"service.config", "service.db", "service.tables", "service.outbox"}
    assert local <= allowed | {"service.registry"}, local


#: Job's columns, and the models whose rows are a job's state
JOB_MODELS = ("Job", "JobEpoch")
JOB_COLUMNS = frozenset(Job.__table__.columns.keys()) | frozenset(JobEpoch.__table__.columns.keys())


def job_writes(path: Path) -> list[str]:
    """The writes of a job's state in `path`: `update(...)`, `insert(...)` and `delete(...)` on
    `Job` or `JobEpoch`; a new `Job(...)` or `JobEpoch(...)`; and, in a module that imports
    `Job`, an assignment to a job column's attribute of an ORM object (`job.status = ...`,
    `setattr(job, "status", ...)`; not `self.status`)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    knows_job = any(
        isinstance(node, ast.ImportFrom) and any(a.name in JOB_MODELS for a in node.names)
        for node in ast.walk(tree)
    )
    found = []

    shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path

    def hit(node: ast.stmt | ast.expr) -> None:
        found.append(f"{shown}:{node.lineno} {ast.unparse(node)}")

    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            args = node.args
            statement = name in ("update", "insert", "delete") and bool(args)
            if (
                (statement and isinstance(args[0], ast.Name) and args[0].id in JOB_MODELS)
                or (isinstance(func, ast.Name) and func.id in JOB_MODELS)  # a new row
                or (
                    knows_job
                    and name == "setattr"
                    and len(args) == 3
                    and isinstance(args[1], ast.Constant)
                    and args[1].value in JOB_COLUMNS
                )
            ):
                hit(node)
        elif knows_job and isinstance(node, ast.Assign | ast.AugAssign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            flat = [e for t in targets for e in (t.elts if isinstance(t, ast.Tuple) else [t])]
            if any(
                isinstance(t, ast.Attribute)
                and t.attr in JOB_COLUMNS
                and not (isinstance(t.value, ast.Name) and t.value.id in ("self", "cls"))
                for t in flat
            ):
                hit(node)
    return found


#: The modules that may write a job's state (its row, its attempts, its results, its epochs):
#: the job's lifecycle alone. A sweep's trials are written through it too
#: (`lifecycle.submit`, `start_trials`, `send_trials`, `cancel_trials`).
JOB_WRITERS = {Path("service/lifecycle.py")}


def test_job_writes_live_in_the_lifecycle_module() -> None:
    """The task, the maintenance loop, the sweeps and the API hold no write of a job of their
    own; the only modules that do are those `JOB_WRITERS` lists."""
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
    writers = {p.relative_to(ROOT) for p in files if job_writes(p)}
    assert writers == JOB_WRITERS  # the check finds what it looks for, where it is


def test_the_job_writes_check_sees_every_kind_of_write(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "from service.tables import Job, JobEpoch\n"
        "def f(self, session, job, sa):\n"
        "    session.execute(sa.update(Job).values(status='failed'))\n"
        "    session.add(JobEpoch(job_id='x', epoch=1, loss=0.0))\n"
        "    job.status = 'failed'\n"
        "    job.attempts += 1\n"
        "    setattr(job, 'error', 'x')\n"
        "    self.status = 'fine'\n"
        "    job.unrelated = 1\n"
    )
    found = {line.split(" ", 1)[1] for line in job_writes(sample)}
    assert found == {
        "sa.update(Job)",
        "JobEpoch(job_id='x', epoch=1, loss=0.0)",
        "job.status = 'failed'",
        "job.attempts += 1",
        "setattr(job, 'error', 'x')",
    }


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
    """Only `service/sweeps.py` writes the `sweeps` table, only in the functions its
    docstring's table lists; its trials' rows it writes through `service.lifecycle`."""
    files = [*sorted((ROOT / "workers").rglob("*.py")), *sorted((ROOT / "service").rglob("*.py"))]
    for path in files:
        if path.relative_to(ROOT) != Path("service/sweeps.py"):
            assert writes_of(path, ("Sweep",)) == {}, path
    sweeps = ROOT / "service" / "sweeps.py"
    doc = ast.get_docstring(ast.parse(sweeps.read_text())) or ""
    listed = {line.split("`")[1] for line in doc.splitlines() if line.startswith("`")}
    writers = set(writes_of(sweeps, ("Job", "Sweep")))
    assert writers and writers <= listed, writers - listed
    assert writes_of(sweeps, ("Job", "JobEpoch")) == {}
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


#: what records or publishes an event: `service/outbox.py` holds them all; the one exception is
#: a delivery's retry (`webhook_delivery`), a new attempt of an event already recorded
EVENT_CALLS = {
    "enqueue_for_job",
    "enqueue_for_sweep",
    "enqueue_for_alias_move",
    "insert_delivery",
    "scan",
    "publish",
}
EVENT_INTERNALS = {"webhooks", "webhook_delivery", "webhook_models", "events", "sweep_events"}
OUTBOX = Path("service/outbox.py")


def event_publishing(path: Path) -> list[str]:
    """Where `path` records or publishes an event other than through `outbox.<function>`: a
    definition of an outbox function, a call of one of the webhook or event modules, a direct
    import of one, an INSERT of a delivery, a `send_task` of the delivery task."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        hit = None
        if isinstance(node, ast.FunctionDef) and node.name in EVENT_CALLS - {"publish", "scan"}:
            hit = f"def {node.name}"
        elif isinstance(node, ast.Call) and ast.unparse(node).endswith("insert(WebhookDelivery)"):
            hit = ast.unparse(node)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("service."):
            names = {alias.name for alias in node.names} & EVENT_CALLS
            if names and node.module != "service.outbox":
                hit = f"from {node.module} import {sorted(names)}"
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            receiver, attr = ast.unparse(node.func.value), node.func.attr
            first = ast.unparse(node.args[0]) if node.args else ""
            if (attr in EVENT_CALLS and receiver in EVENT_INTERNALS) or (
                attr == "send_task" and "DELIVER_TASK" in first
            ):
                hit = ast.unparse(node)
        elif isinstance(node, ast.Call) and ast.unparse(node.func) == "insert_delivery":
            hit = ast.unparse(node)
        if hit is not None:
            found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {hit}")
    return found


def test_every_event_is_published_from_the_outbox() -> None:
    """Webhook deliveries are recorded and their messages sent by `service/outbox.py` only;
    every other module calls it (`outbox.enqueue_for_job`, `outbox.publish`, `outbox.scan`),
    never the webhook or event modules' internals."""
    files = [
        p for package in ("service", "workers") for p in sorted((ROOT / package).rglob("*.py"))
    ]
    allowed = {
        # the one INSERT of a delivery, and its one other caller: a retry's next attempt
        Path("service/webhooks.py"): {"def insert_delivery", "insert(WebhookDelivery)"},
        Path("service/webhook_delivery.py"): {"insert_delivery"},
    }
    offenders = [
        hit
        for path in files
        if path.relative_to(ROOT) != OUTBOX
        for hit in event_publishing(path)
        if not any(ok in hit for ok in allowed.get(path.relative_to(ROOT), ()))
    ]
    assert offenders == []
    found = " ".join(event_publishing(ROOT / OUTBOX))
    for expected in ("def enqueue_for_job", "send_task(DELIVER_TASK", "insert_delivery("):
        assert expected in found  # the check finds what it looks for


# -- the module graph: no cycles, no upward imports, no Flask under the domain ----------------

GRAPHED = ("engine", "core", "service", "workers", "client")


def our_modules() -> dict[str, Path]:
    """Dotted name -> file, for every module of the packages in `GRAPHED`."""
    modules = {}
    for package in GRAPHED:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def import_graph() -> dict[str, set[str]]:
    """Module -> the modules of ours it imports, at the top or inside a function (not under
    `if TYPE_CHECKING:`). `from package import name` is an edge to `package.name` when that is
    a module, else to `package`; a package a module lives in is no edge of its own."""
    modules = our_modules()

    def ours(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and ast.unparse(node.test) in (
                "TYPE_CHECKING",
                "typing.TYPE_CHECKING",
            ):
                node.body = []
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join([*up, base] if base else up)
                for alias in node.names:
                    name = f"{base}.{alias.name}"
                    targets.add(name if name in modules else base)
        graph[module] = {t for t in map(ours, targets) if t is not None and t != module}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, edges = work[-1]
            for nxt in edges:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph.get(nxt, ())))))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return sorted(found)


#: import cycles that remain, each with why (none: keep it that way)
KNOWN_CYCLES: dict[tuple[str, ...], str] = {}


def test_no_import_cycles_among_our_modules() -> None:
    """No module of ours imports, even inside a function, one that imports it back."""
    graph = import_graph()
    assert {"engine.tensor", "service.lifecycle", "workers.tasks", "client.cli"} <= set(graph)
    assert [c for c in cycles(graph) if tuple(c) not in KNOWN_CYCLES] == []


def test_the_cycle_finder_finds_cycles() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a", "e"}, "e": {"d"}, "f": set()}
    assert cycles(graph) == [["a", "b", "c"], ["d", "e"]]


#: the web layer: the Flask app, its views and the dashboard
WEB = ("service.app", "service.api", "service.dashboard")


def test_no_upward_imports_in_the_service() -> None:
    """The domain modules of `service` never import the web layer that calls them; the one
    arrow up is `service.create_app`, the entry point, which imports `service.app` when called."""
    graph = import_graph()
    offenders = {
        module: sorted(t for t in targets if t.startswith(WEB))
        for module, targets in graph.items()
        if module.startswith("service.") and not module.startswith(WEB)
        if any(t.startswith(WEB) for t in targets)
    }
    assert offenders == {}
    assert graph["service"] == {"service.app"}


#: Flask and the web stack it brings
FLASK_STACK = ("flask", "flask_smorest", "werkzeug", "webargs")


def loaded_frameworks(modules: list[str], env: dict[str, str] | None = None) -> list[str]:
    """Which of Flask and its stack a fresh interpreter holds after importing `modules`."""
    code = (
        f"import sys, {', '.join(modules)}\n"
        f"print(sorted(m for m in {FLASK_STACK!r} if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return ast.literal_eval(out.stdout.strip())


def worker_env(tmp_path: Path) -> dict[str, str]:
    """A worker's environment of its own: a SQLite file and a filesystem broker under
    `tmp_path` (importing `workers.app` makes the broker's folders), no maintenance loop."""
    return base_env(
        DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}",
        CELERY_BROKER_URL=f"filesystem://{(tmp_path / 'broker').as_posix()}",
        TRAINYARD_VAR_DIR=str(tmp_path / "var"),
        TRAINYARD_MAINTENANCE_INTERVAL="0",
    )


def test_the_service_and_the_workers_runtime_load_no_flask() -> None:
    """A worker needs the store, the lifecycle and Celery's settings, not the web stack:
    `import service` (its `create_app` is lazy) and these load no Flask."""
    assert (
        loaded_frameworks(
            [
                "service",
                "service.config",
                "service.db",
                "service.tables",
                "service.lifecycle",
                "service.celery",
                "service.migrate",
                "service.problems",
                "service.jobs",
                "service.sweeps",
                "service.datasets",
                "service.idempotency",
                "workers.runtime",
            ]
        )
        == []
    )
    assert "flask" in loaded_frameworks(["service.app"])  # the check sees Flask when it is there


def test_the_workers_import_nothing_of_the_web_layer() -> None:
    """The worker's modules never import the API's Flask app, views or dashboard; the
    embedded runner, which starts gunicorn, reads API keys through `service.auth`."""
    graph = import_graph()
    offenders = {
        module: sorted(t for t in targets if t.startswith(WEB))
        for module, targets in graph.items()
        if module.startswith("workers") and any(t.startswith(WEB) for t in targets)
    }
    assert offenders == {}


#: what `celery -A workers.app worker` imports: its entry module, its tasks and maintenance loop
WORKER_MODULES = [
    "workers.app",
    "workers.context",
    "workers.tasks",
    "workers.predicting",
    "workers.importing",
    "workers.maintenance",
    "workers.webhooks",
    "workers.parent_watch",
]


def test_what_the_tasks_import_loads_no_flask(tmp_path: Path) -> None:
    """The worker builds its Celery app from `service.config.Settings` (no Flask app); its tasks
    and maintenance loop read their settings from a `workers.context.WorkerContext`."""
    assert loaded_frameworks(WORKER_MODULES, worker_env(tmp_path)) == []


@pytest.mark.slow  # a real prefork worker: in the one-at-a-time phase
def test_the_celery_worker_runs_without_flask(tmp_path: Path) -> None:
    """`celery -A workers.app worker`, as every mode starts it (prefork pool), up to the point
    where it consumes: its tasks are registered with the app, the pool has started, and no
    process of it has loaded Flask. Then a warm shutdown, which it takes."""
    code = textwrap.dedent(f"""
        import os, signal, sys
        from celery import signals
        from celery.bin.celery import celery

        def frameworks():
            return sorted(m for m in {FLASK_STACK!r} if m in sys.modules)

        def say(*words):  # the worker sends sys.stdout to its log
            os.write(1, (" ".join(map(str, words)) + "\\n").encode())

        @signals.worker_process_init.connect
        def child(**_):
            say("CHILD", frameworks())

        @signals.worker_ready.connect
        def ready(sender=None, **_):
            app = sender.app
            names = sorted(t for t in app.tasks if t.startswith("trainyard."))
            say("READY", app.main, names, frameworks())
            os.kill(os.getpid(), signal.SIGTERM)

        celery(["-A", "workers.app", "worker", "--concurrency", "1", "--without-gossip",
                "--without-mingle", "--loglevel", "WARNING"])
    """)
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=worker_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = [line for line in out.stdout.splitlines() if line.startswith(("READY", "CHILD"))]
    assert sorted(lines) == [
        "CHILD []",
        "READY trainyard ['trainyard.deliver_webhook', 'trainyard.import_dataset', "
        "'trainyard.predict_job', 'trainyard.train_job'] []",
    ], out.stdout + out.stderr
    assert out.returncode == 0, out.stdout + out.stderr
