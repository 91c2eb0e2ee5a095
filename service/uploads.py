"""Resumable uploads (the tus protocol, `service.tus`): an SQL row per upload, its bytes as chunk
objects in the dataset store (`service.upload_store`), and the dataset it makes once its last
byte arrived.

- **Offsets.** A chunk is accepted by one conditional UPDATE (`offset = start + size WHERE
  offset = start`): of two API processes that take the same offset at once, one wins; the
  other deletes its chunk and answers 409. Any API process can take the next chunk: nothing of
  an upload lives in a process.
- **A cut body** keeps the bytes that arrived (the protocol's SHOULD) unless the chunk carried
  an `Upload-Checksum`, which a part cannot be checked against: such a chunk is deleted, as is
  one whose checksum does not match (460).
- **Completion.** The PATCH whose chunk brings the offset to the length streams the chunks, in
  order, through the same ingest as `POST /api/v1/datasets` (`service.dataset_files`), with
  the options of the upload's metadata (`name`, `target`, `column_types`, `delimiter`,
  `encoding`, `drop_missing_target`; `filetype` or `filename` pick CSV, Parquet or JSON lines,
  else a Parquet file is told by its first bytes). The dataset's id is recorded on the upload,
  in the transaction that adds the dataset; data that cannot be read records the error. Either
  way the chunks are deleted, unless the store could not be reached (503): then they stay, and
  a PATCH at the upload's end (no body) tries again.
- **Expiry.** An upload expires `TRAINYARD_UPLOAD_EXPIRE_HOURS` after its creation or its last
  accepted chunk (a finished one, after its completion); an unfinished expired upload answers
  410 until the workers' maintenance sweep (`delete_expired`) deletes its row and chunks, then
  404. Chunk folders without a row are deleted once old (`delete_orphan_chunks`).
"""

from __future__ import annotations

import contextlib
import hmac
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, BinaryIO

import sqlalchemy as sa
from sqlalchemy.orm import Session

from service import dataset_files, table_stream
from service.config import Limits
from service.csv_stream import CsvOptions
from service.dataset_store import ORPHAN_AFTER_S, StoreError, store_for
from service.db import iso_utc, utcnow
from service.problems import ApiError
from service.tables import Upload, is_id, new_id
from service.tus import CHECKSUM_MISMATCH
from service.upload_store import UploadStore

#: the metadata keys that are options of the dataset file (as the raw upload's query)
#: a completion that has not ended after this long was lost (its process killed): another
#: request may take it over
COMPLETION_LEASE_S = 3600.0
OPTION_KEYS = ("name", "target", "column_types", "delimiter", "encoding", "drop_missing_target")


@dataclass(frozen=True)
class Completion:
    """What making the dataset needs besides the upload: the API's settings."""

    options: CsvOptions
    limits: Limits
    store_url: str
    max_bytes: int


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def is_finished(upload: Upload) -> bool:
    return upload.dataset_id is not None or upload.error is not None


def create_upload(
    session: Session,
    owner: str,
    length: int,
    meta: dict[str, str],
    store_url: str,
    expire_hours: float,
) -> Upload:
    """Add an upload of `length` bytes (flushed; the caller commits)."""
    now = utcnow()
    upload = Upload(
        id=new_id(),
        owner=owner,
        length=length,
        offset=0,
        meta=meta,
        store_url=store_url,
        chunks=[],
        created_at=now,
        expires_at=now + timedelta(hours=expire_hours),
    )
    session.add(upload)
    session.flush()
    return upload


def find_upload(
    session: Session, upload_id: str, owner: str, now: datetime | None = None
) -> Upload:
    """The owner's upload: 404 when there is none (or another owner's), 410 once it expired
    unfinished."""
    upload = session.get(Upload, upload_id) if is_id(upload_id) else None
    if upload is None or upload.owner != owner:
        raise ApiError(404, f"No upload {upload_id}.")
    if not is_finished(upload) and _aware(upload.expires_at) <= (now or utcnow()):
        raise ApiError(
            410, f"Upload {upload_id} expired unfinished; its bytes are deleted.", code="gone"
        )
    return upload


