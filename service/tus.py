"""The tus 1.0 resumable-upload protocol's wire format (https://tus.io/protocols/resumable-upload):
its headers, how `Upload-Metadata` and `Upload-Checksum` are written, and the
`X-HTTP-Method-Override` of clients that can only send GET and POST. What an upload is and
where its bytes go is `service.uploads`'."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable, Iterable
from typing import Any

from service.problems import ApiError

VERSION = "1.0.0"
EXTENSIONS = ("creation", "termination", "checksum", "expiration")
CHECKSUM_ALGORITHMS = ("sha1", "sha256")
OFFSET_CONTENT_TYPE = "application/offset+octet-stream"
#: answered with 460 when an `Upload-Checksum` does not match the chunk (the protocol's own
#: status, "Checksum Mismatch")
CHECKSUM_MISMATCH = 460
#: the headers a browser's script may read from a cross-origin answer (`Access-Control-Expose-
#: Headers`), as the protocol's clients need them
EXPOSED_HEADERS = (
    "Location",
    "Upload-Offset",
    "Upload-Length",
    "Upload-Metadata",
    "Upload-Expires",
    "Upload-Dataset-Id",
    "Tus-Resumable",
    "Tus-Version",
    "Tus-Extension",
    "Tus-Max-Size",
    "Tus-Checksum-Algorithm",
)
#: what a browser's preflight may ask to send (`Access-Control-Allow-Headers`)
ALLOWED_HEADERS = (
    "Authorization",
    "Content-Type",
    "Upload-Offset",
    "Upload-Length",
    "Upload-Metadata",
    "Upload-Checksum",
    "Upload-Defer-Length",
    "Upload-Concat",
    "Tus-Resumable",
    "X-HTTP-Method-Override",
    "X-Requested-With",
)


def precondition_failed() -> ApiError:
    """412: the request speaks another version of the protocol (or none)."""
    return ApiError(
        412,
        f"Tus-Resumable must be {VERSION}: this server speaks tus {VERSION} only.",
        code="precondition_failed",
        headers={"Tus-Version": VERSION},
    )


def check_version(value: str | None) -> None:
    if value != VERSION:
        raise precondition_failed()


def non_negative(name: str, value: str | None) -> int:
    """A header holding a non-negative integer (400 otherwise)."""
    if value is None or not value.isascii() or not value.isdigit() or len(value) > 19:
        raise ApiError(400, f"{name} must be a non-negative integer, not {value!r}.")
    return int(value)


def parse_metadata(value: str | None) -> dict[str, str]:
    """`Upload-Metadata`: comma-separated `key base64(value)` pairs (a key alone has the empty
    value); keys are unique ASCII without spaces or commas."""
    pairs: dict[str, str] = {}
    if not value or not value.strip():
        return pairs
    for item in value.split(","):
        parts = item.strip().split(" ")
        key = parts[0]
        if not key or not key.isascii() or len(parts) > 2 or key in pairs:
            raise ApiError(400, f"Upload-Metadata: {item.strip()!r} is not `key base64-value`.")
        try:
            raw = base64.b64decode(parts[1], validate=True) if len(parts) == 2 else b""
            pairs[key] = raw.decode("utf-8")
        except ValueError:  # binascii.Error, UnicodeDecodeError, a non-ASCII value
            raise ApiError(
                400, f"Upload-Metadata: the value of {key!r} is not base64 of UTF-8 text."
            ) from None
    return pairs


def encode_metadata(pairs: dict[str, str]) -> str:
    """The `Upload-Metadata` header of `pairs` (what a client sends)."""
    return ",".join(
        f"{key} {base64.b64encode(value.encode()).decode()}" if value else key
        for key, value in pairs.items()
    )


def parse_checksum(value: str | None) -> tuple[str, bytes] | None:
    """`Upload-Checksum: <algorithm> <base64 digest>` as (algorithm, digest); None if absent.
    An algorithm this server does not know is a 400, as the checksum extension says."""
    if value is None:
        return None
    algorithm, _, encoded = value.strip().partition(" ")
    if algorithm not in CHECKSUM_ALGORITHMS:
        raise ApiError(
            400,
            f"Upload-Checksum: the algorithm {algorithm!r} is not supported; use one of "
            f"{', '.join(CHECKSUM_ALGORITHMS)}.",
        )
    try:
        digest = base64.b64decode(encoded.strip(), validate=True)
    except ValueError:  # binascii.Error, or a non-ASCII digest
        raise ApiError(400, "Upload-Checksum: the digest is not base64.") from None
    if len(digest) != hashlib.new(algorithm).digest_size:
        raise ApiError(400, f"Upload-Checksum: not a {algorithm} digest.")
    return algorithm, digest


class MethodOverride:
    """WSGI middleware: a POST to `prefix...` with `X-HTTP-Method-Override: PATCH` (or DELETE,
    HEAD) is routed as that method, for tus clients in environments without them."""

    METHODS = ("PATCH", "DELETE", "HEAD", "GET", "OPTIONS")

    def __init__(self, app: Callable[..., Iterable[bytes]], prefix: str) -> None:
        self.app = app
        self.prefix = prefix

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        override = environ.get("HTTP_X_HTTP_METHOD_OVERRIDE", "").upper()
        if (
            override in self.METHODS
            and environ.get("REQUEST_METHOD") == "POST"
            and environ.get("PATH_INFO", "").startswith(self.prefix)
        ):
            environ["REQUEST_METHOD"] = override
        return self.app(environ, start_response)
