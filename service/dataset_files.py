"""A dataset file (CSV, Parquet or JSON lines) streamed into the store and added as a dataset:
the one path every file upload takes, whether its bytes come as a form, a raw body
(`POST /api/v1/datasets`) or the chunks of a resumable upload (`service.uploads`)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import PurePath
from typing import Any, BinaryIO

from sqlalchemy.orm import Session

from service import csv_stream, datasets, table_stream
from service.config import Limits
from service.csv_stream import CsvOptions
from service.dataset_store import StoreError, store_for
from service.problems import ApiError, InputError
from service.tables import Dataset, new_id

CSV_TYPES = ("text/csv", "text/tab-separated-values", "application/gzip", "application/x-gzip")
PARQUET_TYPES = ("application/vnd.apache.parquet", "application/x-parquet")
JSONL_TYPES = ("application/x-ndjson", "application/jsonl")
RAW_TYPES = CSV_TYPES + PARQUET_TYPES + JSONL_TYPES
FORMAT_OF_TYPE = {
    **dict.fromkeys(CSV_TYPES, table_stream.CSV),
    **dict.fromkeys(PARQUET_TYPES, table_stream.PARQUET),
    **dict.fromkeys(JSONL_TYPES, table_stream.JSONL),
}
FORMAT_OF_SUFFIX = {
    ".parquet": table_stream.PARQUET,
    ".pq": table_stream.PARQUET,
    ".jsonl": table_stream.JSONL,
    ".ndjson": table_stream.JSONL,
}


def format_of_name(filename: str) -> str | None:
    """The format a file name's suffix names (`.parquet`, `.jsonl`, `.ndjson`, also gzipped),
    or None when it names none."""
    suffixes = [s.lower() for s in PurePath(filename).suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes.pop()
    if suffixes and suffixes[-1] in FORMAT_OF_SUFFIX:
        return FORMAT_OF_SUFFIX[suffixes[-1]]
    return None


def column_types(raw: str | None) -> Any:
    """The `column_types` option: a JSON object as text (None when absent)."""
    if raw is None or raw == "":
        return None
    try:
        return json.loads(raw)
    except ValueError:
        raise InputError(
            "column_types", 'must be a JSON object such as {"zip": "categorical"}'
        ) from None


def file_options(form: dict[str, Any], name: str, block_size: int | None = None) -> CsvOptions:
    """The reading options of a file upload from its (validated) form, query or metadata."""
    return CsvOptions(
        name=name[:200],
        target=form.get("target"),
        column_types=column_types(form.get("column_types")),
        delimiter=form.get("delimiter"),
        encoding=form.get("encoding"),
        drop_missing_target=bool(form.get("drop_missing_target", False)),
        block_size=int(block_size or csv_stream.BLOCK_SIZE),
    )


def store_file(
    session: Session,
    owner: str,
    stream: BinaryIO,
    options: CsvOptions,
    *,
    limits: Limits,
    store_url: str,
    max_bytes: int,
    expected: int | None = None,
    fmt: str = table_stream.CSV,
) -> tuple[Dataset, list[dict[str, Any]]]:
    """Stream the file (CSV, Parquet or JSON lines) into the store, then add its row; on any
    failure nothing stays."""
    dataset_id = new_id()
    try:
        store = store_for(store_url)
        facts, stored = table_stream.ingest_upload(
            fmt,
            stream,
            options,
            limits,
            store,
            dataset_id,
            max_bytes=max_bytes,
            expected_bytes=expected,
        )
    except (StoreError, OSError) as exc:  # OSError: the store's root could not be made
        raise ApiError(503, f"The dataset store is unavailable: {exc}") from None
    try:
        dataset = datasets.create_dataset(
            session, datasets.DatasetFacts(**asdict(facts)), stored, owner, dataset_id
        )
    except BaseException:
        store.delete(dataset_id)
        raise
    return dataset, facts.warnings
