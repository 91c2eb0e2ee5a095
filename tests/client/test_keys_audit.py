"""API keys and the audit log through the client and the `trainyard` command, against the live
embedded service (whose auto-created key keeps working: it is a `write` key)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from client import ApiError, Client
from tests.client.test_cli import trainyard
from tests.support import LiveService

pytestmark = pytest.mark.slow


def test_client_keys_and_audit(service: LiveService) -> None:
    api = service.client()
    made = api.create_key(name="reader", scope="read")
    assert made["key"].startswith("ty_") and made["scope"] == "read"
    reader = Client(service.url, made["key"], timeout=30)
    assert reader.list_datasets()["pagination"]["total"] >= 0
    with pytest.raises(ApiError) as refused:
        reader.create_key()
    assert refused.value.status == 403 and "read" in str(refused.value)
    ids = [k["id"] for k in api.list_keys(page_size=100)["items"]]
    assert made["id"] in ids
    rotated = api.rotate_key(made["id"])
    assert rotated["id"] != made["id"] and rotated["scope"] == "read"
    with pytest.raises(ApiError) as gone:
        reader.list_datasets()
    assert gone.value.status == 401
    api.revoke_key(rotated["id"])
    entries = api.audit(action="key")["items"]
    assert [e["action"] for e in entries[:4]] == [
        "key.revoke", "key.rotate", "key.create", "key.create",
    ]  # fmt: skip
    assert [e["status_code"] for e in entries[:4]] == [204, 201, 403, 201]


def test_cli_keys_and_audit(service: LiveService, tmp_path: Path) -> None:
    run = lambda *a: trainyard(service, *a, cwd=tmp_path)  # noqa: E731
    created = run("keys", "create", "--name", "ci-bot", "--scope", "read")
    assert created.returncode == 0, created.stderr
    secret = created.stdout.strip()
    assert secret.startswith("ty_") and "cannot be shown again" in created.stderr
    listed = run("keys", "list", "--page-size", "100")
    assert listed.returncode == 0 and "ci-bot" in listed.stdout and secret not in listed.stdout
    key_id = next(
        k["id"]
        for k in json.loads(run("--json", "keys", "list", "--page-size", "100").stdout)["items"]
        if k["name"] == "ci-bot" and k["revoked_at"] is None
    )
    rotated = run("--json", "keys", "rotate", key_id)
    assert rotated.returncode == 0 and json.loads(rotated.stdout)["name"] == "ci-bot"
    revoked = run("keys", "revoke", json.loads(rotated.stdout)["id"])
    assert revoked.returncode == 0 and "revoked" in revoked.stdout
    audit = run("audit", "--action", "key.rotate")
    assert audit.returncode == 0 and "key.rotate" in audit.stdout and "201" in audit.stdout
    assert "key.create" not in audit.stdout
    missing = run("keys", "revoke", "0" * 32)
    assert missing.returncode == 4  # not found
