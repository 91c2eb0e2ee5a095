"""The model registry from the Python client and the `trainyard` command, against a live
embedded-mode service (real gunicorn, real celery worker): `register_as` on a job a worker
trains, aliases moved and rolled back, every model method with a reference."""

from __future__ import annotations

from pathlib import Path

import pytest

from client import NotFoundError
from tests.client.test_cli import as_json, trainyard
from tests.support import LiveService
from tests.workers.datasets import moons

pytestmark = pytest.mark.slow


def test_register_as_aliases_and_references_through_the_client_and_the_cli(
    service: LiveService, tmp_path: Path
) -> None:
    api = service.client()
    x, y = moons(80)
    dataset = api.upload_dataset(x, y, name="moons")
    jobs = [
        api.submit_job(
            dataset["id"], [4, 1], epochs=3, seed=seed, learning_rate=0.1, register_as="moons-clf"
        )
        for seed in (1, 2)
    ]
    done = [api.wait(job["id"], poll_interval=0.05, timeout=90) for job in jobs]
    assert [j["status"] for j in done] == ["succeeded", "succeeded"], done
    registered = api.get_registered("moons-clf")
    by_version = {v["version"]: v["model_id"] for v in registered["versions"]}
    assert set(by_version) == {1, 2}  # in the order the jobs succeeded
    assert set(by_version.values()) == {j["model_id"] for j in done}

    # the client: every model method takes a reference
    api.set_alias("moons-clf", "champion", 1)
    rows = x[:5].tolist()
    assert api.predict("moons-clf@champion", rows) == api.predict(by_version[1], rows)
    assert api.get_model("moons-clf@champion")["id"] == by_version[1]
    assert api.bundle("moons-clf@v2") == api.bundle(by_version[2])
    assert api.graph_svg("moons-clf@champion") == api.graph_svg(by_version[1])
    api.set_alias("moons-clf", "champion", 2)
    assert api.predict("moons-clf@champion", rows) == api.predict(by_version[2], rows)
    assert api.load_model("moons-clf@champion").predict(rows) == api.predict(by_version[2], rows)
    assert [n["name"] for n in api.list_registry()["items"]] == ["moons-clf"]

    # the command line
    shown = as_json(trainyard(service, "registry", "show", "moons-clf", "--json", cwd=tmp_path))
    (champion,) = shown["aliases"]
    assert [(h["from"], h["to"]) for h in champion["history"]] == [(None, 1), (1, 2)]
    back = trainyard(service, "registry", "alias", "moons-clf", "champion", "1", cwd=tmp_path)
    assert back.returncode == 0 and "-> v1" in back.stdout, back.stderr
    assert api.get_model("moons-clf@champion")["id"] == by_version[1]  # rolled back
    new = as_json(
        trainyard(service, "registry", "register", "other", "moons-clf@v2", "--json", cwd=tmp_path)
    )
    assert (new["name"], new["version"], new["model_id"]) == ("other", 1, by_version[2])
    listed = trainyard(service, "registry", "list", cwd=tmp_path)
    assert listed.returncode == 0 and "moons-clf" in listed.stdout and "other" in listed.stdout
    table = trainyard(service, "registry", "show", "moons-clf", cwd=tmp_path)
    assert table.returncode == 0 and "champion" in table.stdout and by_version[2] in table.stdout
    model = trainyard(service, "models", "show", "moons-clf@champion", cwd=tmp_path)
    assert model.returncode == 0 and "moons-clf@v1 (champion)" in model.stdout, model.stdout
    reserved = trainyard(service, "registry", "alias", "moons-clf", "v2", "1", cwd=tmp_path)
    assert reserved.returncode == 3 and "alias" in reserved.stderr
    deleted = trainyard(
        service, "registry", "alias", "moons-clf", "champion", "--delete", cwd=tmp_path
    )
    assert deleted.returncode == 0, deleted.stderr
    (tmp_path / "rows.csv").write_text("x0,x1\n0.1,0.2\n")
    gone = trainyard(service, "predict", "moons-clf@champion", "rows.csv", cwd=tmp_path)
    assert gone.returncode == 4, gone.stderr
    with pytest.raises(NotFoundError):
        api.get_model("moons-clf@champion")
