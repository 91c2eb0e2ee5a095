"""The bytes of an uploaded CSV file before any parsing: size limit, gzip, spreadsheets,
encodings and the delimiter, all found from the stream's first bytes without holding the file.

`open_source(stream, ...)` wraps a binary file-like object (a request body, a multipart file
part) and returns a `Source`: a file object that pyarrow's CSV reader pulls from, which counts
the bytes read (a `UploadTooLarge` past the limit), gunzips a gzip stream as it goes, refuses NUL
characters, and knows the text's first kilobytes (`head`) for sniffing the delimiter.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import io
import threading
from dataclasses import dataclass
from typing import Any, BinaryIO

from service.problems import ApiError, InputError

HEAD_BYTES = 1 << 20  # the header of 4,096 long column names fits
DELIMITERS = (",", "\t", ";", "|")
GZIP_MAGIC = b"\x1f\x8b"
ZIP_MAGIC = b"PK\x03\x04"
OLE_MAGIC = b"\xd0\xcf\x11\xe0"
UTF8 = ("utf-8", "utf-8-sig")


class UploadTooLarge(ApiError):
    """413 naming the limit, its value and the variable that raises it."""

    def __init__(self, limit: int, variable: str = "TRAINYARD_MAX_UPLOAD_BYTES") -> None:
        super().__init__(
            413,
            f"The upload is larger than the limit {variable} = {limit} bytes "
            f"({human_bytes(limit)}); set the environment variable {variable} higher to "
            "accept it.",
        )


def human_bytes(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.4g} {unit}"
    return f"{n} bytes"


class CountingReader(io.RawIOBase):
    """Reads `raw` and counts; past `limit` bytes (0: none) it raises `UploadTooLarge`."""

    def __init__(self, raw: BinaryIO, limit: int, expected: int | None = None) -> None:
        self.raw = raw
        self.limit = limit
        self.expected = expected
        self.count = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        data = self.raw.read(size if size is not None and size >= 0 else -1)
        self.count += len(data)
        if self.limit and self.count > self.limit:
            raise UploadTooLarge(self.limit)
        if not data and size != 0 and self.expected is not None and self.count < self.expected:
            raise ApiError(
                400,
                f"The upload ended after {self.count} of its {self.expected} bytes (the "
                "connection was cut?); nothing was stored.",
                code="incomplete_upload",
            )
        return data

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


class Source(io.RawIOBase):
    """The decoded-ready bytes of the upload: `head` first, then the rest of `inner`. UTF-8
    text is checked for NUL characters on the way. The first exception raised while arrow reads
    (too large, NUL, broken gzip, the client gone) is kept in `error`, since arrow reports its
    own."""

    def __init__(self, inner: Any, head: bytes, field: str, check_nul: bool) -> None:
        self.inner = inner
        self.head = head
        self.field = field
        self.check_nul = check_nul
        # arrow's streaming CSV reader reads ahead as fast as it can (a whole file, when the
        # chunks are typed and stored slower than read): reads wait while more than `window`
        # bytes are ahead of what the consumer said it took (`consumed`)
        self.window = 0
        self._ahead = 0
        self._turn = threading.Condition()
        self.error: Exception | None = None  # raised again instead of arrow's

    def readable(self) -> bool:
        return True

    def consumed(self, n_bytes: int) -> None:
        """The consumer took about `n_bytes` of text (one block of the reader)."""
        with self._turn:
            self._ahead = max(0, self._ahead - n_bytes)
            self._turn.notify_all()

    def _wait_turn(self) -> None:
        if self.window:
            with self._turn:
                # the timeout only guards against a reader that needs more than the window
                self._turn.wait_for(lambda: self._ahead < self.window, timeout=5.0)

    def read(self, size: int | None = -1) -> bytes:
        self._wait_turn()
        try:
            if self.head:
                if size is None or size < 0 or size >= len(self.head):
                    data, self.head = self.head, b""
                else:
                    data, self.head = self.head[:size], self.head[size:]
            else:
                data = self.inner.read(size if size is not None and size >= 0 else -1)
            if self.check_nul and b"\x00" in data:
                raise InputError(self.field, "holds NUL characters: it is not a text file")
            with self._turn:
                self._ahead += len(data)
            return data
        except Exception as exc:
            if self.error is None:
                broken = isinstance(exc, OSError | EOFError) and not isinstance(exc, ApiError)
                self.error = (
                    InputError(self.field, f"is not a readable gzip stream: {exc}")
                    if broken
                    else exc
                )
            raise

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


@dataclass
class Opened:
    source: Source
    #: the codec arrow must decode with ("utf8" for UTF-8)
    encoding: str
    #: the start of the text (decoded), for sniffing the delimiter and the header
    text_head: str
    gzipped: bool


def _read_at_least(stream: Any, n: int) -> bytes:
    parts, got = [], 0
    while got < n:
        data = stream.read(n - got)
        if not data:
            break
        parts.append(data)
        got += len(data)
    return b"".join(parts)


def check_encoding(encoding: str | None, field: str = "encoding") -> str | None:
    """The codec's canonical name, or a 422 for one Python does not know."""
    if encoding is None or encoding == "":
        return None
    try:
        return codecs.lookup(encoding).name
    except LookupError:
        raise InputError(
            field, f"{encoding!r} is not a known text encoding (e.g. utf-8, latin-1, cp1252)"
        ) from None