def accept_chunk(
    session: Session,
    upload: Upload,
    start: int,
    body: BinaryIO,
    checksum: tuple[str, bytes] | None,
    expire_hours: float,
) -> tuple[int, bool]:
    """Store the PATCH body at `start` and advance the offset; (the new offset, whether the
    body was cut). 409 when `start` is not the upload's offset (or another request took it
    first), 413 past the upload's length, 460 on a checksum mismatch."""
    upload_id, length, offset, url = upload.id, upload.length, upload.offset, upload.store_url
    if is_finished(upload) or start != offset:
        raise ApiError(
            409,
            f"Upload-Offset is {start}, the upload's offset is {offset}"
            + (" (it is finished)." if is_finished(upload) else "."),
            code="conflict",
            headers={"Upload-Offset": str(offset)},
        )
    chunks = list(upload.chunks or [])
    session.commit()  # no transaction stays open while the body streams in
    store = UploadStore(url)
    written = store.write(upload_id, start, body, length - start, checksum and checksum[0])
    if written.over:
        store.delete_chunk(upload_id, written.name)
        raise ApiError(413, f"The chunk goes past the upload's length ({length} bytes).")
    if checksum is not None and (
        written.cut or not hmac.compare_digest(written.digest or b"", checksum[1])
    ):
        store.delete_chunk(upload_id, written.name)
        if written.cut:
            return offset, True
        raise ApiError(
            CHECKSUM_MISMATCH,
            f"Upload-Checksum: the chunk's {checksum[0]} does not match; nothing was kept.",
            code="checksum_mismatch",
        )
    if written.size == 0:
        store.delete_chunk(upload_id, written.name)
        return offset, written.cut
    now = utcnow()
    result = session.execute(
        sa.update(Upload)
        .where(
            Upload.id == upload_id,
            Upload.offset == start,
            Upload.dataset_id.is_(None),
            Upload.error.is_(None),
        )
        .values(
            offset=start + written.size,
            chunks=[*chunks, [start, written.size, written.name]],
            expires_at=now + timedelta(hours=expire_hours),
        )
        .execution_options(synchronize_session=False)
    )
    session.commit()
    if result.rowcount != 1:
        store.delete_chunk(upload_id, written.name)
        if session.get(Upload, upload_id) is None:  # terminated or swept meanwhile
            raise ApiError(404, f"No upload {upload_id}.")
        raise ApiError(
            409,
            "Another request took this offset first; ask for the offset (HEAD).",
            code="conflict",
        )
    session.refresh(upload)
    return start + written.size, written.cut


def file_format(upload: Upload, head: bytes) -> str:
    """CSV, Parquet or JSON lines: by the metadata's `filetype` (a media type), else its
    `filename`'s suffix, else Parquet by the first bytes (`PAR1`), else CSV."""
    meta = upload.meta or {}
    by_type = dataset_files.FORMAT_OF_TYPE.get((meta.get("filetype") or "").split(";")[0])
    if by_type is not None:
        return by_type
    by_name = dataset_files.format_of_name(meta.get("filename") or "")
    if by_name is not None:
        return by_name
    return table_stream.PARQUET if head == table_stream.PARQUET_MAGIC else table_stream.CSV


def complete(
    session: Session, upload: Upload, completion: Completion, expire_hours: float
) -> Upload:
    """Make the dataset of a fully received upload (see the module); its error is recorded and
    raised when the data cannot be read. The chunks are deleted either way. One request at a
    time: another that asks meanwhile gets 409."""
    upload_id, owner = upload.id, upload.owner
    now = utcnow()
    claimed = session.execute(
        sa.update(Upload)
        .where(
            Upload.id == upload_id,
            Upload.offset == Upload.length,
            Upload.dataset_id.is_(None),
            Upload.error.is_(None),
            sa.or_(
                Upload.completing_since.is_(None),
                Upload.completing_since < now - timedelta(seconds=COMPLETION_LEASE_S),
            ),
        )
        .values(completing_since=now, expires_at=now + timedelta(hours=expire_hours))
        .execution_options(synchronize_session=False)
    )
    session.commit()
    if claimed.rowcount != 1:
        raise ApiError(
            409,
            "The upload's dataset is being made; ask again (HEAD) in a while.",
            code="conflict",
        )
    store = UploadStore(upload.store_url)
    reader = store.reader(upload_id, [name for _start, _size, name in upload.chunks])
    try:
        fmt = file_format(upload, reader.peek_head(4))
        dataset, _warnings = dataset_files.store_file(
            session,
            owner,
            reader,  # type: ignore[arg-type]
            completion.options,
            limits=completion.limits,
            store_url=completion.store_url,
            max_bytes=completion.max_bytes,
            expected=upload.length,
            fmt=fmt,
        )
    except StoreError as exc:  # the chunks stay: a PATCH at the end tries again
        session.rollback()
        _release(session, upload_id, now)
        raise ApiError(503, f"The dataset store is unavailable: {exc}") from None
    except ApiError as exc:
        session.rollback()
        if exc.status != 503:
            _fail(session, store, upload_id, now, exc.message)
        else:
            _release(session, upload_id, now)
        raise
    except Exception as exc:  # unexpected: recorded, so that no retry ingests it again
        session.rollback()
        _fail(session, store, upload_id, now, f"The dataset could not be made: {exc!r}")
        raise
    except BaseException:
        session.rollback()
        _release(session, upload_id, now)
        raise
    finally:
        reader.close()
    dataset_id = dataset.id
    made = session.execute(  # only while this claim still holds (not terminated, not re-claimed)
        sa.update(Upload)
        .where(
            Upload.id == upload_id,
            Upload.completing_since == now,
            Upload.dataset_id.is_(None),
        )
        .values(
            dataset_id=dataset_id, chunks=[], expires_at=utcnow() + timedelta(hours=expire_hours)
        )
        .execution_options(synchronize_session=False)
    )
    if made.rowcount != 1:
        session.rollback()  # the dataset's row was only flushed: its rows go too
        with contextlib.suppress(StoreError):  # else the sweep of orphaned parts gets them
            store_for(completion.store_url).delete(dataset_id)
        if session.get(Upload, upload_id) is None:
            raise ApiError(404, f"No upload {upload_id}.")
        raise ApiError(
            409,
            "Another request took over making this upload's dataset; ask again (HEAD).",
            code="conflict",
        )
    session.commit()
    with contextlib.suppress(StoreError):  # else the sweep deletes them with the row
        store.delete(upload_id)
    session.refresh(upload)
    return upload


