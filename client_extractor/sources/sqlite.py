"""The SQLite reader: the file opened read-only, values encoded in Python by their storage class.

A column's encoding follows SQLite's type affinity of its declared type (``sqlite_encoding``); since
SQLite lets any cell hold any storage class, a value that does not fit its column's encoding is
written in its own natural JSON form, and TEXT that is not valid UTF-8 (SQLite does not check)
becomes {"$bytes_b64": ...}. One BEGIN holds a single read snapshot for the whole run.
"""

from __future__ import annotations

import math
import os
import sqlite3
import urllib.parse
from collections.abc import Callable, Iterator
from json.encoder import encode_basestring  # type: ignore[attr-defined]  # C-accelerated, no ASCII escaping
from typing import Any

from client_extractor.encoding import Column, enc_bytes_b64, enc_float, enc_json_text, enc_string
from client_extractor.errors import ConnectError, ExtractError
from client_extractor.incremental import Window
from client_extractor.sources.base import Reader, as_text, guard_encoders, pages_from_rows


class _BadText(bytes):
    """A TEXT value that is not valid UTF-8 (SQLite does not check)."""


def _sqlite_text(raw: bytes) -> str | bytes:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return _BadText(raw)


def _natural(v: Any) -> str:
    """A SQLite value whose storage class does not fit its column's encoding: its own natural JSON form."""
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return enc_float(v)
    if isinstance(v, _BadText):
        return enc_string(bytes(v))
    if isinstance(v, bytes):
        return '{"$bytes_b64":' + enc_bytes_b64(v) + "}"
    return encode_basestring(v)


def _sqlite_encoder(encoding: str) -> Callable[[Any], str]:
    def integer(v: Any) -> str:
        return str(v) if type(v) is int else _natural(v)

    def real(v: Any) -> str:
        return enc_float(v) if type(v) is float else (enc_float(float(v)) if type(v) is int else _natural(v))

    def text(v: Any) -> str:
        if type(v) is str:
            return encode_basestring(v)
        return enc_string(bytes(v)) if isinstance(v, _BadText) else _natural(v)

    def blob(v: Any) -> str:
        return enc_bytes_b64(v) if type(v) is bytes else _natural(v)

    def decimal(v: Any) -> str:
        if type(v) is int:
            return '"' + str(v) + '"'
        if type(v) is float and math.isfinite(v):
            return '"' + repr(v) + '"'
        return _natural(v)

    def boolean(v: Any) -> str:
        return ("true" if v else "false") if type(v) is int and v in (0, 1) else _natural(v)

    def json_text(v: Any) -> str:
        if type(v) is str:
            try:
                return enc_json_text(v)
            except ValueError:
                pass
        return _natural(v)

    return {
        "integer": integer, "float": real, "string": text, "bytes_base64": blob,
        "decimal": decimal, "boolean": boolean, "json": json_text,
    }[encoding]


def sqlite_encoding(declared: str) -> str:
    """SQLite's type affinity rules (https://sqlite.org/datatype3.html), then a few common names."""
    t = declared.upper()
    if "INT" in t:
        return "integer"
    if "CHAR" in t or "CLOB" in t or "TEXT" in t:
        return "string"
    if "BLOB" in t or not t:
        return "bytes_base64"
    if "REAL" in t or "FLOA" in t or "DOUB" in t:
        return "float"
    if "BOOL" in t:
        return "boolean"
    if "JSON" in t:
        return "json"
    if "DEC" in t or "NUM" in t:
        return "decimal"
    return "string"  # DATE, DATETIME and other NUMERIC-affinity names: apps store text there by convention


class SqliteReader(Reader):
    dialect = "sqlite"

    def connect(self) -> None:
        path = self.src.path
        if not os.path.isfile(path):
            hint = "" if os.path.isabs(path) else f" (relative to {os.getcwd()}; for an absolute path use sqlite:////{path.lstrip('/')})"
            raise ConnectError(f"sqlite database file not found: {path}{hint}")
        try:
            uri = "file:" + urllib.parse.quote(os.path.abspath(path)) + "?mode=ro"
            self.conn = sqlite3.connect(uri, uri=True, isolation_level=None)
            self.conn.text_factory = _sqlite_text
            self.conn.execute("BEGIN")  # one read snapshot for the whole run
            self.conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlite3.Error as exc:
            raise ConnectError(f"cannot open sqlite database {path}: {type(exc).__name__}: {exc}") from None

    def close(self) -> None:
        try:
            self.conn.close()
        except Exception:  # noqa: BLE001, S110 - best effort
            pass

    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        try:
            return self.conn.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise ExtractError(f"catalog query on {self.src.describe()} failed: {type(exc).__name__}") from None

    def list_tables(self, schema: str) -> list[str]:
        rows = self._query(f"SELECT name FROM {_sqlite_ident(schema)}.sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'")
        return sorted(as_text(r[0]) for r in rows)

    def existing(self, schema: str, names: tuple[str, ...]) -> set[str]:
        rows = self._query(f"SELECT name FROM {_sqlite_ident(schema)}.sqlite_master WHERE type IN ('table', 'view')")
        have = {as_text(r[0]) for r in rows}
        return {n for n in names if n in have}

    def columns(self, schema: str, table: str) -> list[Column]:
        rows = self._query(f"PRAGMA {_sqlite_ident(schema)}.table_xinfo({_sqlite_ident(table)})")
        cols = []
        for _cid, name, declared, notnull, _default, pk, hidden in rows:
            if hidden == 1:  # hidden columns of virtual tables are not part of SELECT *
                continue
            name, declared = as_text(name), as_text(declared or "")
            encoding = sqlite_encoding(declared)
            cols.append(Column(name, declared, encoding, not notnull and not pk, bool(pk), select_sql=_sqlite_ident(name), encode=_sqlite_encoder(encoding)))
        return cols

    def high_mark(self, schema: str, table: str, cursor: Column) -> str | None:
        rows = self._query(f"SELECT max({cursor.select_sql}) FROM {_sqlite_ident(schema)}.{_sqlite_ident(table)}")
        value = rows[0][0] if rows else None
        if value is None:
            return None
        if isinstance(value, bytes):
            raise ExtractError(f"cursor column {cursor.name!r} of table {table} holds bytes, which have no order to resume from")
        return repr(value) if isinstance(value, float) else str(value)

    @staticmethod
    def _mark(cursor: Column, mark: str) -> Any:
        """A mark as the value SQLite compares: a number for numeric columns (text sorts after any
        number in SQLite, so a text mark would match no numeric value), text otherwise."""
        try:
            if cursor.encoding == "integer":
                return int(mark)
            if cursor.encoding in ("float", "decimal"):
                return float(mark)
        except ValueError:
            pass
        return mark

    def stream(self, schema: str, table: str, columns: list[Column],
               window: Window | None = None) -> Iterator[tuple[bytes, int]]:
        query = f"SELECT {', '.join(c.select_sql for c in columns)} FROM {_sqlite_ident(schema)}.{_sqlite_ident(table)}"
        params: tuple[Any, ...] = ()
        if window is not None and window.high is None:
            query += " WHERE 0"
        elif window is not None and window.high is not None:
            query += f" WHERE {window.cursor.select_sql} >= ? AND {window.cursor.select_sql} <= ?"
            params = (self._mark(window.cursor, window.low), self._mark(window.cursor, window.high))
        try:
            cur = self.conn.execute(query, params)
            yield from pages_from_rows(guard_encoders(columns), cur.fetchmany)
        except sqlite3.Error as exc:
            raise ExtractError(f"reading table {table} failed: {type(exc).__name__}") from None


def _sqlite_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'