def open_source(
    stream: BinaryIO,
    field: str,
    limit: int,
    encoding: str | None = None,
    expected: int | None = None,
) -> Opened:
    """Wrap an upload for the CSV reader, refusing what is not CSV text (see the module);
    `expected`: the body's length (a shorter body is a 400)."""
    counted = CountingReader(stream, limit, expected)
    first = _read_at_least(counted, 4)
    inner: Any = counted
    gzipped = first.startswith(GZIP_MAGIC)
    if gzipped:
        inner = gzip.GzipFile(fileobj=_Prefixed(first, counted), mode="rb")
        try:
            head = _read_at_least(inner, HEAD_BYTES)
        except (OSError, EOFError) as exc:
            raise InputError(field, f"is not a readable gzip stream: {exc}") from None
    else:
        head = first + _read_at_least(counted, HEAD_BYTES - len(first))
    refuse_binary(head, field)
    codec = check_encoding(encoding)
    if codec is None or codec in UTF8:
        problem = utf8_problem(head)
        if problem is not None:
            raise InputError(field, problem)
        text_head = _decode_head(head, "utf-8")
        if text_head.startswith("\ufeff"):
            text_head = text_head[1:]
        source = Source(inner, head, field, check_nul=True)
        return Opened(source, "utf8", text_head, gzipped)
    try:
        text_head = _decode_head(head, codec)
    except UnicodeDecodeError as exc:
        raise InputError(field, f"is not {codec} text: {exc.reason} at byte {exc.start}") from None
    return Opened(Source(inner, head, field, check_nul=False), codec, text_head, gzipped)


class _Prefixed(io.RawIOBase):
    """`prefix`, then the rest of `raw` (the bytes read to look at the magic number)."""

    def __init__(self, prefix: bytes, raw: Any) -> None:
        self.prefix = prefix
        self.raw = raw

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self.prefix:
            n = min(len(buffer), len(self.prefix))
            buffer[:n] = self.prefix[:n]
            self.prefix = self.prefix[n:]
            return n
        data = self.raw.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def _decode_head(head: bytes, codec: str) -> str:
    """The head as text; a character cut at the end of the head is left out."""
    decoder = codecs.getincrementaldecoder(codec)()
    return decoder.decode(head, final=False)


def refuse_binary(head: bytes, field: str) -> None:
    """Spreadsheets and other archives are named as such."""
    if head.startswith(ZIP_MAGIC):
        if b"xl/" in head or b"[Content_Types].xml" in head:
            raise InputError(
                field, "is an Excel spreadsheet (.xlsx), not CSV text; export it as CSV"
            )
        raise InputError(
            field, "is a zip archive, not CSV text; upload the CSV file itself (or gzip it)"
        )
    if head.startswith(OLE_MAGIC):
        raise InputError(
            field, "is an Excel spreadsheet (.xls, an OLE file), not CSV text; export it as CSV"
        )


