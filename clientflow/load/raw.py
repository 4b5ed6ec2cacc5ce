"""Stream ``data.json`` (a JSON array of row objects) into a raw table with COPY.

The file is read once: the bytes feed sha256 and ijson in the same pass, rows go to PostgreSQL
in COPY text format, and nothing is committed by this module; the caller commits only after
:func:`load_table`'s counts and checksum have been checked against the manifest. Memory stays
flat whatever the file size.

Raw tables keep the client's names and values as received: JSON scalars as their text
(numbers keep every digit), objects and arrays as jsonb, plus ``ingestion_id``,
``client_name``, ``source_file``, ``source_row`` and ``loaded_at``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import IO, Any

import ijson
import psycopg
from psycopg import sql

from clientflow.arrival.manifest import Manifest
from clientflow.errors import BadInputError, IntegrityError, Where
from clientflow.identifiers import check_columns, ident

_JSONB_ENCODINGS = {"json", "array"}
_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
_CHUNK = 1 << 20
MAX_DEPTH = 64


class HashingReader:
    """A file-like wrapper that hashes and counts every byte read through it."""

    def __init__(self, raw: IO[bytes]) -> None:
        self._raw = raw
        self.sha256 = hashlib.sha256()
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        if n == 0:
            return b""
        chunk = self._raw.read(n if n > 0 else _CHUNK)
        self.sha256.update(chunk)
        self.size += len(chunk)
        return chunk

    def drain(self) -> bytes:
        """Read (and hash) the rest; return any non-whitespace found there."""
        extra = bytearray()
        while chunk := self.read(_CHUNK):
            stripped = chunk.strip()
            if stripped and len(extra) < 32:
                extra.extend(stripped[:32])
        return bytes(extra)


@dataclass(frozen=True)
class LoadResult:
    table: str
    rows: int
    byte_size: int
    sha256: str


def column_type(encoding: str) -> str:
    return "jsonb" if encoding.split("<", 1)[0] in _JSONB_ENCODINGS else "text"


def ensure_raw_table(conn: psycopg.Connection[Any], schema: str, manifest: Manifest) -> None:
    """Create the raw table, or add the manifest's new columns to it. Never drops anything."""
    names = check_columns(c.name for c in manifest.columns)
    conn.execute(sql.SQL("create schema if not exists {}").format(ident(schema)))
    existing = {
        row[0]
        for row in conn.execute(
            "select attname from pg_attribute where attrelid = to_regclass(%s) and attnum > 0 "
            "and not attisdropped",
            (sql.Identifier(schema, manifest.table).as_string(conn),),
        )
    }
    if not existing:
        columns = [
            sql.SQL("{} {}").format(ident(c.name), sql.SQL(column_type(c.encoding)))
            for c in manifest.columns
        ]
        conn.execute(
            sql.SQL(
                "create table {} ({}, ingestion_id text not null, client_name text not null, "
                "source_file text not null, source_row bigint not null, "
                "loaded_at timestamptz not null default now())"
            ).format(ident(schema, manifest.table), sql.SQL(", ").join(columns))
        )
        conn.execute(
            sql.SQL("create index on {} (ingestion_id)").format(ident(schema, manifest.table))
        )
        return
    for column, name in zip(manifest.columns, names, strict=True):
        if name not in existing:
            conn.execute(
                sql.SQL("alter table {} add column {} {}").format(
                    ident(schema, manifest.table), ident(name), sql.SQL(column_type(column.encoding))
                )
            )


def _text(value: Any, jsonb: bool) -> str:
    if value is None:
        return "\\N"
    if jsonb or isinstance(value, (dict, list)):
        return _json(value, 0).translate(_ESCAPES)
    if isinstance(value, str):
        return value.translate(_ESCAPES)
    if value is True:
        return "true"
    if value is False:
        return "false"
    return str(value)  # int or Decimal: every digit, as received


def _json(value: Any, depth: int) -> str:
    """Serialize a parsed JSON value back, numbers exactly as received."""
    if depth > MAX_DEPTH:
        raise _TooDeep
    if isinstance(value, dict):
        return "{" + ",".join(
            f"{json.dumps(k, ensure_ascii=False)}:{_json(v, depth + 1)}" for k, v in value.items()
        ) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_json(v, depth + 1) for v in value) + "]"
    if isinstance(value, Decimal):
        return str(value)
    return json.dumps(value, ensure_ascii=False)


class _TooDeep(Exception):
    pass


