"""docker-compose.yml: valid for Debian's docker-compose, and the very commands of its services
run as local processes against the local PostgreSQL and Redis (Docker does not run here).

Only the container-side addresses change: the hosts `postgres` and `redis` become the local
servers, the `s3` service's command runs with PyPI's `weed` on free ports, and the API's
`0.0.0.0:8000` becomes a free local port.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import redis
import yaml

from service.dataset_store import DatasetStore
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
from tests.support.s3 import S3Server, start_s3_server
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
    assert set(services) == {"api", "worker", "redis", "postgres", "migrate", "s3"}
    assert "container_name" not in services["worker"]
    assert "noeviction" in " ".join(services["redis"]["command"])
    assert "pgdata:/var/lib/postgresql/data:rw" in services["postgres"]["volumes"]
    assert "pgdata" in compose_config()["volumes"]
    for name in ("api", "worker"):
        deps = services[name]["depends_on"]
        assert deps["migrate"]["condition"] == "service_completed_successfully"
        assert deps["postgres"]["condition"] == deps["redis"]["condition"] == "service_healthy"
    for name in ("api", "worker", "redis", "postgres", "s3"):
        assert "healthcheck" in services[name], name
    for name in ("api", "worker", "migrate"):
        assert services[name]["build"]["context"] == str(ROOT)
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "graphviz" in dockerfile


def test_compose_has_an_object_store_that_the_app_services_use() -> None:
    config = compose_config()
    services = config["services"]
    s3 = services["s3"]
    assert s3["image"] == "chrislusf/seaweedfs:latest"
    assert s3["command"][0] in ("mini", "server") and "-dir=/data" in s3["command"]
    assert "s3data:/data:rw" in s3["volumes"] and "s3data" in config["volumes"]
    assert s3["restart"] == "unless-stopped"
    # the keys come from the environment, with defaults for a local stack
    keys = {k: v for k, v in s3["environment"].items() if k.startswith("AWS_")}
    assert keys == {"AWS_ACCESS_KEY_ID": "trainyard", "AWS_SECRET_ACCESS_KEY": "trainyard-secret"}
    raw = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert raw["services"]["s3"]["environment"] == {
        "AWS_ACCESS_KEY_ID": "${S3_ACCESS_KEY:-trainyard}",
        "AWS_SECRET_ACCESS_KEY": "${S3_SECRET_KEY:-trainyard-secret}",
    }
    check = " ".join(s3["healthcheck"]["test"][1:])
    assert s3["healthcheck"]["test"][0] == "CMD-SHELL"
    assert "s3.bucket.list" in check and "8333/healthz" in check

    for name in ("api", "worker", "migrate"):
        env = services[name]["environment"]
        store_url = env["TRAINYARD_STORE_URL"]
        assert store_url.startswith("s3://"), (name, store_url)
        bucket = store_url.removeprefix("s3://").split("/")[0]
        # the bucket the app uses is the one the store creates on start, and its healthcheck
        # waits for
        assert f"-bucket={bucket}" in s3["command"] and f"grep -qw {bucket}" in check
        assert env["AWS_ENDPOINT_URL"] == "http://s3:8333"
        assert env["AWS_DEFAULT_REGION"]
        assert {k: env[k] for k in keys} == keys, name
        assert services[name]["depends_on"]["s3"]["condition"] == "service_healthy", name


def compose_env(
    service: dict[str, Any], database_url: str, broker_url: str, s3_endpoint: str
) -> dict[str, str]:
    env = base_env(**{k: str(v) for k, v in (service.get("environment") or {}).items()})
    assert env["DATABASE_URL"].startswith("postgresql+psycopg://")
    assert env["CELERY_BROKER_URL"].startswith("redis://")
    assert env["AWS_ENDPOINT_URL"] == "http://s3:8333"
    env["DATABASE_URL"] = database_url
    env["CELERY_BROKER_URL"] = broker_url
    env["AWS_ENDPOINT_URL"] = s3_endpoint
    return env


def run_healthcheck(
    test: list[str], replace: dict[str, str], env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    """A `CMD-SHELL` healthcheck as the container's shell runs it, container addresses made
    local (compose turns `$$` into `$`)."""
    assert test[0] == "CMD-SHELL"
    shell = test[1].replace("$$", "$")
    for old, new in replace.items():
        assert old in shell, (old, shell)
        shell = shell.replace(old, new)
    # a session of its own: a check that hangs (weed shell waits for its master) is killed
    # with its children
    proc = subprocess.Popen(["/bin/sh", "-c", shell], env=env, cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)  # fmt: skip
    try:
        out, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"the healthcheck did not finish in 30 s: {shell}\n{out}{err}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.fixture
def local_s3(tmp_path: Path) -> Iterator[S3Server]:
    """The compose file's `s3` service: its command and keys, run with PyPI's `weed`."""
    s3 = compose_config()["services"]["s3"]
    env = s3["environment"]
    with start_s3_server(
        tmp_path / "s3",
        bucket="trainyard",
        command=s3["command"],
        access_key=env["AWS_ACCESS_KEY_ID"],
        secret_key=env["AWS_SECRET_ACCESS_KEY"],
    ) as server:
        yield server


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
    local_servers: tuple[str, str],
    local_s3: S3Server,
    processes: Processes,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    database_url, broker_url = local_servers
    services = compose_config()["services"]

    # the object store's healthcheck passes: with curl (the official image), and with only
    # weed, bash and coreutils on the PATH (the offline stand-in image has no curl)
    replace = {
        # weed shell's `host:port.grpcPort` (the gRPC port is not the default port + 10000)
        "127.0.0.1:9333": (
            f"127.0.0.1:{local_s3.ports['master.port']}.{local_s3.ports['master.port.grpc']}"
        ),
        "127.0.0.1:8333": f"127.0.0.1:{local_s3.ports['s3.port']}",
        "127.0.0.1/8333": f"127.0.0.1/{local_s3.ports['s3.port']}",
    }
    s3_check = services["s3"]["healthcheck"]["test"]
    assert shutil.which("curl") is not None
    done = run_healthcheck(s3_check, replace, base_env())
    assert done.returncode == 0, done.stdout + done.stderr + local_s3.log()[-2000:]
    bare = tmp_path / "bare-bin"
    bare.mkdir()
    for tool in ("weed", "bash", "grep", "head"):
        found = shutil.which(tool, path=base_env()["PATH"])
        assert found is not None, tool
        (bare / tool).symlink_to(found)
    done = run_healthcheck(s3_check, replace, {"PATH": str(bare), "HOME": str(tmp_path)})
    assert done.returncode == 0, done.stdout + done.stderr
    # and fails while the bucket is missing
    missing = run_healthcheck(s3_check, {**replace, "grep -qw trainyard": "grep -qw nothere"},
                              base_env())  # fmt: skip
    assert missing.returncode != 0

    def local_env(service: dict[str, Any]) -> dict[str, str]:
        return compose_env(service, database_url, broker_url, local_s3.endpoint)

    # the app services' store settings reach the bucket with their keys
    for name, value in local_env(services["api"]).items():
        if name.startswith("AWS_"):
            monkeypatch.setenv(name, value)
    store = DatasetStore(services["api"]["environment"]["TRAINYARD_STORE_URL"])
    with store.writer("compose-check") as writer:
        writer.write(pa.table({"x": [1.0, 2.0]}))
        assert writer.commit().n_rows == 2
    assert store.parts("compose-check")
    store.delete("compose-check")

    # migrate: one shot, must succeed (what service_completed_successfully waits for)
    migrate = services["migrate"]
    done = subprocess.run(
        migrate["command"],
        cwd=ROOT,
        env=local_env(migrate),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr

    worker = services["worker"]
    worker_proc = processes.start("worker", worker["command"], local_env(worker))
    port = free_port()
    api_service = services["api"]
    command = [arg.replace("0.0.0.0:8000", f"127.0.0.1:{port}") for arg in api_service["command"]]
    assert command != api_service["command"]
    api_env = local_env(api_service)
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
