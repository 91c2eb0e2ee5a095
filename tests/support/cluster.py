"""A store, a broker and real `celery worker` processes for the fault tests (and their helpers:
a Redis server of a test's own, process-group kills, key creation).

Jobs are made as rows (a dataset and a `queued` job) and published by task name, as the API
does. Settings are short (heartbeat 0.5 s, stale after 2 s, maintenance sweep every 1 s) so
that every fault resolves in seconds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import redis
import sqlalchemy as sa
from celery import Celery
from sqlalchemy.orm import Session, sessionmaker

from service.auth import create_api_key
from service.celery import TRAIN_TASK, celery_config
from service.config import Settings
from service.db import make_engine, make_sessionmaker, session_scope, utcnow
from service.tables import DEFAULT_OWNER, Job, JobEpoch, TrainedModel
from tests.support.api import Api
from tests.support.processes import Proc, Processes, api_cmd, base_env, free_port, worker_cmd
from tests.support.stored import store_dataset
from tests.workers.datasets import regression

FINAL = ("succeeded", "failed", "cancelled")

FAST = {
    "TRAINYARD_HEARTBEAT_INTERVAL": "0.5",
    "TRAINYARD_STALE_AFTER": "2",
    "TRAINYARD_MAINTENANCE_INTERVAL": "1",
    "TRAINYARD_MAX_ATTEMPTS": "3",
    "TRAINYARD_BROKER_SOCKET_TIMEOUT": "2",
}


#: `add_job` options for a job whose epochs are mostly training: about 40 ms an epoch on an idle
#: 2-core machine (128 minibatches of 16 rows), where the default tiny job's 2 ms epochs are mostly
#: their commits, which a busy machine slows 3-4 times more than it slows training. Faults that
#: must strike mid-job use it, so that a job lasts long enough without thousands of epochs.
STEADY: dict[str, Any] = {"n": 2048, "layers": [32, 32, 1], "batch_size": 16}


class Cluster:
    """One store and one broker; workers started on demand; jobs made and watched in SQL."""

    def __init__(self, database_url: str, broker_url: str, processes: Processes) -> None:
        self.database_url = database_url
        self.broker_url = broker_url
        self.processes = processes
        self.engine = make_engine(database_url)
        self.factory: sessionmaker[Session] = make_sessionmaker(self.engine)
        settings = dataclasses.replace(Settings(), database_url=database_url, broker_url=broker_url)
        self.celery = Celery("faults-test", set_as_current=False)
        self.celery.config_from_object(celery_config(settings))

    def env(self, **extra: str) -> dict[str, str]:
        return base_env(
            DATABASE_URL=self.database_url, CELERY_BROKER_URL=self.broker_url, **{**FAST, **extra}
        )

    def worker(self, name: str, wait: bool = True, **extra: str) -> Proc:
        proc = self.processes.start(name, worker_cmd(name), self.env(**extra))
        if wait:
            proc.wait_for_output(" ready.", 90)
        return proc

    def api(self, **extra: str) -> Api:
        """The API under gunicorn on this store and broker, with an API key in its session."""
        port = free_port()
        proc = self.processes.start("api", api_cmd(port), self.env(**extra))
        api = Api(f"http://127.0.0.1:{port}", proc)
        api.wait_ready(60)
        api.http.headers.update(api_key(self.database_url))
        return api

    def add_job(
        self,
        epochs: int = 50,
        n: int = 16,
        layers: list[int] | None = None,
        x: np.ndarray | None = None,
        y: np.ndarray | None = None,
        publish: bool = True,
        batch_size: int | None = None,
    ) -> str:
        """A regression job on a tiny dataset (a few ms per epoch), published. More rows, wider
        `layers` and a small `batch_size` make each epoch longer (the time goes to training
        rather than to the epochs' commits)."""
        dataset_id = self.add_dataset(n, x, y)
        with session_scope(self.factory) as session:
            job = Job(
                dataset_id=dataset_id,
                model_spec={"layers": layers or [4, 1], "activation": "tanh",
                            "output_activation": None},
                training_spec={
                    "loss": "mse", "optimizer": "sgd", "learning_rate": 0.01, "momentum": 0.0,
                    "weight_decay": 0.0, "epochs": epochs, "batch_size": batch_size, "seed": 0,
                    "validation_split": 0.0,
                },
                epochs=epochs,
            )  # fmt: skip
            session.add(job)
            session.flush()
            job_id = job.id
        if publish:
            self.publish(job_id)
        return job_id

    def add_dataset(
        self, n: int = 16, x: np.ndarray | None = None, y: np.ndarray | None = None
    ) -> str:
        """A regression dataset of the default owner (the one `api_key` makes keys for)."""
        if x is None or y is None:
            x, y = regression(n)
        with session_scope(self.factory) as session:
            return store_dataset(session, x, y, name="faults").id

    def publish(self, job_id: str) -> None:
        self.celery.send_task(TRAIN_TASK, args=[job_id])
        with session_scope(self.factory) as session:
            session.execute(sa.update(Job).where(Job.id == job_id).values(published_at=utcnow()))

    def job(self, job_id: str) -> Job:
        with session_scope(self.factory) as session:
            job = session.get(Job, job_id)
            assert job is not None
            return job

    def wait(
        self,
        job_id: str,
        statuses: tuple[str, ...] = ("succeeded",),
        timeout: float = 60.0,
        min_epoch: int = 0,
    ) -> Job:
        deadline = time.monotonic() + timeout
        job = self.job(job_id)
        while time.monotonic() < deadline:
            job = self.job(job_id)
            if job.status in statuses and job.epoch >= min_epoch:
                return job
            if job.status in FINAL and job.status not in statuses:
                raise AssertionError(f"job ended {job.status} ({job.error}), wanted {statuses}")
            time.sleep(0.05)
        raise AssertionError(
            f"job {job_id} still {job.status} (epoch {job.epoch}, attempts {job.attempts}) "
            f"after {timeout}s; wanted {statuses}\n{self.logs()}"
        )

    def logs(self) -> str:
        return "\n".join(f"--- {p.log.name}\n{p.text()[-3000:]}" for p in self.processes.procs)

    def models(self, job_id: str) -> int:
        with session_scope(self.factory) as session:
            return int(
                session.scalar(
                    sa.select(sa.func.count())
                    .select_from(TrainedModel)
                    .where(TrainedModel.job_id == job_id)
                )
                or 0
            )

    def epochs(self, job_id: str) -> list[int]:
        with session_scope(self.factory) as session:
            return list(
                session.scalars(
                    sa.select(JobEpoch.epoch)
                    .where(JobEpoch.job_id == job_id)
                    .order_by(JobEpoch.epoch)
                )
            )

    def assert_succeeded_once(self, job_id: str, attempts: int) -> Job:
        job = self.job(job_id)
        assert (job.status, job.attempts, job.error) == ("succeeded", attempts, None), job.error
        assert self.models(job_id) == 1
        assert self.epochs(job_id) == list(range(1, job.epochs + 1))
        return job


def pool_children(proc: Proc) -> list[int]:
    pid = proc.popen.pid
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def kill_group(proc: Proc, sig: int = signal.SIGKILL) -> None:
    """Signal the worker's whole process group (main process and pool children)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.popen.pid, sig)
    proc.popen.wait(timeout=30)


class RedisServer:
    """A Redis server of the test's own, on a free port, started with the flags of `.ci/run`
    (no persistence): stopping it (`shutdown nosave`) loses everything in its memory, as it
    would for the shared server, without pulling Redis from under other test runs that share
    this machine's 127.0.0.1:6379."""

    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        self.folder = folder
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        return [
            "redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "--port",
            str(self.port), "--save", "", "--appendonly", "no", "--dir", str(self.folder),
            "--logfile", str(self.folder / "redis.log"),
            "--pidfile", str(self.folder / "redis.pid"),
        ]  # fmt: skip

    def alive(self) -> bool:
        client = redis.Redis.from_url(self.url, socket_timeout=1, socket_connect_timeout=1)
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    def start(self) -> None:
        subprocess.run(self.command(), timeout=10, check=True)
        deadline = time.monotonic() + 15
        while not self.alive():
            assert time.monotonic() < deadline, "redis did not start"
            time.sleep(0.1)

    def stop(self) -> None:
        """`redis-cli shutdown nosave`: Redis exits and everything in its memory is gone."""
        subprocess.run(
            ["redis-cli", "-p", str(self.port), "shutdown", "nosave"], timeout=10, check=False
        )
        deadline = time.monotonic() + 10
        while self.alive():
            assert time.monotonic() < deadline, "redis did not stop"
            time.sleep(0.1)


def api_key(database_url: str, owner: str = DEFAULT_OWNER) -> dict[str, str]:
    """`Authorization` header with a new API key of `owner` (rows made here belong to
    DEFAULT_OWNER)."""
    engine = make_engine(database_url)
    try:
        with session_scope(make_sessionmaker(engine)) as session:
            key = create_api_key(session, owner)
    finally:
        engine.dispose()
    return {"Authorization": f"Bearer {key}"}


def final_count(cluster: Cluster, job_ids: list[str]) -> dict[str, Any]:
    with session_scope(cluster.factory) as session:
        rows = session.execute(sa.select(Job.status).where(Job.id.in_(job_ids))).scalars()
        out: dict[str, Any] = {}
        for status in rows:
            out[status] = out.get(status, 0) + 1
        return out
