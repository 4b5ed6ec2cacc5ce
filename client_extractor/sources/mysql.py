"""The MySQL/MariaDB reader: the server sends every value as text, Python encodes it per column.

Without pymysql's decoders each value arrives as the server's text (or raw bytes), which the
column's encoder (chosen from information_schema by ``MysqlReader.columns``) writes as our encoding:
ZEROFILL/YEAR integers lose their padding, FLOAT is widened to DOUBLE so no digit is lost, DATETIME
and TIMESTAMP (in UTC) become ISO text, MariaDB's JSON columns are found by their json_valid check.
Rows stream from a server-side cursor inside one consistent, read-only snapshot. Driver errors are
reduced to class and error code (``mysql_error_text``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from client_extractor import PROG
from client_extractor.encoding import (
    Column,
    enc_bytes_b64,
    enc_float,
    enc_float32,
    enc_json_text,
    enc_quoted,
    enc_raw,
    enc_string,
)
from client_extractor.errors import ConnectError, ExtractError, UsageError, connect_hint
from client_extractor.incremental import Window
from client_extractor.sources.base import Reader, as_text, guard_encoders, pages_from_rows

MYSQL_INTEGER = {"tinyint", "smallint", "mediumint", "int", "integer", "bigint", "year"}
MYSQL_TEXT = {"char", "varchar", "tinytext", "text", "mediumtext", "longtext", "set", "inet4", "inet6"}
MYSQL_BINARY = {
    "binary", "varbinary", "tinyblob", "blob", "mediumblob", "longblob", "geometry", "point", "linestring",
    "polygon", "multipoint", "multilinestring", "multipolygon", "geometrycollection", "vector",
}


def _mysql_ident(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def _enc_mysql_padded_int(v: str | bytes) -> str:
    """ZEROFILL columns and YEAR print leading zeros ('00042', '0000'), which a JSON number may not have."""
    return str(int(enc_raw(v)))


def _enc_mysql_timestamp(v: str | bytes) -> str:
    return '"' + enc_raw(v).replace(" ", "T") + '+00:00"'


def _enc_mysql_datetime(v: str | bytes) -> str:
    return '"' + enc_raw(v).replace(" ", "T") + '"'


def _enc_mysql_float(v: str | bytes) -> str:
    return enc_float(float(enc_raw(v)))


def _enc_mysql_float32(v: str | bytes) -> str:
    return enc_float32(float(enc_raw(v)))


class MysqlReader(Reader):
    dialect = "mysql"

    def connect(self) -> None:
        import pymysql
        import pymysql.converters

        src = self.src
        params = dict(src.params)
        ssl: dict[str, Any] | None = None
        if params.get("ssl_ca") or params.get("ssl", "").lower() in {"1", "true", "required", "require"}:
            ssl = {"ca": params["ssl_ca"]} if params.get("ssl_ca") else {}
        # encoders only: without decoders every value arrives as the server's text (str) or raw bytes
        encoders = {k: v for k, v in pymysql.converters.conversions.items() if not isinstance(k, int)}
        try:
            self.conn = pymysql.connect(
                host=src.host, port=src.port, user=src.user or "", password=self.password or "",
                database=src.database, charset="utf8mb4", conv=encoders, connect_timeout=10,
                autocommit=False, ssl=ssl, program_name=PROG,
            )
            with self.conn.cursor() as cur:
                cur.execute("SET time_zone = '+00:00'")
                cur.execute("SET SESSION net_write_timeout = 3600")
                cur.execute("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                cur.execute("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
        except pymysql.Error as exc:
            detail = self.scrub(mysql_error_text(exc, with_message=True))
            raise ConnectError(f"cannot connect to {src.host}:{src.port}/{src.database} as user '{src.user or ''}': {detail}. {connect_hint(detail)}") from None

    def close(self) -> None:
        try:
            self.conn.rollback()
            self.conn.close()
        except Exception:  # noqa: BLE001, S110 - best effort
            pass

    def _query(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        import pymysql

        try:
            with self.conn.cursor() as cur:
                cur.execute(sql, params)
                return list(cur.fetchall())
        except pymysql.Error as exc:
            raise ExtractError(f"catalog query on {self.src.describe()} failed: {mysql_error_text(exc, with_message=False)}") from None

    def list_tables(self, schema: str) -> list[str]:
        if not self._query("SELECT 1 FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = %s", (schema,)):
            raise UsageError(f"schema (database) {schema!r} does not exist on {self.src.host}:{self.src.port}; pass --schema")
        rows = self._query(
            "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s AND TABLE_TYPE = 'BASE TABLE'",
            (schema,),
        )
        return sorted(as_text(r[0]) for r in rows)

    def existing(self, schema: str, names: tuple[str, ...]) -> set[str]:
        rows = self._query("SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s", (schema,))
        have = {as_text(r[0]) for r in rows}
        return {n for n in names if n in have}

    def _json_checked(self, schema: str, table: str) -> set[str]:
        """MariaDB's JSON is LONGTEXT with a CHECK (json_valid(`col`)); find those columns."""
        try:
            rows = self._query(
                "SELECT CHECK_CLAUSE FROM information_schema.CHECK_CONSTRAINTS WHERE CONSTRAINT_SCHEMA = %s AND TABLE_NAME = %s",
                (schema, table),
            )
        except ExtractError:
            return set()  # servers before CHECK_CONSTRAINTS existed
        names = set()
        for (clause,) in rows:
            m = re.fullmatch(r"\s*json_valid\(`((?:[^`]|``)+)`\)\s*", as_text(clause))
            if m:
                names.add(m.group(1).replace("``", "`"))
        return names

    def columns(self, schema: str, table: str) -> list[Column]:
        json_cols = self._json_checked(schema, table)
        rows = self._query(
            "SELECT COLUMN_NAME, DATA_TYPE, COLUMN_TYPE, IS_NULLABLE, COLUMN_KEY FROM information_schema.COLUMNS "
            "WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s ORDER BY ORDINAL_POSITION",
            (schema, table),
        )
        cols = []
        for name, data_type, column_type, is_nullable, key in rows:
            name, data_type, column_type = as_text(name), as_text(data_type).lower(), as_text(column_type)
            ident = _mysql_ident(name)
            select, encoding, encoder = ident, "string", enc_string
            if data_type in MYSQL_INTEGER:
                padded = data_type == "year" or "zerofill" in column_type.lower()
                encoding, encoder = "integer", _enc_mysql_padded_int if padded else enc_raw
            elif data_type == "bit":
                encoding, encoder, select = "integer", enc_raw, f"({ident} + 0)"
            elif data_type in ("decimal", "numeric"):
                encoding, encoder = "decimal", enc_quoted
            elif data_type == "float":
                # the text protocol rounds FLOAT to 6 digits; widening to DOUBLE is exact
                encoding, encoder, select = "float", _enc_mysql_float32, f"({ident} + 0e0)"
            elif data_type in ("double", "real", "double precision"):
                encoding, encoder = "float", _enc_mysql_float
            elif data_type == "json" or (name in json_cols and data_type in MYSQL_TEXT | {"longtext"}):
                encoding, encoder = "json", enc_json_text
            elif data_type == "enum":
                encoding = "enum"
            elif data_type in MYSQL_BINARY:
                encoding, encoder = "bytes_base64", enc_bytes_b64
            elif data_type == "date":
                encoding, encoder = "date", enc_quoted
            elif data_type == "datetime":
                encoding, encoder = "timestamp", _enc_mysql_datetime
            elif data_type == "timestamp":
                encoding, encoder = "timestamptz", _enc_mysql_timestamp
            elif data_type == "time":
                encoding, encoder = "time", enc_quoted
            elif data_type == "uuid":
                encoding, encoder = "uuid", enc_quoted
            cols.append(Column(name, column_type, encoding, as_text(is_nullable) == "YES", as_text(key) == "PRI", select_sql=select, encode=encoder))
        return cols

    def high_mark(self, schema: str, table: str, cursor: Column) -> str | None:
        import pymysql

        query = f"SELECT MAX({cursor.select_sql}) FROM {_mysql_ident(schema)}.{_mysql_ident(table)}"
        try:
            with self.conn.cursor() as cur:
                cur.execute(query)
                row = cur.fetchone()
        except pymysql.Error as exc:
            raise ExtractError(f"reading the high mark of {schema}.{table}.{cursor.name} failed: "
                               f"{mysql_error_text(exc, with_message=False)}") from None
        return None if row is None or row[0] is None else as_text(row[0])

    def _where(self, window: Window | None) -> str:
        """The window as a WHERE clause, the marks escaped as string literals (the server compares
        them as the cursor's type); no %s parameters, so a '%' in a column name stays as it is."""
        if window is None:
            return ""
        if window.high is None:
            return " WHERE FALSE"
        c = window.cursor.select_sql
        return f" WHERE {c} >= {self.conn.escape(window.low)} AND {c} <= {self.conn.escape(window.high)}"

    def stream(self, schema: str, table: str, columns: list[Column],
               window: Window | None = None) -> Iterator[tuple[bytes, int]]:
        import pymysql
        import pymysql.cursors

        query = (f"SELECT {', '.join(c.select_sql for c in columns)} FROM {_mysql_ident(schema)}.{_mysql_ident(table)}"
                 f"{self._where(window)}")
        cur = self.conn.cursor(pymysql.cursors.SSCursor)
        try:
            cur.execute(query)
            yield from pages_from_rows(guard_encoders(columns), cur.fetchmany)
        except pymysql.Error as exc:
            raise ExtractError(f"reading table {schema}.{table} failed: {mysql_error_text(exc, with_message=False)}") from None
        except UnicodeDecodeError:
            raise ExtractError(f"table {schema}.{table}: the server sent text that is not valid UTF-8") from None
        finally:
            try:
                cur.close()
            except Exception:  # noqa: BLE001, S110 - a broken stream must not hide the first error
                pass


def mysql_error_text(exc: Exception, with_message: bool) -> str:
    args: tuple[Any, ...] = tuple(getattr(exc, "args", ()))
    code = args[0] if args and isinstance(args[0], int) else None
    text = type(exc).__name__ + (f" ({code})" if code is not None else "")
    if with_message and len(args) > 1 and isinstance(args[1], str):
        text += f": {' '.join(args[1].split())}"
    return text
