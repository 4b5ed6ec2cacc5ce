"""Stream ``data.json`` (a JSON array of row objects) into a raw table with COPY.

The file is read once: every byte feeds sha256 and the parser in the same pass, rows go to
PostgreSQL (COPY, text format) while the file is still being read, and nothing is committed
here; the caller commits only after :func:`load_table` has checked the byte size, sha256 and
row count against the manifest. Memory stays flat whatever the file size; it grows only with
the largest row, which may not exceed :data:`~clientflow.load.jsonrows.MAX_ROW_BYTES`.

Raw tables keep the client's names and values as received: a JSON string becomes its text, any
other value keeps its JSON text byte for byte (``1.50`` stays ``1.50``, every digit of a long
number is kept, objects and arrays keep their spacing), and ``null`` becomes NULL; jsonb columns
parse the JSON text. Each row also gets ``source_row`` (its position in the file, from 1); the
batch's ``ingestion_id``, ``client_name`` and ``source_file`` come from column defaults that read
transaction-local settings, so they are not sent a million times; ``loaded_at`` is ``now()``.

The JSON is validated and turned into COPY lines by :mod:`clientflow.load.jsonrows`. The raw
tables' other statements (a retried batch replacing its own attempt, retention, counts) are here
too: this module owns the raw tables.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import IO, Any

import psycopg
from psycopg import sql

from clientflow.arrival.manifest import Manifest
from clientflow.errors import BadInputError, IntegrityError, Where
from clientflow.identifiers import IdentifierError, check_columns, ident
from clientflow.load.jsonrows import HashingReader, RowFormat, RowStream

_JSONB_ENCODINGS = {"json", "array"}
_LEADING_DIGITS = re.compile(r"\d+")
# The metadata that is the same on every row of a batch is not sent with each row: the columns
# default to these transaction-local settings, which load_table sets just before its COPY.
_BATCH_SETTINGS = {
    "ingestion_id": "clientflow.ingestion_id",
    "client_name": "clientflow.client_name",
    "source_file": "clientflow.source_file",
}


@dataclass(frozen=True)
class LoadResult:
    table: str
    rows: int
    byte_size: int
    sha256: str


def column_type(encoding: str) -> str:
    return "jsonb" if encoding.split("<", 1)[0] in _JSONB_ENCODINGS else "text"


def ensure_raw_table(conn: psycopg.Connection[Any], schema: str, manifest: Manifest) -> dict[str, str]:
    """Create the raw table, or add the manifest's new columns to it. Never drops anything.

    Returns the type (``text`` or ``jsonb``) each manifest column has in the table.
    """
    names = check_columns(c.name for c in manifest.columns)
    table = ident(schema, manifest.table)
    conn.execute(sql.SQL("create schema if not exists {}").format(ident(schema)))
    found = conn.execute(
        "select a.attname, format_type(a.atttypid, a.atttypmod), pg_get_expr(d.adbin, d.adrelid) "
        "from pg_attribute a left join pg_attrdef d on d.adrelid = a.attrelid and d.adnum = a.attnum "
        "where a.attrelid = to_regclass(%s) and a.attnum > 0 and not a.attisdropped",
        (table.as_string(conn),),
    ).fetchall()
    existing = {name: type_ for name, type_, _ in found}
    if not existing:
        columns = [
            sql.SQL("{} {}").format(ident(c.name), sql.SQL(column_type(c.encoding)))
            for c in manifest.columns
        ]
        metadata = [
            sql.SQL("{} text not null default current_setting({})").format(
                sql.Identifier(column), sql.Literal(setting))
            for column, setting in _BATCH_SETTINGS.items()
        ]
        conn.execute(
            sql.SQL(
                "create table {} ({}, {}, source_row bigint not null, "
                "loaded_at timestamptz not null default now())"
            ).format(table, sql.SQL(", ").join(columns), sql.SQL(", ").join(metadata))
        )
        conn.execute(sql.SQL("create index on {} (ingestion_id)").format(table))
        return {c.name: column_type(c.encoding) for c in manifest.columns}
    defaults = {name: default or "" for name, _, default in found}
    for meta, setting in _BATCH_SETTINGS.items():
        if setting not in defaults.get(meta, ""):  # a table created before the defaults existed
            conn.execute(sql.SQL("alter table {} alter column {} set default current_setting({})").format(
                table, sql.Identifier(meta), sql.Literal(setting)))
    for column, name in zip(manifest.columns, names, strict=True):
        if name not in existing:
            existing[name] = column_type(column.encoding)
            conn.execute(
                sql.SQL("alter table {} add column {} {}").format(
                    table, ident(name), sql.SQL(existing[name])
                )
            )
    return {name: existing[name] for name in names}


def _server_refused(exc: psycopg.Error, table: str, names: list[str], where: Where) -> BadInputError:
    """PostgreSQL's text quotes the value; keep only the SQLSTATE, the row and the column.

    The row and column come from the context line PostgreSQL adds to COPY errors:
    ``COPY <table>, line <n>, column <name>: "<value>"``.
    """
    row, column = "a row", None
    prefix = f"COPY {table}, line "
    for line in (exc.diag.context or "").splitlines():
        if line.startswith(prefix):
            number = _LEADING_DIGITS.match(line, len(prefix))
            if number:
                row = f"row {number.group()}"
                rest = line[number.end():]
                found = [n for n in names if rest.startswith(f", column {n}: ")]
                column = max(found, key=len) if found else None
                break  # the first: a value shown after it may hold line breaks of its own
    return BadInputError(
        f"PostgreSQL refused {row} of data.json (SQLSTATE {exc.sqlstate}, {type(exc).__name__}); "
        "text must be valid UTF-8 without NUL, and json values valid for jsonb",
        Where(where.client, where.table, where.batch_date, where.run_id, where.file, column),
    )


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

    Runs inside the caller's transaction and never commits; on any error nothing of this batch
    may be committed (the caller rolls back).
    """
    where = Where(
        client=manifest.client, table=manifest.table, batch_date=manifest.date.isoformat(),
        run_id=manifest.run_id, file=source_file,
    )
    if conn.autocommit:
        raise ValueError("load_table needs a transaction: it never commits, the caller does")
    try:
        types = ensure_raw_table(conn, schema, manifest)
    except IdentifierError as exc:
        raise BadInputError(f"manifest.json names a column PostgreSQL cannot hold faithfully: {exc}",
                            where) from None
    names = list(types)
    if any("\x00" in part for part in (ingestion_id, source_file)):
        raise BadInputError("the ingestion id or source file name holds a NUL character", where)
    for column, value in (("ingestion_id", ingestion_id), ("client_name", manifest.client),
                          ("source_file", source_file)):
        conn.execute("select set_config(%s, %s, true)", (_BATCH_SETTINGS[column], value))
    copy_sql = sql.SQL(
        "copy {} (source_row, {}) from stdin with (null 'null')"
    ).format(ident(schema, manifest.table), sql.SQL(", ").join(ident(n) for n in names))
    reader = HashingReader(stream)
    parser = RowStream(reader, RowFormat(names, [types[n] in ("json", "jsonb") for n in names], where), where)
    # PostgreSQL checks UTF-8 itself unless the database is SQL_ASCII.
    check_utf8 = conn.info.parameter_status("server_encoding") != "UTF8"
    refused = None
    try:
        with conn.cursor() as cur, cur.copy(copy_sql) as copy:
            for lines in parser.batches():
                if check_utf8:
                    _require_utf8(lines, where)
                copy.write(lines)
    except (psycopg.DataError, psycopg.IntegrityError) as exc:
        refused = _server_refused(exc, manifest.table, names, where)
    if refused is not None:
        raise refused  # outside the handler: PostgreSQL's message (it quotes the value) is not chained
    _verify(manifest, reader, parser.count, where)
    return LoadResult(manifest.table, parser.count, reader.size, reader.sha256.hexdigest())


