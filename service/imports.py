"""Datasets by reference: a dataset made from an object already in an object store (or a local
folder, embedded mode), by a job of kind "import" on a worker; its bytes never pass through the
API.

- **Allowed sources** (`check_allowed`): only URLs under one of the prefixes that
  `TRAINYARD_IMPORT_PREFIXES` lists (comma-separated; empty, the default, allows none), on a
  path-segment boundary, after the path is decoded exactly once and normalised (`file://`
  links resolved); never under the service's own store (`TRAINYARD_STORE_URL`). Anything else
  is a 403 saying why; see `normalised` for what is refused as malformed (422).
  `s3://bucket/key` objects are read with the store's S3 settings (`AWS_ENDPOINT_URL`, ...),
  `file:///path` from the worker's disk.
- **Formats** (`source_format`): a `.csv` / `.tsv` (also `.gz`) object is CSV, read as a
  stream (progress in bytes); a `.parquet` object, or a prefix ending in `/` (its `*.parquet`
  parts, in name order, as one table), is Parquet, read a row group at a time where it lies
  (progress in rows).
- **Submit** (`submit`, `POST /datasets` with `{"source", "name", "target", "column_types"}`):
  the job is committed `queued` and published to the import task; it lives the life of every
  job (`service.lifecycle`).
- **Run** (`workers.importing`, with `ingest`): the rows go through the same typing and storing
  as an upload (`service.table_stream`, `service.csv_stream`); the dataset's row is added in the
  transaction that ends the job `succeeded` (`lifecycle.succeed`'s `made`), whose `dataset_id`
  then names it. A cancel (seen between two blocks, about once a second) or a failure leaves
  nothing stored.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Callable, Mapping
from typing import Any, BinaryIO
from urllib.parse import unquote, urlparse

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from sqlalchemy.orm import Session

from service import lifecycle
from service.config import Limits
from service.csv_stream import CsvFacts, CsvOptions
from service.dataset_store import DatasetStore, StoredRows, StoreError, s3_filesystem
from service.jobs import check_active_jobs
from service.problems import ApiError, InputError
from service.table_stream import CSV, PARQUET, ingest_parquet_files, ingest_upload
from service.tables import Job

SETTING = "TRAINYARD_IMPORT_PREFIXES"
CSV_SUFFIXES = (".csv", ".tsv", ".csv.gz", ".tsv.gz")


def prefixes_of(setting: str) -> list[str]:
    """The allowed prefixes in the setting's text (comma-separated, blanks dropped)."""
    return [p.strip() for p in setting.split(",") if p.strip()]


def _canonical_path(scheme: str, path: str) -> str:
    """A decoded path without `.` segments or doubled `/` (a trailing `/` kept); for `file://`
    also with its symbolic links resolved (`os.path.realpath`), so that a link inside an
    allowed folder cannot point out of it."""
    folder = path.endswith("/")
    if scheme == "file":
        path = os.path.realpath(path or "/")
    else:
        path = posixpath.normpath(path) if path not in ("", "/") else "/"
    if folder and not path.endswith("/"):
        path += "/"
    return path


def normalised(source: str) -> str:
    """`source` decoded once and normalised (the URL that is checked, stored and opened: it is
    never decoded again); a 422 for what is not an `s3://` or `file://` URL, and for a `?`,
    `#`, `..` segment, control character, or `%` left after decoding."""
    if "?" in source or "#" in source:
        raise InputError("source", "may not hold '?' or '#'")
    parsed = urlparse(source)
    if parsed.scheme not in ("s3", "file"):
        raise InputError("source", "must be an s3://bucket/key or file:///path URL")
    if parsed.scheme == "s3" and not parsed.netloc:
        raise InputError("source", "names no bucket (s3://bucket/key)")
    if parsed.scheme == "file" and parsed.netloc not in ("", "localhost"):
        raise InputError("source", "a file:// URL names a path on the worker (file:///path)")
    path = unquote(parsed.path)
    if "%" in path or "?" in path or "#" in path:
        raise InputError("source", "may not hold '%', '?' or '#' once decoded (encoded twice?)")
    if any(ord(c) < 32 or ord(c) == 127 for c in path) or ".." in path.split("/"):
        raise InputError("source", "may not hold '..' segments or control characters")
    netloc = parsed.netloc if parsed.scheme == "s3" else ""
    return f"{parsed.scheme}://{netloc}{_canonical_path(parsed.scheme, path)}"


def _canonical_prefix(prefix: str) -> str:
    """A prefix (or the store's URL) as `normalised` writes sources, without its trailing `/`."""
    parsed = urlparse(prefix)
    netloc = parsed.netloc if parsed.scheme == "s3" else ""
    path = _canonical_path(parsed.scheme, unquote(parsed.path))
    return f"{parsed.scheme}://{netloc}{path}".rstrip("/")


def under(url: str, prefix: str) -> bool:
    """Whether normalised `url` is `prefix` or lies below it, on a path-segment boundary
    (`s3://bucket/allowed` holds `s3://bucket/allowed/x`, not `s3://bucket/allowed-evil/x`)."""
    base = _canonical_prefix(prefix)
    return url.rstrip("/") == base or url.startswith(base + "/")


