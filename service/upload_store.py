"""The bytes of resumable uploads (`service.uploads`), in the dataset store beside the datasets
(`service.dataset_store`: `file://` or `s3://`), never in an API process's memory or on its
disk: each accepted PATCH body is its own object, `{root}/uploads/{upload_id}/chunk-{start
offset:016d}-{random}` (S3 objects cannot be appended to). The random tail keeps two API
processes that take the same offset at once from writing one object: the one whose conditional
UPDATE of the offset wins keeps its chunk, the other deletes its own. A completed upload is read
back as one stream, chunk after chunk (`ChunkReader`).
"""

from __future__ import annotations

import contextlib
import hashlib
import posixpath
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO

import pyarrow.fs as pafs

from service.dataset_store import StoreError, store_for

_PREFIX = "uploads"
#: a chunk streams from the request to the store this many bytes at a time
COPY_BLOCK = 1 << 20


class BodyCut(Exception):
    """The request body ended early: the client's connection was cut."""


@dataclass(frozen=True)
class WrittenChunk:
    name: str
    size: int
    #: the digest of the algorithm asked for, or None
    digest: bytes | None
    #: the body ended before its announced length (the connection was cut)
    cut: bool
    #: the body carried more than `max_bytes`
    over: bool


class UploadStore:
    """The chunk objects of every upload under one store URL."""

    def __init__(self, url: str) -> None:
        self.store = store_for(url)
        self.fs, self.root = self.store.fs, self.store.root

    def _dir(self, upload_id: str) -> str:
        return posixpath.join(self.root, _PREFIX, upload_id)

    def write(
        self, upload_id: str, start: int, body: BinaryIO, max_bytes: int, algorithm: str | None
    ) -> WrittenChunk:
        """Stream `body` (at most `max_bytes`, read a MiB at a time) to a new chunk object. A
        body that stops early (`BodyCut` from its `read`) keeps what arrived."""
        name = f"chunk-{start:016d}-{secrets.token_hex(4)}"
        path = posixpath.join(self._dir(upload_id), name)
        digest = hashlib.new(algorithm) if algorithm else None
        size, cut = 0, False
        try:
            if isinstance(self.fs, pafs.LocalFileSystem):
                self.fs.create_dir(self._dir(upload_id), recursive=True)
            out = self.fs.open_output_stream(path)
        except OSError as exc:
            raise StoreError(f"the dataset store is unavailable: {exc}") from exc
        try:
            while size <= max_bytes:
                try:
                    data = body.read(min(COPY_BLOCK, max_bytes + 1 - size))
                except BodyCut:
                    cut = True
                    break
                if not data:
                    break
                size += len(data)
                if size > max_bytes:
                    break
                if digest is not None:
                    digest.update(data)
                out.write(data)
        except OSError as exc:
            self._close_and_delete(out, path)
            raise StoreError(f"the dataset store is unavailable: {exc}") from exc
        except BaseException:
            self._close_and_delete(out, path)
            raise
        try:
            out.close()
        except OSError as exc:
            self.delete_chunk(upload_id, name)
            raise StoreError(f"the dataset store is unavailable: {exc}") from exc
        over = size > max_bytes
        return WrittenChunk(
            name, min(size, max_bytes), digest.digest() if digest else None, cut, over
        )

    def _close_and_delete(self, out: Any, path: str) -> None:
        with contextlib.suppress(OSError):
            out.close()
        with contextlib.suppress(OSError):  # else the sweep of expired uploads deletes it
            self.fs.delete_file(path)

    def delete_chunk(self, upload_id: str, name: str) -> None:
        try:
            self.fs.delete_file(posixpath.join(self._dir(upload_id), name))
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise StoreError(f"could not delete a chunk of upload {upload_id}: {exc}") from exc

    def delete(self, upload_id: str) -> None:
        """Remove every chunk of the upload (nothing to do when there are none)."""
        try:
            self.fs.delete_dir(self._dir(upload_id))
        except FileNotFoundError:
            pass
        except OSError as exc:
            if self.names(upload_id):
                raise StoreError(f"could not delete upload {upload_id}: {exc}") from exc

    def names(self, upload_id: str) -> list[str]:
        """The upload's chunk objects in the store, in name order ([] when none)."""
        try:
            infos = self.fs.get_file_info(pafs.FileSelector(self._dir(upload_id)))
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise StoreError(f"the dataset store is unavailable: {exc}") from exc
        return sorted(posixpath.basename(i.path) for i in infos if i.type == pafs.FileType.File)

    def upload_ids(self) -> dict[str, float]:
        """Every upload folder in the store: id -> its newest chunk's modification time (epoch
        seconds; 0 when unknown)."""
        return self.store.dataset_ids(_PREFIX)

    def reader(self, upload_id: str, names: Sequence[str]) -> ChunkReader:
        return ChunkReader(self.fs, [posixpath.join(self._dir(upload_id), n) for n in names])


class ChunkReader:
    """The chunks of an upload as one binary stream, opened one at a time."""

    def __init__(self, fs: pafs.FileSystem, paths: list[str]) -> None:
        self.fs = fs
        self.paths = list(paths)
        self.current: Any = None

    def read(self, size: int = -1) -> bytes:
        size = COPY_BLOCK if size is None or size < 0 else size
        while True:
            if self.current is None:
                if not self.paths:
                    return b""
                try:
                    self.current = self.fs.open_input_stream(self.paths.pop(0))
                except OSError as exc:
                    raise StoreError(f"the dataset store is unavailable: {exc}") from exc
            try:
                data = self.current.read(size)
            except OSError as exc:
                raise StoreError(f"the dataset store is unavailable: {exc}") from exc
            if data:
                return bytes(data)
            self.current.close()
            self.current = None

    def peek_head(self, n: int) -> bytes:
        """The first `n` bytes of the file, across chunks (to tell a Parquet file by its
        magic: a cut PATCH can leave a first chunk shorter than that)."""
        head = b""
        try:
            for path in self.paths:
                if len(head) >= n:
                    break
                with self.fs.open_input_stream(path) as chunk:
                    head += bytes(chunk.read(n - len(head)))
            return head
        except OSError as exc:
            raise StoreError(f"the dataset store is unavailable: {exc}") from exc

    def close(self) -> None:
        if self.current is not None:
            self.current.close()
            self.current = None
