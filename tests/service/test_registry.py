"""The model registry: names, versions, aliases and their history; references (`NAME@vN`,
`NAME@ALIAS`) in every model route; `register_as` on jobs and sweeps; `registry.alias_moved`;
concurrent registrations and alias moves under concurrent predicts (PostgreSQL)."""

from __future__ import annotations

import dataclasses
import io
import itertools
import json
import threading
import zipfile
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient

from service import lifecycle, sweeps
from service.auth import find_api_key
from service.config import Settings
from service.lifecycle import Claim
from service.tables import AliasMove, Job, TrainedModel
from service.webhook_models import WebhookDelivery
from tests.service.helpers import assert_error, binary_dataset, keyed_client, post_dataset
from tests.service.test_models import add_model

URL = "/api/v1/registry"


def key_id(app: Flask, key: str) -> str:
    with app.extensions["db_sessionmaker"]() as session:
        return find_api_key(session, key).id


def register(client: FlaskClient, name: str, model_id: str) -> int:
    r = client.post(f"{URL}/{name}/versions", json={"model_id": model_id})
    assert r.status_code == 201, r.get_json()
    return int(r.get_json()["version"])


def two_models(app: Flask) -> tuple[str, str]:
    """Two regression models with different weights (so their predictions differ)."""
    first, _, _ = add_model(app, [3, 1], "mse", None)
    second, _, _ = add_model(app, [5, 1], "mse", None)
    return first, second


def test_versions_aliases_and_their_history(app: Flask, client: FlaskClient, api_key: str) -> None:
    m1, m2 = two_models(app)
    r = client.post(f"{URL}/churn/versions", json={"model_id": m1})
    assert r.status_code == 201
    created = r.get_json()
    assert created["version"] == 1 and created["name"] == "churn" and created["model_id"] == m1
    assert created["key_id"] == key_id(app, api_key)
    assert register(client, "churn", m2) == 2
    assert register(client, "other", m2) == 1  # versions count per name

    r = client.put(f"{URL}/churn/aliases/champion", json={"version": 1})
    assert r.status_code == 201 and r.get_json()["model_id"] == m1
    r = client.put(f"{URL}/churn/aliases/champion", json={"version": 2})
    assert r.status_code == 200 and r.get_json()["version"] == 2
    again = client.put(f"{URL}/churn/aliases/champion", json={"version": 2})
    assert again.status_code == 200 and len(again.get_json()["history"]) == 2  # no move
    assert client.put(f"{URL}/churn/aliases/staging", json={"version": 1}).status_code == 201

    got = client.get(f"{URL}/churn").get_json()
    assert got["name"] == "churn" and got["latest_version"] == 2
    assert [(v["version"], v["model_id"]) for v in got["versions"]] == [(1, m1), (2, m2)]
    assert all(v["created_at"] and v["key_id"] == key_id(app, api_key) for v in got["versions"])
    champion = next(a for a in got["aliases"] if a["alias"] == "champion")
    assert (champion["version"], champion["model_id"]) == (2, m2)
    assert [(h["from"], h["to"]) for h in champion["history"]] == [(None, 1), (1, 2)]
    assert all(h["at"] and h["key_id"] == key_id(app, api_key) for h in champion["history"])

    assert client.delete(f"{URL}/churn/aliases/staging").status_code == 204
    assert_error(client.delete(f"{URL}/churn/aliases/staging"), 404)
    assert_error(client.get("/api/v1/models/churn@staging"), 404)
    assert [a["alias"] for a in client.get(f"{URL}/churn").get_json()["aliases"]] == ["champion"]
    # created again, its history goes on (the deletion is a move to nothing)
    r = client.put(f"{URL}/churn/aliases/staging", json={"version": 2})
    assert r.status_code == 201
    assert [(h["from"], h["to"]) for h in r.get_json()["history"]] == [
        (None, 1), (1, None), (None, 2),
    ]  # fmt: skip

    listed = client.get(f"{URL}?page_size=1").get_json()
    assert listed["pagination"] == {"page": 1, "page_size": 1, "total": 2, "pages": 2}
    assert listed["items"][0]["name"] == "churn"
    assert listed["items"][0]["aliases"] == {"champion": 2, "staging": 2}
    assert client.get(f"{URL}?page=2&page_size=1").get_json()["items"][0]["name"] == "other"
    model = client.get(f"/api/v1/models/{m2}").get_json()
    assert model["registered"] == [
        {"name": "churn", "version": 2, "aliases": ["champion", "staging"]},
        {"name": "other", "version": 1, "aliases": []},
    ]


