"""docker-compose.yml: valid for Debian's docker-compose, and the very commands of its services
run as local processes against the local PostgreSQL and Redis (Docker does not run here).

Only the container-side addresses change: the hosts `postgres` and `redis` become the local
servers, and the API's `0.0.0.0:8000` becomes a free local port.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from tests.support import (
    REDIS_URL,
    ROOT,
    Api,
    Processes,
    base_env,
    check_model,
    create_pg_database,
    drop_pg_database,
    free_port,
    new_api_key,
)
from tests.workers.datasets import moons

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]

REDIS_DB = 6


def compose_config() -> dict[str, Any]:
    if shutil.which("docker-compose") is None:
        pytest.fail("docker-compose (Debian package docker-compose) is not installed")
    out = subprocess.run(
        ["docker-compose", "config"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return yaml.safe_load(out.stdout)


def test_compose_config_is_valid() -> None:
    out = subprocess.run(
        ["docker-compose", "config", "-q"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    services = compose_config()["services"]
    assert set(services) == {"api", "worker", "redis", "postgres", "migrate"}
    assert "container_name" not in services["worker"]
    assert "noeviction" in " ".join(services["redis"]["command"])
    assert "pgdata:/var/lib/postgresql/data:rw" in services["postgres"]["volumes"]
    assert "pgdata" in compose_config()["volumes"]
    for name in ("api", "worker"):
        deps = services[name]["depends_on"]
        assert deps["migrate"]["condition"] == "service_completed_successfully"
        assert deps["postgres"]["condition"] == deps["redis"]["condition"] == "service_healthy"
    for name in ("api", "worker", "redis", "postgres"):
        assert "healthcheck" in services[name], name
    for name in ("api", "worker", "migrate"):
        assert services[name]["build"]["context"] == str(ROOT)
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "graphviz" in dockerfile


def local_env(service: dict[str, Any], database_url: str, broker_url: str) -> dict[str, str]:
    env = base_env(**{k: str(v) for k, v in (service.get("environment") or {}).items()})
    assert env["DATABASE_URL"].startswith("postgresql+psycopg://")
    assert env["CELERY_BROKER_URL"].startswith("redis://")
    env["DATABASE_URL"] = database_url
    env["CELERY_BROKER_URL"] = broker_url
    return env


@pytest.fixture
def local_servers() -> Iterator[tuple[str, str]]:
    database_url = create_pg_database()  # empty: the migrate service builds the schema
    broker_url = f"{REDIS_URL}/{REDIS_DB}"
    client = redis.Redis.from_url(broker_url)
    client.flushdb()
    try:
        yield database_url, broker_url
    finally:
        client.flushdb()
        client.close()
        drop_pg_database(database_url)


def test_compose_service_commands_run_locally(
    local_servers: tuple[str, str], processes: Processes, tmp_path: Path
) -> None:
    database_url, broker_url = local_servers
    services = compose_config()["services"]

    # migrate: one shot, must succeed (what service_completed_successfully waits for)
    migrate = services["migrate"]
    done = subprocess.run(
        migrate["command"],
        cwd=ROOT,
        env=local_env(migrate, database_url, broker_url),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr

    worker = services["worker"]
    worker_proc = processes.start(
        "worker", worker["command"], local_env(worker, database_url, broker_url)
    )
    port = free_port()
    api_service = services["api"]
    command = [arg.replace("0.0.0.0:8000", f"127.0.0.1:{port}") for arg in api_service["command"]]
    assert command != api_service["command"]
    api_env = local_env(api_service, database_url, broker_url)
    api_proc = processes.start("api", command, api_env)
    api = Api(f"http://127.0.0.1:{port}", api_proc, new_api_key(database_url))
    api.wait_ready(60)
    worker_proc.wait_for_output(" ready.", 60)

    # the healthchecks of the long-running app services pass against the local processes
    hostname = socket.gethostname()
    check_env = {**api_env, "HOSTNAME": hostname}
    api_check = [a.replace("127.0.0.1:8000", f"127.0.0.1:{port}")
                 for a in api_service["healthcheck"]["test"][1:]]  # fmt: skip
    assert subprocess.run(api_check, env=check_env, timeout=30, cwd=ROOT).returncode == 0
    worker_check = worker["healthcheck"]["test"]
    assert worker_check[0] == "CMD-SHELL"
    # compose turns `$$HOSTNAME` into `$HOSTNAME` for the shell in the container
    shell = worker_check[1].replace("$$", "$")
    ok = subprocess.run(["sh", "-c", shell], env=check_env, cwd=ROOT, timeout=60,
                        capture_output=True, text=True)  # fmt: skip
    assert ok.returncode == 0, ok.stdout + ok.stderr

    x, y = moons(100)
    job_id = api.job(api.dataset(x, y, "moons"), [8, 1], loss="binary_cross_entropy",
                     optimizer="adam", learning_rate=0.05, epochs=20, batch_size=32)  # fmt: skip
    check_model(api, api.wait(job_id, timeout=60), x[:10])
    assert os.path.exists(ROOT / "Dockerfile")
