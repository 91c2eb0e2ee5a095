"""The committed corpus of malformed requests (tests/service/corpus/cases.json and bodies/).

Each case names a method, a path, a content type and a body (inline text, a file under
`bodies/`, or a multipart form with files), and the answer it must get: its status, error
`code` and, where a field is at fault, the field. `{dataset_id}` and `{model_id}` in paths and
bodies stand for an existing dataset and model of the caller. `request_bytes` turns a case into
exact bytes, so the Flask test client and a real HTTP client send the very same request.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CORPUS = Path(__file__).resolve().parent / "corpus"
BOUNDARY = "trainyard-corpus-boundary-7d1f"


@dataclass
class CorpusRequest:
    name: str
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    status: int
    code: str
    field: str | None


def load_cases() -> list[dict[str, Any]]:
    return json.loads((CORPUS / "cases.json").read_text())


def _fill(text: str, ids: dict[str, str]) -> str:
    for name, value in ids.items():
        text = text.replace("{" + name + "}", value)
    return text


def _multipart(case: dict[str, Any]) -> bytes:
    parts: list[bytes] = []
    for name, value in case.get("form", {}).items():
        parts.append(
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
            + value.encode()
            + b"\r\n"
        )
    for name, spec in (case.get("files") or {}).items():
        data = (CORPUS / "bodies" / spec["body_file"]).read_bytes()
        head = (
            f"--{BOUNDARY}\r\nContent-Disposition: form-data; name={json.dumps(name)}; "
            f"filename={json.dumps(spec['filename'])}\r\nContent-Type: text/csv\r\n\r\n"
        )
        parts.append(head.encode() + data + b"\r\n")
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


def request_bytes(case: dict[str, Any], ids: dict[str, str]) -> CorpusRequest:
    headers: dict[str, str] = {}
    content_type = case.get("content_type")
    if "form" in case or "files" in case:
        body = _multipart(case)
        headers["Content-Type"] = f"multipart/form-data; boundary={BOUNDARY}"
    else:
        if "body_file" in case:
            body = (CORPUS / "bodies" / case["body_file"]).read_bytes()
        else:
            body = _fill(case.get("body", ""), ids).encode()
        if content_type is not None:
            headers["Content-Type"] = content_type
    return CorpusRequest(
        name=case["name"],
        method=case["method"],
        path=_fill(case["path"], ids),
        headers=headers,
        body=body,
        status=case["status"],
        code=case["code"],
        field=case.get("field"),
    )


def check_error_body(status: int, content_type: str, body: bytes, req: CorpusRequest) -> None:
    """The answer is the expected error, in the one error format."""
    assert status == req.status, (req.name, status, body[:300])
    assert content_type.startswith("application/json"), (req.name, content_type)
    error = json.loads(body)["error"]
    assert set(error) <= {"code", "message", "fields"}, req.name
    assert error["code"] == req.code, (req.name, error)
    assert isinstance(error["message"], str) and error["message"], req.name
    if "fields" in error:
        assert error["fields"] and all(isinstance(v, str) for v in error["fields"].values())
    if req.field is not None:
        fields = error.get("fields", {})
        assert any(f == req.field or f.startswith(req.field + ".") for f in fields), (
            req.name,
            error,
        )
