"""Helpers for the raw-load tests: manifests for given bytes, one load per transaction, the stored rows."""

from __future__ import annotations

import io
import json
import traceback
from collections.abc import Iterable
from datetime import date
from typing import Any

import psycopg
from psycopg import sql

from clientflow.arrival.manifest import Manifest
from clientflow.errors import BadInputError, IntegrityError, PipelineError
from clientflow.load import raw
from tests.support.batches import manifest_for

CLIENT = "acme"
SCHEMA = "raw_acme"
TABLE = "patients"
DAY = date(2026, 1, 2)
RUN = "20260102T010203Z"
SOURCE = "s3://landing/client=acme/table=patients/date=20260102/run_id=20260102T010203Z/data.json"
REFUSALS = (BadInputError, IntegrityError)


def columns(*names: str, encoding: str = "string") -> list[dict[str, Any]]:
    return [{"name": n, "source_type": "text", "encoding": encoding, "nullable": True,
             "primary_key": False} for n in names]


def manifest(data: bytes, rows: int, cols: list[dict[str, Any]], *, table: str = TABLE,
             **overrides: Any) -> Manifest:
    body = manifest_for(CLIENT, table, DAY, RUN, data, rows, cols)
    body.update(overrides)
    return Manifest.model_validate(body)


def extractor_layout(rows: Iterable[dict[str, Any]]) -> bytes:
    """As the extractor writes data.json: "[", one object a line joined by ",\\n", "]"."""
    lines = [json.dumps(r, ensure_ascii=False, separators=(",", ":")) for r in rows]
    return ("[\n" + ",\n".join(lines) + "\n]\n" if lines else "[]\n").encode()


class TinyReads(io.RawIOBase):
    """A stream that hands out at most ``size`` bytes a read, like a slow network body."""

    def __init__(self, data: bytes, size: int = 7) -> None:
        self._data = io.BytesIO(data)
        self._size = size

    def read(self, n: int = -1) -> bytes:
        return self._data.read(min(self._size, n if n > 0 else self._size))


def load(dsn: str, data: bytes, m: Manifest, *, stream: Any = None, ingestion_id: str = "batch-2",
         commit: bool = True) -> raw.LoadResult:
    """One load_table in its own transaction, committed on success, rolled back on error."""
    with psycopg.connect(dsn) as conn:
        try:
            result = raw.load_table(conn, SCHEMA, m, stream or io.BytesIO(data),
                                    ingestion_id=ingestion_id, source_file=SOURCE)
        except BaseException:
            conn.rollback()
            raise
        if commit:
            conn.commit()
        else:
            conn.rollback()
    return result


def refused(dsn: str, data: bytes, m: Manifest, *, secrets: Iterable[str] = (), stream: Any = None,
            kinds: tuple[type[PipelineError], ...] = REFUSALS) -> PipelineError:
    """Load, expect a refusal that names the file and leaks no value; nothing of it committed."""
    try:
        load(dsn, data, m, stream=stream, ingestion_id="batch-refused")
    except kinds as exc:
        error: PipelineError = exc
    else:
        raise AssertionError("load_table accepted the file")
    text = str(error)
    assert SOURCE in text and f"table={m.table}" in text and f"run={RUN}" in text, text
    shown = "".join(traceback.format_exception(error))
    for secret in secrets:
        assert secret not in shown, f"the error shows a row value: {shown}"
    assert "batch-refused" not in stored_batches(dsn, m.table)
    return error


def stored_batches(dsn: str, table: str = TABLE) -> dict[str, int]:
    with psycopg.connect(dsn) as conn:
        if conn.execute("select to_regclass(%s)", (sql.Identifier(SCHEMA, table).as_string(conn),)
                        ).fetchone()[0] is None:  # type: ignore[index]
            return {}
        return dict(conn.execute(sql.SQL(
            "select ingestion_id, count(*) from {} group by 1").format(sql.Identifier(SCHEMA, table))
        ).fetchall())


def stored(dsn: str, names: list[str], *, table: str = TABLE, ingestion_id: str = "batch-2",
           as_text: bool = True) -> list[tuple[Any, ...]]:
    """The batch's rows in file order, every column as text (so nothing is reinterpreted)."""
    cast = "::text" if as_text else ""
    cols = sql.SQL(", ").join(sql.SQL("{}" + cast).format(sql.Identifier(n)) for n in names)
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            sql.SQL("select {} from {} where ingestion_id = %s order by source_row").format(
                cols, sql.Identifier(SCHEMA, table)), (ingestion_id,),
        ).fetchall()