def _release(session: Session, upload_id: str, claim: datetime) -> None:
    session.execute(
        sa.update(Upload)
        .where(Upload.id == upload_id, Upload.completing_since == claim)
        .values(completing_since=None)
        .execution_options(synchronize_session=False)
    )
    session.commit()


def _fail(
    session: Session, store: UploadStore, upload_id: str, claim: datetime, message: str
) -> None:
    session.execute(
        sa.update(Upload)
        .where(Upload.id == upload_id, Upload.completing_since == claim)
        .values(error=message[:2000], chunks=[])
        .execution_options(synchronize_session=False)
    )
    session.commit()
    with contextlib.suppress(StoreError):
        store.delete(upload_id)


def _not_completing(now: datetime) -> sa.ColumnElement[bool]:
    """No completion holds the upload's lease at `now`."""
    return sa.or_(
        Upload.completing_since.is_(None),
        Upload.completing_since < now - timedelta(seconds=COMPLETION_LEASE_S),
    )


def terminate(session: Session, upload: Upload) -> None:
    """Delete the upload and its chunks (the dataset it made, if any, stays); a 409 while its
    dataset is being made."""
    upload_id, url = upload.id, upload.store_url
    result = session.execute(
        sa.delete(Upload)
        .where(Upload.id == upload_id, _not_completing(utcnow()))
        .execution_options(synchronize_session=False)
    )
    session.commit()
    if result.rowcount != 1:
        if session.get(Upload, upload_id) is None:
            raise ApiError(404, f"No upload {upload_id}.")
        raise ApiError(
            409, "The upload's dataset is being made; ask again in a while.", code="conflict"
        )
    UploadStore(url).delete(upload_id)


def delete_expired(factory: Any, now: datetime | None = None) -> list[str]:
    """Delete the uploads whose time ran out, and their chunks; the ids deleted."""
    now = now or utcnow()
    deleted: list[str] = []
    with factory() as session:
        expired = session.execute(
            sa.select(Upload.id, Upload.store_url).where(Upload.expires_at < now)
        ).all()
        for upload_id, url in expired:
            result = session.execute(
                sa.delete(Upload)
                .where(Upload.id == upload_id, Upload.expires_at < now, _not_completing(now))
                .execution_options(synchronize_session=False)
            )
            session.commit()
            if result.rowcount == 1:  # not extended meanwhile, nor being completed
                deleted.append(upload_id)
                # a store that is down keeps them: the sweep of orphaned chunks gets them later
                with contextlib.suppress(StoreError):
                    UploadStore(url).delete(upload_id)
    return deleted


def delete_orphan_chunks(
    factory: Any, store_url: str, older_than_s: float = ORPHAN_AFTER_S, now: float | None = None
) -> list[str]:
    """Delete the chunk folders that have no upload row (an API process killed between
    writing a chunk and recording it, after its upload was deleted) once their newest chunk is
    `older_than_s` old; the ids deleted."""
    store = UploadStore(store_url)
    cutoff = (time.time() if now is None else now) - older_than_s
    stale = [key for key, mtime in store.upload_ids().items() if mtime < cutoff]
    if not stale:
        return []
    with factory() as session:
        known = set(session.scalars(sa.select(Upload.id).where(Upload.id.in_(stale))))
    orphans = [key for key in stale if key not in known]
    for key in orphans:
        store.delete(key)
    return orphans


def status_of(upload: Upload, now: datetime | None = None) -> str:
    """`completed`, `failed`, `completing` (a completion holds its lease: the dataset is being
    made) or `receiving`."""
    if upload.dataset_id:
        return "completed"
    if upload.error:
        return "failed"
    since = upload.completing_since
    lease = timedelta(seconds=COMPLETION_LEASE_S)
    if since is not None and _aware(since) > _aware(now or utcnow()) - lease:
        return "completing"
    return "receiving"


def describe(upload: Upload) -> dict[str, Any]:
    """The upload as the API shows it (`GET /api/v1/uploads/{id}`)."""
    return {
        "id": upload.id,
        "length": upload.length,
        "offset": upload.offset,
        "metadata": dict(upload.meta or {}),
        "status": status_of(upload),
        "dataset_id": upload.dataset_id,
        "error": upload.error,
        "created_at": iso_utc(upload.created_at),
        "expires_at": iso_utc(upload.expires_at),
    }


def http_date(value: datetime) -> str:
    """A time as an HTTP date (RFC 9110), as `Upload-Expires` carries it."""
    return time.strftime("%a, %d %b %Y %H:%M:%S GMT", _aware(value).utctimetuple())