def check_allowed(source: str, prefixes: list[str], store_url: str | None = None) -> str:
    """The normalised source, if it lies under one of `prefixes` and not in the service's own
    store (`store_url`: other owners' datasets and predictions); else a 403 saying why."""
    url = normalised(source)
    if not any(under(url, prefix) for prefix in prefixes):
        allowed = ", ".join(prefixes) if prefixes else "none: it is empty"
        raise ApiError(
            403,
            f"Importing {url} is not allowed: only sources under the prefixes that {SETTING} "
            f"lists may be imported ({allowed}).",
            code="import_not_allowed",
        )
    if store_url and under(url, store_url):
        raise ApiError(
            403,
            f"Importing {url} is not allowed: it lies in the service's own store "
            "(TRAINYARD_STORE_URL), which holds every owner's datasets and predictions.",
            code="import_not_allowed",
        )
    return url


def source_format(url: str) -> tuple[str, str]:
    """(format, progress unit) of a source: ("csv", "bytes") or ("parquet", "rows")."""
    path = urlparse(url).path.lower()
    if path.endswith("/") or path.endswith(".parquet"):
        return PARQUET, "rows"
    if path.endswith(CSV_SUFFIXES):
        return CSV, "bytes"
    raise InputError(
        "source",
        "must name a .csv or .tsv object (also .gz), a .parquet object, or a folder of "
        "Parquet parts (ending in /)",
    )


def submit(
    session: Session,
    data: Mapping[str, Any],
    owner: str,
    limits: Limits,
    prefixes: list[str],
    store_url: str | None = None,
) -> Job:
    """Validate an import request and add its job, `queued` (flushed; the caller commits, then
    publishes with kind "import")."""
    url = check_allowed(str(data["source"]), prefixes, store_url)
    fmt, unit = source_format(url)
    check_active_jobs(session, owner, limits)
    name = data.get("name") or posixpath.basename(urlparse(url).path.rstrip("/")) or "import"
    options = {
        "name": name,
        "target": data.get("target"),
        "column_types": data.get("column_types"),
        "format": fmt,
        "unit": unit,
    }
    return lifecycle.submit_import(
        session, owner=owner, source=url, options=options, tags=data.get("tags")
    )


# -- the worker's side ---------------------------------------------------------------------------


def filesystem(url: str) -> tuple[pafs.FileSystem, str]:
    """The `pyarrow.fs` filesystem of a source (as `normalised` stored it: already decoded, so
    not decoded again) and its path there. A `file://` path that now holds a symbolic link
    (made after the check) is refused."""
    parsed = urlparse(url)
    if parsed.scheme == "s3":
        return s3_filesystem(), f"{parsed.netloc}{parsed.path}"
    if _canonical_path("file", parsed.path) != parsed.path:
        raise InputError("source", "holds a symbolic link (made after it was allowed)")
    return pafs.LocalFileSystem(), parsed.path


class _Counting:
    """A source stream that reports the bytes read so far (`on_bytes(n)`)."""

    def __init__(self, raw: Any, on_bytes: Callable[[int], None]) -> None:
        self.raw = raw
        self.on_bytes = on_bytes
        self.count = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        data = bytes(self.raw.read(size if size is not None and size >= 0 else -1))
        self.count += len(data)
        self.on_bytes(self.count)
        return data


def ingest(
    job: Mapping[str, Any],
    limits: Limits,
    store: DatasetStore,
    dataset_id: str,
    on_progress: Callable[[int, int], None],
) -> tuple[CsvFacts, StoredRows]:
    """Read an import job's source (`job`: its `source` and `import_options`) into the store as
    dataset `dataset_id`, calling `on_progress(done, total)` as it goes (bytes or rows; it may
    raise to stop, and then nothing stays stored). Source errors are 4xx `InputError`s on
    `source` (the job fails with their message); a store that is down a `StoreError`."""
    options = dict(job["import_options"] or {})
    csv_options = CsvOptions(
        name=str(options.get("name") or "import"),
        target=options.get("target"),
        column_types=options.get("column_types"),
    )
    fs, path = filesystem(job["source"])
    try:
        if options.get("format") == CSV:
            total = fs.get_file_info(path).size or 0
            # compression=None: the bytes as stored (the reader un-gzips), so that progress
            # counts what `total` counts
            with fs.open_input_stream(path, compression=None) as raw:
                counted = _Counting(raw, lambda n: on_progress(n, total))
                stream: BinaryIO = counted  # type: ignore[assignment]
                return ingest_upload(
                    CSV, stream, csv_options, limits, store, dataset_id, field="source"
                )
        if path.endswith("/"):
            infos = fs.get_file_info(pafs.FileSelector(path.rstrip("/"), recursive=False))
            paths = sorted(
                i.path
                for i in infos
                if i.type == pafs.FileType.File and i.path.endswith(".parquet")
            )
        else:
            paths = [path]
        if isinstance(fs, pafs.LocalFileSystem) and any(os.path.realpath(p) != p for p in paths):
            raise InputError("source", "holds a symbolic link among its Parquet parts")
        parts = [pq.ParquetFile(fs.open_input_file(p)) for p in paths]
        total = sum(part.metadata.num_rows for part in parts)
        done = 0

        def counted_rows(batch: pa.RecordBatch) -> None:
            nonlocal done
            done += batch.num_rows
            on_progress(done, total)

        return ingest_parquet_files(
            parts, csv_options, limits, store, dataset_id, on_batch=counted_rows
        )
    except FileNotFoundError as exc:
        raise InputError("source", f"{job['source']} does not exist ({exc})") from None
    except StoreError:
        raise
    except (OSError, pa.ArrowException) as exc:
        if isinstance(exc, pa.ArrowInvalid):
            raise InputError("source", f"is not readable: {str(exc)[:300]}") from None
        raise InputError("source", f"could not be read: {str(exc)[:300]}") from None