@pytest.mark.parametrize(
    ("method", "path", "body", "field"),
    [
        ("POST", "/bad name/versions", {"model_id": "x"}, "name"),
        ("POST", f"/{'n' * 65}/versions", {"model_id": "x"}, "name"),
        ("POST", "/-dash/versions", {"model_id": "x"}, "name"),
        ("PUT", "/churn/aliases/v3", {"version": 1}, "alias"),
        ("PUT", "/churn/aliases/V12", {"version": 1}, "alias"),
        ("PUT", "/churn/aliases/9lives", {"version": 1}, "alias"),
        ("PUT", f"/churn/aliases/{'a' * 65}", {"version": 1}, "alias"),
        ("PUT", "/churn/aliases/champion", {"version": 7}, "version"),
        ("PUT", "/churn/aliases/champion", {"version": 0}, "version"),
        ("PUT", "/churn/aliases/champion", {"version": "1"}, "version"),
    ],
)
def test_invalid_names_aliases_and_versions_are_422(
    app: Flask, client: FlaskClient, method: str, path: str, body: dict[str, Any], field: str
) -> None:
    register(client, "churn", add_model(app, [3, 1], "mse", None)[0])
    error = assert_error(client.open(f"{URL}{path}", method=method, json=body), 422, field)
    assert error["fields"][field]


def test_unknown_models_and_names_are_404(app: Flask, client: FlaskClient) -> None:
    assert_error(client.post(f"{URL}/churn/versions", json={"model_id": "0" * 32}), 404, "model_id")
    assert_error(client.post(f"{URL}/churn/versions", json={"model_id": "nope@v1"}), 404)
    assert_error(client.get(f"{URL}/churn"), 404)
    assert_error(client.put(f"{URL}/churn/aliases/champion", json={"version": 1}), 404)
    assert_error(client.delete(f"{URL}/churn/aliases/champion"), 404)
    assert client.get(URL).get_json()["items"] == []


def test_another_owner_gets_404_on_every_registry_route(
    app: Flask, client: FlaskClient, bob: FlaskClient
) -> None:
    m1, _ = two_models(app)
    register(client, "churn", m1)
    client.put(f"{URL}/churn/aliases/champion", json={"version": 1})
    for method, path, body in [
        ("GET", f"{URL}/churn", None),
        ("PUT", f"{URL}/churn/aliases/champion", {"version": 1}),
        ("DELETE", f"{URL}/churn/aliases/champion", None),
        ("POST", f"{URL}/churn/versions", {"model_id": m1}),  # alice's model
        ("GET", "/api/v1/models/churn@champion", None),
        ("GET", "/api/v1/models/churn@v1", None),
    ]:
        assert_error(bob.open(path, method=method, json=body), 404)
    assert bob.get(URL).get_json()["items"] == []
    # bob's own "churn" is another name: alice's stays as it was
    bob_model, _, _ = add_model(app, [3, 1], "mse", None, owner="bob")
    assert register(bob, "churn", bob_model) == 1
    assert bob.get("/api/v1/models/churn@v1").get_json()["id"] == bob_model
    assert client.get("/api/v1/models/churn@v1").get_json()["id"] == m1
    assert client.get(f"{URL}/churn").get_json()["latest_version"] == 1