def _rows(reader: HashingReader, where: Where) -> Iterator[dict[str, Any]]:
    try:
        for item in ijson.items(reader, "item", buf_size=_CHUNK):
            yield item
    except ijson.JSONError as exc:
        raise BadInputError(
            f"data.json is not valid JSON near byte {reader.size}: {type(exc).__name__}", where
        ) from None


def load_table(
    conn: psycopg.Connection[Any],
    schema: str,
    manifest: Manifest,
    stream: IO[bytes],
    *,
    ingestion_id: str,
    source_file: str,
) -> LoadResult:
    """COPY one table's rows into its raw table and check them against the manifest.

    Runs inside the caller's transaction; on any error nothing of this batch is visible.
    """
    where = Where(
        client=manifest.client, table=manifest.table, batch_date=manifest.date.isoformat(),
        run_id=manifest.run_id, file=source_file,
    )
    ensure_raw_table(conn, schema, manifest)
    names = [c.name for c in manifest.columns]
    known = set(names)
    jsonb = [column_type(c.encoding) == "jsonb" for c in manifest.columns]
    reader = HashingReader(stream)
    tail = "\t".join(
        (ingestion_id.translate(_ESCAPES), manifest.client, source_file.translate(_ESCAPES))
    )
    copy_sql = sql.SQL("copy {} ({}, ingestion_id, client_name, source_file, source_row) from stdin").format(
        ident(schema, manifest.table), sql.SQL(", ").join(ident(n) for n in names)
    )
    rows = 0
    first = _peek_array(reader, where)
    with conn.cursor() as cur, cur.copy(copy_sql) as copy:
        buffer: list[str] = []
        size = 0
        for row in _rows(first, where):
            rows += 1
            if not isinstance(row, dict):
                raise BadInputError(f"row {rows} of data.json is not a JSON object", where)
            if len(row) != len(names) or not known.issuperset(row):
                unknown = sorted(set(row) - known)[:3]
                raise BadInputError(
                    f"row {rows} of data.json has keys that differ from the manifest's columns"
                    + (f" (unexpected: {unknown})" if unknown else ""),
                    where,
                )
            try:
                line = "\t".join([_text(row[n], j) for n, j in zip(names, jsonb, strict=True)])
            except _TooDeep:
                raise BadInputError(
                    f"row {rows} of data.json nests deeper than {MAX_DEPTH} levels", where
                ) from None
            if "\x00" in line:
                raise BadInputError(
                    f"row {rows} holds a NUL character, which PostgreSQL text cannot store", where
                )
            buffer.append(f"{line}\t{tail}\t{rows}\n")
            size += len(line)
            if size >= _CHUNK:
                copy.write("".join(buffer))
                buffer.clear()
                size = 0
        if buffer:
            copy.write("".join(buffer))
    extra = reader.drain()
    if extra:
        raise BadInputError("data.json has content after its top-level array", where)
    digest = reader.sha256.hexdigest()
    if digest != manifest.sha256 or reader.size != manifest.byte_size:
        raise IntegrityError(
            f"checksum mismatch: manifest says sha256 {manifest.sha256} ({manifest.byte_size} "
            f"bytes), the file read has sha256 {digest} ({reader.size} bytes); the upload is "
            "incomplete or corrupted, re-run the extractor",
            where,
        )
    if rows != manifest.row_count:
        raise IntegrityError(
            f"row count mismatch: manifest says {manifest.row_count}, data.json holds {rows}",
            where,
        )
    return LoadResult(manifest.table, rows, reader.size, digest)


class _Prefixed:
    """A reader that replays bytes already consumed, then continues from ``inner``."""

    def __init__(self, head: bytes, inner: HashingReader) -> None:
        self._head = head
        self._inner = inner

    @property
    def size(self) -> int:
        return self._inner.size

    def read(self, n: int = -1) -> bytes:
        if n == 0:  # ijson probes the stream's type with read(0)
            return b""
        if self._head:
            head, self._head = self._head, b""
            return head
        return self._inner.read(n)


def _peek_array(reader: HashingReader, where: Where) -> Any:
    """Refuse anything but a top-level array early, before a single row is copied."""
    head = b""
    while True:
        chunk = reader.read(_CHUNK)
        if not chunk:
            raise BadInputError("data.json is empty; expected a JSON array of row objects", where)
        head += chunk
        stripped = head.lstrip(b" \t\r\n")
        if stripped.startswith(b"\xef\xbb\xbf"):
            raise BadInputError("data.json starts with a byte-order mark; expected plain UTF-8", where)
        if stripped:
            if not stripped.startswith(b"["):
                raise BadInputError("data.json is not a JSON array of row objects", where)
            return _Prefixed(head, reader)