def _verify(manifest: Manifest, reader: HashingReader, rows: int, where: Where) -> None:
    """The bytes read and the rows parsed are exactly what the manifest declared."""
    digest = reader.sha256.hexdigest()
    if digest != manifest.sha256 or reader.size != manifest.byte_size:
        raise IntegrityError(
            f"checksum mismatch: manifest says sha256 {manifest.sha256} ({manifest.byte_size} "
            f"bytes), the file read has sha256 {digest} ({reader.size} bytes); the upload is "
            "incomplete or corrupted, re-run the extractor",
            where,
        )
    if rows != manifest.row_count:
        raise IntegrityError(f"row count mismatch: manifest says {manifest.row_count}, data.json holds {rows}", where)


def _require_utf8(lines: bytes, where: Where) -> None:
    """Only needed when PostgreSQL would not check (a SQL_ASCII database)."""
    try:
        lines.decode("utf-8")
    except UnicodeDecodeError:
        raise BadInputError("data.json holds bytes that are not valid UTF-8", where) from None


def table_exists(conn: psycopg.Connection[Any], schema: str, table: str) -> bool:
    row = conn.execute("select to_regclass(%s)", (ident(schema, table).as_string(conn),)).fetchone()
    return row is not None and row[0] is not None


def analyze(conn: psycopg.Connection[Any], schema: str, table: str) -> None:
    """Refresh a raw table's statistics after a load: its row count and its ``ingestion_id``
    column, which is all that the queries on raw filter or join on (a batch's rows, by its
    ingestion id). Without them the staging models took a new batch for one row and planned
    nested loops over it (20,001 appointments ran for minutes instead of a second). The client's
    own columns are only read and cast, so their statistics would be computed for nothing: 0.15 to
    0.29 s per table instead of 0.39 to 0.47 s, on every batch."""
    conn.execute(sql.SQL("analyze {} (ingestion_id)").format(ident(schema, table)))


def discard_batch(conn: psycopg.Connection[Any], schema: str, table: str, ingestion_id: str) -> None:
    """Remove a batch's earlier attempt from a raw table (a retry replaces it, never another batch)."""
    if table_exists(conn, schema, table):
        conn.execute(sql.SQL("delete from {} where ingestion_id = %s").format(ident(schema, table)),
                     (ingestion_id,))


def delete_batches(conn: psycopg.Connection[Any], schema: str, tables: Iterable[str],
                   ingestion_ids: list[str]) -> None:
    """Retention: drop the raw rows of these batches (their JSON stays in the bucket)."""
    for table in tables:
        if ingestion_ids and table_exists(conn, schema, table):
            conn.execute(sql.SQL("delete from {} where ingestion_id = any(%s)").format(ident(schema, table)),
                         (ingestion_ids,))


def batch_rows(conn: psycopg.Connection[Any], schema: str, table: str, ingestion_id: str) -> int:
    """Rows of one batch in a raw table (0 if the table does not exist)."""
    if not table_exists(conn, schema, table):
        return 0
    row = conn.execute(sql.SQL("select count(*) from {} where ingestion_id = %s").format(ident(schema, table)),
                       (ingestion_id,)).fetchone()
    assert row is not None  # an aggregate always returns a row
    return int(row[0])