MODEL_ROUTES = [
    ("GET", "", None),
    ("GET", "/weights", None),
    ("GET", "/graph.svg", None),
    ("GET", "/bundle", None),
    ("GET", "/export?format=bundle", None),
    ("POST", "/predict", {"features": [[0.5, 1.0], [2.0, -1.0]]}),
    ("POST", "/evaluate", "dataset"),
]


@pytest.mark.parametrize(("method", "suffix", "body"), MODEL_ROUTES)
def test_every_model_route_takes_a_reference(
    app: Flask, client: FlaskClient, method: str, suffix: str, body: Any
) -> None:
    m1, m2 = two_models(app)
    register(client, "churn", m1)
    register(client, "churn", m2)
    client.put(f"{URL}/churn/aliases/champion", json={"version": 2})
    if body == "dataset":
        dataset_id = client.get(f"/api/v1/models/{m2}").get_json()["dataset_id"]
        body = {"dataset_id": dataset_id}

    def answer(ref: str) -> Any:
        r = client.open(f"/api/v1/models/{ref}{suffix}", method=method, json=body)
        assert r.status_code == 200, (ref, r.get_data(as_text=True)[:300])
        if r.mimetype == "application/zip" or r.get_data()[:2] == b"PK":
            # a zip's entries carry the time they were written: compare what they hold
            with zipfile.ZipFile(io.BytesIO(r.get_data())) as z:
                return {name: z.read(name) for name in z.namelist()}
        return r.get_json() if r.is_json else r.get_data()

    by_id = answer(m2)
    assert answer("churn@champion") == by_id
    assert answer("churn@v2") == by_id
    assert answer("churn@v1") != by_id
    for missing in ("churn@v3", "churn@gone", "nope@champion", "churn@", "churn@v0", "a b@x"):
        r = client.open(f"/api/v1/models/{missing}{suffix}", method=method, json=body)
        assert_error(r, 404)


def test_moving_an_alias_switches_every_caller_and_back(app: Flask, client: FlaskClient) -> None:
    m1, m2 = two_models(app)
    register(client, "churn", m1)
    register(client, "churn", m2)
    rows = {"features": [[0.5, 1.0]]}

    def predicted(ref: str) -> Any:
        r = client.post(f"/api/v1/models/{ref}/predict", json=rows)
        assert r.status_code == 200
        return r.get_json()["predictions"]

    one, two = predicted(m1), predicted(m2)
    assert one != two
    client.put(f"{URL}/churn/aliases/champion", json={"version": 1})
    assert predicted("churn@champion") == one
    client.put(f"{URL}/churn/aliases/champion", json={"version": 2})
    assert predicted("churn@champion") == two
    client.put(f"{URL}/churn/aliases/champion", json={"version": 1})  # the rollback
    assert predicted("churn@champion") == one


# -- webhooks ------------------------------------------------------------------------------------


