"""Resumable uploads from the client: the tus 1.0 protocol against `/api/v1/uploads`.

A file is sent in chunks (`CHUNK_SIZE`, 16 MiB), each PATCH with its SHA-1 in
`Upload-Checksum`, so the server keeps only bytes that arrived whole. A connection error, a
timeout or a 5xx waits (1, 2, 4, ... s, at most 30 s), asks the server for its offset (HEAD) and
goes on from there; `MAX_FAILURES` failures in a row end the upload, which stays resumable. The
upload's URL is remembered in `uploads.json` of the user's config folder
(`$XDG_CONFIG_HOME/trainyard`, by default `~/.config/trainyard`), keyed by the file's absolute
path, size and modification time and a hash of the metadata, so running the same upload again
with the same options after an interruption (Ctrl-C, a crash, a failure) resumes it; the entry
is removed once the dataset is made (or the upload is gone or refused for good). Once every
byte is sent, it waits, asking GET /uploads/{id} less and less often, while the dataset is
`completing`. Only one chunk is ever in memory.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from client.errors import ApiError, ConnectionFailed, NotFoundError

if TYPE_CHECKING:
    from client.api import Client

TUS: Final = {"Tus-Resumable": "1.0.0"}
CHUNK_SIZE: Final = 16 << 20
MAX_FAILURES: Final = 8
MAX_BACKOFF_S: Final = 30.0
#: how long the PATCH that completes the upload may wait for the dataset to be made
COMPLETION_TIMEOUT_S: Final = 3600.0
COMPLETION_POLL_MAX_S: Final = 5.0


def user_config_dir(env: Mapping[str, str] | None = None) -> Path:
    """`$XDG_CONFIG_HOME/trainyard`, by default `~/.config/trainyard`."""
    env = os.environ if env is None else env
    config = env.get("XDG_CONFIG_HOME") or str(Path(env.get("HOME") or Path.home()) / ".config")
    return Path(config) / "trainyard"


class UploadStates:
    """The URLs of unfinished uploads, by file (`uploads.json`)."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or user_config_dir() / "uploads.json"

    @staticmethod
    def key(file: Path, metadata: Mapping[str, str] | None = None) -> str:
        """The file as it is now: absolute path, size and modification time (a changed file is
        another upload), and a hash of the upload's metadata (other options, another upload)."""
        stat = file.stat()
        options = json.dumps(dict(metadata or {}), sort_keys=True).encode()
        digest = hashlib.sha256(options).hexdigest()[:16]
        return f"{file.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{digest}"

    def _read(self) -> dict[str, str]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _write(self, data: dict[str, str]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_suffix(".json.partial")
        partial.write_text(json.dumps(data, indent=1, sort_keys=True))
        partial.replace(self.path)

    def get(self, key: str) -> str | None:
        return self._read().get(key)

    def remember(self, key: str, url: str) -> None:
        self._write({**self._read(), key: url})

    def forget(self, key: str) -> None:
        data = self._read()
        if data.pop(key, None) is not None:
            self._write(data)


def encode_metadata(pairs: Mapping[str, str]) -> str:
    """`Upload-Metadata`: `key base64(value)` pairs, comma-separated."""
    return ",".join(
        f"{key} {base64.b64encode(value.encode()).decode()}" for key, value in pairs.items()
    )


def _chunks(file: Path, offset: int, size: int) -> Iterator[tuple[int, bytes]]:
    with file.open("rb") as f:
        f.seek(offset)
        while True:
            data = f.read(size)
            if not data:
                return
            yield offset, data
            offset += len(data)


class ResumableUpload:
    """One file's upload (see the module); `run()` returns the dataset's id."""

    def __init__(
        self,
        client: Client,
        file: Path,
        metadata: Mapping[str, str],
        *,
        chunk_size: int = CHUNK_SIZE,
        states: UploadStates | None = None,
        on_progress: Callable[[int, int], None] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.client = client
        self.file = file
        self.metadata = dict(metadata)
        self.chunk_size = chunk_size
        self.states = states or UploadStates()
        self.on_progress = on_progress or (lambda _sent, _total: None)
        self.sleep = sleep
        self.length = file.stat().st_size
        self.key = UploadStates.key(file, self.metadata)
        self.url: str | None = None
        #: where the upload started this time (0 for a new one)
        self.resumed_at = 0

    # -- requests ---------------------------------------------------------------------------

    def _path(self) -> str:
        assert self.url is not None
        return self.url.removeprefix(self.client.url).removeprefix("/api/v1")

    def _head(self) -> tuple[int, str | None]:
        response = self.client.request("HEAD", self._path(), headers=TUS)
        return int(response.headers["Upload-Offset"]), response.headers.get("Upload-Dataset-Id")

    def _create(self) -> None:
        response = self.client.request(
            "POST",
            "/uploads",
            headers={
                **TUS,
                "Upload-Length": str(self.length),
                "Upload-Metadata": encode_metadata(self.metadata),
            },
        )
        location = response.headers["Location"]
        self.url = location if "://" in location else f"{self.client.url}{location}"
        self.states.remember(self.key, self.url)

    def _patch(self, offset: int, data: bytes) -> str | None:
        digest = base64.b64encode(hashlib.sha1(data).digest()).decode()
        last = offset + len(data) == self.length
        headers = {
            **TUS,
            "Upload-Offset": str(offset),
            "Content-Type": "application/offset+octet-stream",
            "Upload-Checksum": f"sha1 {digest}",
        }
        # the last chunk's answer comes once the dataset is made
        wait = {"timeout": (self.client.timeout, COMPLETION_TIMEOUT_S)} if last else {}
        response = self.client.request("PATCH", self._path(), data=data, headers=headers, **wait)
        return response.headers.get("Upload-Dataset-Id")

    # -- the loop ---------------------------------------------------------------------------

    def _start(self) -> tuple[int, str | None]:
        """The offset to go on from (and the dataset, if it is already made)."""
        self.url = self.states.get(self.key)
        if self.url is not None and self.url.startswith(self.client.url):
            try:
                offset, dataset_id = self._head()
                self.resumed_at = offset
                return offset, dataset_id
            except NotFoundError:
                pass
            except ApiError as exc:
                if exc.status != 410:  # expired: start again
                    raise
        self._create()
        return 0, None

    def run(self) -> str:
        offset, dataset_id = self._start()
        failures = 0
        self.on_progress(offset, self.length)
        while dataset_id is None:
            try:
                if offset < self.length:
                    for start, data in _chunks(self.file, offset, self.chunk_size):
                        dataset_id = self._patch(start, data)
                        offset = start + len(data)
                        failures = 0
                        self.on_progress(offset, self.length)
                else:
                    dataset_id = self._finish()
                if dataset_id is None:  # the file shrank?
                    offset, dataset_id = self._head()
                    if offset == self.length and dataset_id is None:
                        dataset_id = self._finish()
            except (ConnectionFailed, ApiError) as exc:
                status = exc.status if isinstance(exc, ApiError) else None
                retry = status is None or status in (409, 460) or status >= 500
                if not retry:
                    if status in (404, 410, 413, 415, 422):  # a 400 may be resumable
                        self.states.forget(self.key)  # nothing to resume
                    raise
                failures += 1
                if failures > MAX_FAILURES:
                    raise
                if status not in (409, 460):
                    self.sleep(min(MAX_BACKOFF_S, 2.0 ** (failures - 1)))
                offset, dataset_id = self._offset_after_failure()
        self.states.forget(self.key)
        return dataset_id

    def _offset_after_failure(self) -> tuple[int, str | None]:
        with contextlib.suppress(ConnectionFailed):
            return self._head()
        return self._head()  # once more; a second failure ends the upload

    def _finish(self) -> str | None:
        """All bytes are there: wait while the dataset is being made, or ask for it again (a
        completion that failed for want of the store)."""
        assert self.url is not None
        deadline = time.monotonic() + COMPLETION_TIMEOUT_S
        delay = 0.5
        while time.monotonic() < deadline:
            upload: dict[str, Any] = self.client.request("GET", self._path()).json()
            if upload["status"] == "completed":
                return str(upload["dataset_id"])
            if upload["status"] == "failed":
                self.states.forget(self.key)
                raise ApiError(422, "validation_error", upload["error"] or "failed", None)
            if upload["status"] == "receiving":
                return self._patch(self.length, b"")
            self.sleep(delay)  # "completing": the dataset is being made
            delay = min(COMPLETION_POLL_MAX_S, delay * 1.5)
        return None