def guess_encoding(head: bytes) -> str | None:
    """What a head that is not UTF-8 looks like: "UTF-16"/"UTF-32" (byte order mark or a
    pattern of NUL bytes), "Latin-1/Windows-1252" for 8-bit text, None for binary data."""
    if head.startswith((b"\xff\xfe\x00\x00", b"\x00\x00\xfe\xff")):
        return "UTF-32"
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        return "UTF-16"
    sample = head[:4096]
    if b"\x00" in sample:
        n = len(sample) // 4 * 4
        if n and all(sample[i + 1 : i + 4] == b"\x00\x00\x00" for i in range(0, min(n, 64), 4)):
            return "UTF-32"
        if n and all(sample[i] == 0 for i in range(1, min(n, 64), 2)):
            return "UTF-16"
        if n and all(sample[i] == 0 for i in range(0, min(n, 64), 2)):
            return "UTF-16"
        return None
    controls = sum(1 for b in sample if b < 32 and b not in (9, 10, 13))
    if controls > len(sample) // 100:
        return None
    return "Latin-1/Windows-1252"


def utf8_problem(head: bytes) -> str | None:
    """Why the head is not UTF-8 text (naming what it looks like), or None."""
    if head.startswith(codecs.BOM_UTF8):
        head = head[3:]
    try:
        text = _decode_head(head, "utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and "\x00" not in text:
        return None
    looks = guess_encoding(head)
    if looks is None:
        if text is not None:
            return "holds NUL characters: it is not a text file"
        return "is not text (binary data); upload a CSV file"
    hint = {"UTF-16": "utf-16", "UTF-32": "utf-32"}.get(looks, "latin-1 (or cp1252)")
    return (
        f"is not UTF-8 text: it looks like {looks}; pass encoding={hint} or save the file as UTF-8"
    )


def not_utf8_later(field: str) -> InputError:
    return InputError(
        field,
        "is not UTF-8 text (a cell past the first MiB is not): it looks like "
        "Latin-1/Windows-1252; pass encoding=latin-1 (or cp1252) or save the file as UTF-8",
    )


def sniff_delimiter(text_head: str) -> str:
    """The delimiter that splits the first lines into the same number (at least 2) of fields,
    the most fields winning; else the one splitting the header most; else a comma."""
    lines = text_head.splitlines()
    if len(text_head) >= HEAD_BYTES // 2 and len(lines) > 1:
        lines = lines[:-1]  # the last one may be cut
    lines = [line for line in lines[:50] if line.strip()]
    if not lines:
        return ","
    best, best_width = ",", 1
    for delimiter in DELIMITERS:
        try:
            widths = [len(row) for row in csv.reader(lines, delimiter=delimiter)]
        except csv.Error:
            continue
        consistent = widths and all(w == widths[0] for w in widths)
        if consistent and widths[0] > best_width:
            best, best_width = delimiter, widths[0]
    if best_width > 1:
        return best
    header_counts = {d: lines[0].count(d) for d in DELIMITERS}
    chosen = max(DELIMITERS, key=lambda d: header_counts[d])
    return chosen if header_counts[chosen] else ","


def header_of(text_head: str, delimiter: str, field: str) -> list[str]:
    """The header's column names (stripped), or a 422 for an empty or unnamed one."""
    if not text_head.strip():
        raise InputError(field, "is empty: a header row and at least one data row are needed")
    first = next(csv.reader(io.StringIO(text_head), delimiter=delimiter), [])
    return check_column_names([h.strip() for h in first], field)


def check_column_names(names: list[str], field: str, *, header: bool = True) -> list[str]:
    """`names`, or a 422 for an empty or repeated one (`header`: they are a CSV's first row)."""
    if "" in names:
        where = "the header's column" if header else "column"
        hint = " (is the first row a header?)" if header else ""
        raise InputError(
            field,
            f"{where} {names.index('') + 1} has no name; every column needs one{hint}",
        )
    if len(set(names)) != len(names):
        dupes = sorted({n for n in names if names.count(n) > 1})
        raise InputError(field, f"{'the header ' if header else ''}names a column twice: {dupes}")
    return names