@pytest.mark.app_config({"WEBHOOKS_ALLOW_PRIVATE": "true"})
def test_alias_moves_make_registry_alias_moved_events(
    app: Flask, client: FlaskClient, bob: FlaskClient, api_key: str
) -> None:
    hook = client.post(
        "/api/v1/webhooks",
        json={"url": "http://127.0.0.1:9/hook", "events": ["registry.alias_moved"]},
    ).get_json()
    bob.post(
        "/api/v1/webhooks",
        json={"url": "http://127.0.0.1:9/hook", "events": ["registry.alias_moved"]},
    )
    only_jobs = client.post(
        "/api/v1/webhooks", json={"url": "http://127.0.0.1:9/hook", "events": ["job.failed"]}
    ).get_json()
    m1, m2 = two_models(app)
    register(client, "churn", m1)
    register(client, "churn", m2)
    client.put(f"{URL}/churn/aliases/champion", json={"version": 1})
    client.put(f"{URL}/churn/aliases/champion", json={"version": 2})
    client.put(f"{URL}/churn/aliases/champion", json={"version": 2})  # not a move
    client.delete(f"{URL}/churn/aliases/champion")
    with app.extensions["db_sessionmaker"]() as session:
        moves = session.scalars(sa.select(AliasMove).order_by(AliasMove.seq)).all()
        rows = session.scalars(
            sa.select(WebhookDelivery).order_by(WebhookDelivery.created_at)
        ).all()
    assert len(moves) == 3 and len(rows) == 3  # alice's one subscribed webhook, once per move
    assert {r.webhook_id for r in rows} == {hook["id"]} != {only_jobs["id"]}
    assert [r.subject_id for r in rows] == [m.id for m in moves]
    assert all(r.event == "registry.alias_moved" and r.published_at is not None for r in rows)
    events = [json.loads(r.payload) for r in rows]
    assert events[1]["type"] == "registry.alias_moved"
    assert events[1]["data"]["move"] == {
        "name": "churn", "alias": "champion", "from": 1, "to": 2, "model_id": m2,
        "at": events[1]["data"]["move"]["at"], "key_id": key_id(app, api_key),
    }  # fmt: skip
    assert (events[2]["data"]["move"]["to"], events[2]["data"]["move"]["model_id"]) == (None, None)


# -- register_as ---------------------------------------------------------------------------------

SPEC = {
    "model": {"layers": [4, 1], "activation": "tanh"},
    "training": {"epochs": 3, "loss": "binary_cross_entropy", "validation_split": 0.25},
}


def finish(app: Flask, job_id: str, val_loss: float) -> str:
    """End a job `succeeded` through the lifecycle, as its worker would; its model's id."""
    factory = app.extensions["db_sessionmaker"]
    attempt = lifecycle.claim(factory, job_id, dataclasses.replace(Settings(), stale_after=30))
    assert isinstance(attempt, Claim)
    with factory() as session:
        dataset_id = session.get(Job, job_id).dataset_id  # type: ignore[union-attr]
    model = {"dataset_id": dataset_id, "architecture": {}, "weights": b"", "graph_svg": "",
             "metrics": {"loss": 0.5}}  # fmt: skip
    results = {"epoch": 1, "metrics": {"loss": 0.5, "val_loss": val_loss}}
    assert lifecycle.succeed(factory, attempt, results=results, model=model) == "succeeded"
    with factory() as session:
        return str(session.scalar(sa.select(TrainedModel.id).where(TrainedModel.job_id == job_id)))


def test_a_job_with_register_as_registers_its_model_when_it_succeeds(
    app: Flask, client: FlaskClient
) -> None:
    dataset_id = post_dataset(client, binary_dataset(40))
    bad = client.post(
        "/api/v1/jobs", json={"dataset_id": dataset_id, "register_as": "no way", **SPEC}
    )
    assert_error(bad, 422, "register_as")
    ids = []
    for _ in range(2):
        r = client.post(
            "/api/v1/jobs", json={"dataset_id": dataset_id, "register_as": "churn", **SPEC}
        )
        assert r.status_code == 202 and r.get_json()["register_as"] == "churn"
        ids.append(r.get_json()["id"])
    assert_error(client.get(f"{URL}/churn"), 404)  # nothing until a job succeeds
    models = [finish(app, job_id, 0.3) for job_id in ids]
    got = client.get(f"{URL}/churn").get_json()
    assert [(v["version"], v["model_id"], v["key_id"]) for v in got["versions"]] == [
        (1, models[0], None), (2, models[1], None),
    ]  # fmt: skip


