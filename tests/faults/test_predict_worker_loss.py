"""A predict job's worker killed (kill -9 of the whole worker) while it writes predictions: the
lifecycle gives the take-over, as for training. The fresh worker's reaper hands the job back
(stale heartbeat), its reconciler publishes it to the predict task, and the fresh worker runs
a second attempt from the first row; the dead attempt's parts are deleted. And a running
predict job cancelled through the lifecycle stops between two chunks, its parts deleted."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from core.model import Model, weights_to_npz
from engine.nn import MLP
from service import lifecycle
from service.dataset_store import PREDICTIONS, DatasetStore, store_for
from service.db import session_scope, utcnow
from service.lifecycle import PREDICT_TASK
from service.tables import Job, TrainedModel
from tests.support import STORE_URL, Cluster, kill_group, store_dataset

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]

ROWS = 200_000
#: wide enough that predicting ROWS rows takes seconds (the worker is killed meanwhile)
LAYERS = [512, 512, 1]


def add_predict_job(
    cluster: Cluster, rows: int = ROWS
) -> tuple[str, dict[str, Any], MLP, np.ndarray]:
    """A predict job of a wide model over `rows` rows (seconds of work), not yet published."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(rows, 2))
    mlp = MLP(2, LAYERS, seed=0)
    architecture = {"nin": 2, "layers": LAYERS, "activation": "tanh", "output_activation": None,
                    "loss": "mse", "classes": None}  # fmt: skip
    with session_scope(cluster.factory) as session:
        dataset = store_dataset(session, x, np.zeros(rows), name="to score")
        trained = Job(dataset_id=dataset.id, model_spec={}, training_spec={}, epochs=0,
                      status="succeeded", finished_at=utcnow())  # fmt: skip
        session.add(trained)
        session.flush()
        model = TrainedModel(job_id=trained.id, dataset_id=dataset.id, architecture=architecture,
                             weights=weights_to_npz(mlp.state_dict()), graph_svg="",
                             metrics={})  # fmt: skip
        session.add(model)
        session.flush()
        job_id = lifecycle.submit_predict(
            session, owner="local", model_id=model.id, dataset_id=dataset.id, rows_total=rows
        ).id
    return job_id, architecture, mlp, x


def test_kill_9_of_a_predicting_worker_then_a_fresh_one_takes_over(cluster: Cluster) -> None:
    job_id, architecture, mlp, x = add_predict_job(cluster)
    doomed = cluster.worker("doomed")
    cluster.celery.send_task(PREDICT_TASK, args=[job_id])
    cluster.wait(job_id, ("running",), timeout=60)
    time.sleep(0.5)  # into the rows
    kill_group(doomed)
    assert cluster.job(job_id).status == "running"
    cluster.worker("fresh")
    job = cluster.wait(job_id, timeout=180)
    assert (job.status, job.attempts, job.error) == ("succeeded", 2, None)
    assert job.rows_done == ROWS
    store = store_for(STORE_URL)
    assert store.parts(f"{job_id}/1", PREDICTIONS) == []
    out_store, key = DatasetStore.at(job.output_location or "", PREDICTIONS)
    assert key == f"{job_id}/2"
    out = pa.Table.from_batches(list(out_store.read_batches(key, prefix=PREDICTIONS)))
    assert out.column_names == ["prediction"] and out.num_rows == ROWS
    expected = Model(architecture, mlp.state_dict()).predict(x[:1000])["predictions"]
    np.testing.assert_allclose(out.column(0).to_numpy()[:1000], expected, rtol=1e-12)


def test_a_running_predict_job_cancelled_stops_between_chunks_and_frees_its_parts(
    cluster: Cluster,
) -> None:
    # three times the rows: the job would run for seconds after the cancel is seen
    job_id, *_ = add_predict_job(cluster, 3 * ROWS)
    cluster.worker("w1")
    cluster.celery.send_task(PREDICT_TASK, args=[job_id])
    deadline = time.monotonic() + 60
    while (cluster.job(job_id).rows_done or 0) == 0:  # a first chunk written and recorded
        assert time.monotonic() < deadline, cluster.logs()
        time.sleep(0.05)
    with session_scope(cluster.factory) as session:
        assert lifecycle.cancel(session, job_id, "local").done
    job = cluster.wait(job_id, ("cancelled",), timeout=60)
    assert 0 < (job.rows_done or 0) < 3 * ROWS and job.output_location is None
    assert store_for(STORE_URL).parts(f"{job_id}/1", PREDICTIONS) == []
