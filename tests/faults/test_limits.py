"""Faults 7 and 8: time limits, and a poison job that kills its process on every attempt.

Either way the job ends `failed` with a reason (never `running`), and the same worker goes on
to train the next job.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.support import Cluster, Processes

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]


@pytest.mark.parametrize(
    ("soft", "hard", "reason"),
    [("2", "30", "time limit exceeded (2 s)"), ("0", "2", "time limit exceeded (hard limit 2 s)")],
    ids=["soft", "hard"],
)
def test_time_limit_fails_the_job_and_the_worker_goes_on(
    cluster: Cluster, soft: str, hard: str, reason: str
) -> None:
    """Soft limit: the task catches SoftTimeLimitExceeded. Hard limit (no soft one): the pool
    process is killed and the worker's main process fails the job (task_failure signal)."""
    cluster.worker(
        "w1", TRAINYARD_TASK_SOFT_TIME_LIMIT=soft, TRAINYARD_TASK_TIME_LIMIT=hard,
        TRAINYARD_VISIBILITY_TIMEOUT="60",
    )  # fmt: skip
    endless = cluster.add_job(epochs=1_000_000)
    following = cluster.add_job(epochs=20)
    job = cluster.wait(endless, ("failed",), timeout=60)
    assert job.error is not None and job.error.startswith(reason), job.error
    assert "partial history kept" in job.error
    assert job.attempts == 1 and job.epoch > 0
    assert cluster.epochs(endless) == list(range(1, job.epoch + 1))
    assert cluster.models(endless) == 0
    cluster.wait(following, timeout=60)
    cluster.assert_succeeded_once(following, attempts=1)


def memory_cgroup(limit_bytes: int) -> Path:
    """A memory cgroup below this process's own (v2 or v1), limited to `limit_bytes`."""
    lines = Path("/proc/self/cgroup").read_text().splitlines()
    v1 = [line.split(":", 2)[2] for line in lines if line.split(":", 2)[1] == "memory"]
    name = f"trainyard-poison-{uuid.uuid4().hex[:8]}"
    if v1:
        folder = Path("/sys/fs/cgroup/memory") / v1[0].lstrip("/") / name
        folder.mkdir()
        (folder / "memory.limit_in_bytes").write_text(str(limit_bytes))
    else:
        own = next(line.split(":", 2)[2] for line in lines if line.startswith("0::"))
        folder = Path("/sys/fs/cgroup") / own.lstrip("/") / name
        folder.mkdir()
        (folder / "memory.max").write_text(str(limit_bytes))
    return folder


@pytest.fixture
def cgroup(procs: Processes) -> Iterator[Path]:
    """Needs a writable cgroup file system (root, as in CI): the kernel's OOM killer is the
    honest way to kill a process that asks for too much memory."""
    folder = memory_cgroup(400 * 1024 * 1024)
    try:
        yield folder
    finally:
        procs.stop_all()  # a cgroup with processes in it cannot be removed
        deadline = time.monotonic() + 10
        while True:
            try:
                folder.rmdir()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)


def test_poison_job_is_failed_after_max_attempts_and_the_next_job_runs(
    cluster: Cluster, cgroup: Path
) -> None:
    """Fault 8: the worker runs in a 400 MiB memory cgroup; a job whose full-batch activations
    need gigabytes gets its pool process OOM-killed (SIGKILL) on every attempt. After
    TRAINYARD_MAX_ATTEMPTS (2) lost attempts it is `failed` with the reason; the next job runs."""
    worker = cluster.worker("w1", wait=False, TRAINYARD_MAX_ATTEMPTS="2")
    (cgroup / "cgroup.procs").write_text(str(worker.popen.pid))  # before the pool forks
    worker.wait_for_output(" ready.", 90)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20_000, 10))
    poison = cluster.add_job(epochs=5, x=x, y=x[:, 0], layers=[2048, 2048, 1])
    following = cluster.add_job(epochs=20)
    job = cluster.wait(poison, ("failed",), timeout=90)
    assert job.attempts == 2
    assert job.error is not None and "lost 2 times" in job.error, job.error
    assert cluster.models(poison) == 0
    cluster.wait(following, timeout=60)
    cluster.assert_succeeded_once(following, attempts=1)
    assert "WorkerLostError" in worker.text() or "signal 9" in worker.text()