def test_a_sweep_with_register_as_registers_its_best_model(app: Flask, client: FlaskClient) -> None:
    body = {
        "dataset_id": post_dataset(client, binary_dataset(40)),
        "base": SPEC,
        "parameters": {"training.learning_rate": {"values": [0.01, 0.1, 0.2]}},
        "register_as": "swept",
    }
    assert_error(
        client.post("/api/v1/sweeps", json={**body, "base": {**SPEC, "register_as": "x"}}),
        422,
        "base.register_as",
    )
    r = client.post("/api/v1/sweeps", json=body)
    assert r.status_code == 202, r.get_json()
    sweep = r.get_json()
    assert sweep["register_as"] == "swept"
    trials = [t["job_id"] for t in sweep["trials"]]
    models = [
        finish(app, job_id, value) for job_id, value in zip(trials, [0.4, 0.2, 0.3], strict=True)
    ]
    assert_error(client.get(f"{URL}/swept"), 404)  # trials register nothing themselves
    factory = app.extensions["db_sessionmaker"]
    sweeps.advance(factory, app.extensions["celery"], sweep["id"], app.config["LIMITS"])
    assert client.get(f"/api/v1/sweeps/{sweep['id']}").get_json()["status"] == "succeeded"
    got = client.get(f"{URL}/swept").get_json()
    assert [(v["version"], v["model_id"]) for v in got["versions"]] == [(1, models[1])]
    sweeps.advance(factory, app.extensions["celery"], sweep["id"], app.config["LIMITS"])
    assert client.get(f"{URL}/swept").get_json()["latest_version"] == 1  # once


# -- concurrency (PostgreSQL) ---------------------------------------------------------------------


def in_threads(n: int, work: Any) -> list[Any]:
    results: list[Any] = [None] * n
    errors: list[BaseException] = []
    start = threading.Barrier(n)

    def run(i: int) -> None:
        try:
            start.wait()
            results[i] = work(i)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    return results


@pytest.mark.postgres
@pytest.mark.parametrize("app", ["postgres"], indirect=True)
def test_concurrent_registrations_get_distinct_versions(
    app: Flask, client: FlaskClient, api_key: str
) -> None:
    model_id, _, _ = add_model(app, [3, 1], "mse", None)
    n = 12

    def work(_: int) -> int:
        return register(keyed_client(app, api_key), "race", model_id)

    versions = in_threads(n, work)
    assert sorted(versions) == list(range(1, n + 1))
    got = client.get(f"{URL}/race").get_json()
    assert [v["version"] for v in got["versions"]] == list(range(1, n + 1))


@pytest.mark.postgres
@pytest.mark.parametrize("app", ["postgres"], indirect=True)
def test_alias_moves_are_atomic_under_concurrent_predicts(
    app: Flask, client: FlaskClient, api_key: str
) -> None:
    m1, m2 = two_models(app)
    register(client, "churn", m1)
    register(client, "churn", m2)
    client.put(f"{URL}/churn/aliases/champion", json={"version": 1})
    rows = {"features": [[0.5, 1.0], [-1.0, 2.0]]}
    expected = [client.post(f"/api/v1/models/{m}/predict", json=rows).get_json() for m in (m1, m2)]
    assert expected[0] != expected[1]
    moving = threading.Event()
    moving.set()

    def work(i: int) -> list[Any]:
        mine = keyed_client(app, api_key)
        if i == 0:  # the mover
            for k in range(40):
                r = mine.put(f"{URL}/churn/aliases/champion", json={"version": 2 - k % 2})
                assert r.status_code == 200
            moving.clear()
            return []
        seen = []
        while moving.is_set():
            r = mine.post("/api/v1/models/churn@champion/predict", json=rows)
            assert r.status_code == 200, r.get_data(as_text=True)
            seen.append(expected.index(r.get_json()))  # one of the two, whole
        return seen

    seen = [s for answers in in_threads(5, work)[1:] for s in answers]
    assert len(seen) >= 20 and set(seen) == {0, 1}
    history = client.get(f"{URL}/churn").get_json()["aliases"][0]["history"]
    assert len(history) == 41
    assert all(h["from"] == prev["to"] for prev, h in itertools.pairwise(history))
