"""`make run-distributed` (`python -m workers.distributed`) end to end, on this machine's
PostgreSQL and Redis: it creates a missing database, migrates it, keeps an API key, starts the
API and two Celery workers; a job submitted over HTTP trains on one of them; Ctrl-C stops them
all.
"""

from __future__ import annotations

import re
import signal
import stat
import sys
import uuid
from pathlib import Path

import pytest

from tests.support import (
    PG_ADMIN_URL,
    Api,
    Processes,
    base_env,
    check_model,
    drop_pg_database,
    free_port,
    pid_alive,
)
from tests.workers.datasets import moons

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]


def test_one_command_creates_migrates_serves_trains_and_stops(
    processes: Processes, tmp_path: Path, redis_url: str
) -> None:
    database_url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/trainyard_rd_{uuid.uuid4().hex[:12]}"
    port = free_port()
    env = base_env(
        DATABASE_URL=database_url,
        CELERY_BROKER_URL=redis_url,
        TRAINYARD_VAR_DIR=str(tmp_path / "var"),
    )
    cmd = [sys.executable, "-m", "workers.distributed", "--port", str(port), "--workers", "2"]
    try:
        proc = processes.start("distributed", cmd, env)
        proc.wait_for_output("trainyard: dashboard:", 120)
        text = proc.text()
        assert "created the database" in text  # it did not exist
        key_file = tmp_path / "var" / "distributed-api-key"
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        api = Api(f"http://127.0.0.1:{port}", proc)
        api.authenticate(key_file.read_text().strip())

        x, y = moons(120)
        dataset_id = api.dataset(x, y, "moons")
        job_id = api.job(
            dataset_id, [8, 1], loss="binary_cross_entropy", optimizer="adam",
            learning_rate=0.05, epochs=20, batch_size=32,
        )  # fmt: skip
        job = api.wait(job_id, timeout=90)
        assert job["status"] == "succeeded" and job["attempts"] == 1
        check_model(api, job, x[:10])

        api_pid = re.search(r"\(pid (\d+)\)", text)
        worker_pids = re.search(r"\(pids ([\d, ]+)\)", text)
        assert api_pid and worker_pids, text
        pids = [int(api_pid[1]), *(int(p) for p in worker_pids[1].split(", "))]
        assert len(pids) == 3, text  # the API and two workers
        proc.popen.send_signal(signal.SIGINT)
        assert proc.popen.wait(timeout=60) == 0, proc.text()[-3000:]
        assert not any(pid_alive(pid) for pid in pids)
        assert "trainyard: stopped" in proc.text()
    finally:
        processes.stop_all()
        drop_pg_database(database_url)
