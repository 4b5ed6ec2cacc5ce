"""The PostgreSQL reader: values are encoded by the server, rows stream out of COPY.

Each column becomes a select expression (``PostgresReader._plan``) whose row_to_json is exactly the
JSON our encodings promise; COPY then hands over one JSON row per message, so Python only frames
pages. The session is pinned (UTC, ISO dates, shortest exact floats, UTF8) and reads one REPEATABLE
READ, read-only snapshot. SQL_ASCII databases may hold text that is not UTF-8: such text cells are
written as {"$bytes_b64": ...}. Driver errors are reduced to class, SQLSTATE and, for classes whose
text never quotes data, the server's primary message (``pg_error_summary``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from client_extractor import PROG
from client_extractor.encoding import JSON_NULL_CELL, Column
from client_extractor.errors import ConnectError, ExtractError, UsageError, connect_hint
from client_extractor.incremental import Window
from client_extractor.sources.base import PAGE_ROWS, Reader

PG_TYPE_QUERY = """
select t.oid, t.typname, n.nspname, t.typtype, t.typcategory, t.typelem, t.typbasetype
from pg_catalog.pg_type t join pg_catalog.pg_namespace n on n.oid = t.typnamespace
where t.oid = %s
"""

PG_COLUMNS_QUERY = """
select a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod), a.atttypid, not a.attnotnull,
       coalesce(a.attnum = any(i.indkey), false)
from pg_catalog.pg_attribute a
join pg_catalog.pg_class c on c.oid = a.attrelid
join pg_catalog.pg_namespace n on n.oid = c.relnamespace
left join pg_catalog.pg_index i on i.indrelid = c.oid and i.indisprimary
where n.nspname = %s and c.relname = %s and a.attnum > 0 and not a.attisdropped
order by a.attnum
"""

# pg_catalog type name -> encoding. Unlisted pg_catalog and extension types are 'string' (their text form).
PG_ENCODINGS = {
    "int2": "integer", "int4": "integer", "int8": "integer", "oid": "integer",
    "numeric": "decimal",
    "float4": "float", "float8": "float",
    "text": "string", "varchar": "string", "bpchar": "string", "name": "string", "char": "string",
    "bytea": "bytes_base64",
    "bool": "boolean",
    "date": "date",
    "time": "time", "timetz": "time",
    "timestamp": "timestamp", "timestamptz": "timestamptz",
    "interval": "interval",
    "uuid": "uuid",
    "json": "json", "jsonb": "json",
}
PG_NATIVE_TEXT = {"text", "varchar", "bpchar", "name", "char"}
PG_TEXT_ENCODINGS = {"string", "enum"}  # the encodings whose cells become {"$bytes_b64": ...} when not UTF-8
PG_MAXDIM = 6  # PostgreSQL's MAXDIM: an array has at most 6 dimensions

# Matches text that is valid UTF-8 (strictly: no overlongs, no surrogates, nothing above U+10FFFF; text
# never holds NUL). Only used in SQL_ASCII databases, where the regex engine sees one character per byte,
# so \xhh stands for the byte hh.
PG_VALID_UTF8_RE = (
    r"^(?:[\x01-\x7f]|[\xc2-\xdf][\x80-\xbf]|\xe0[\xa0-\xbf][\x80-\xbf]|[\xe1-\xec\xee\xef][\x80-\xbf]{2}"
    r"|\xed[\x80-\x9f][\x80-\xbf]|\xf0[\x90-\xbf][\x80-\xbf]{2}|[\xf1-\xf3][\x80-\xbf]{3}|\xf4[\x80-\x8f][\x80-\xbf]{2})*$"
)
# The key "$json" however a json text spells it (each character raw or as a \uXXXX escape; matching
# without the quotes only adds false alarms). A json object whose text does not match has no "$json" key and
# is not handed to -> and json_object_keys, which decode every escape: in a SQL_ASCII database an escape
# above U+007F makes them fail.
PG_JSON_KEY_RE = r"(?:[$]|\\u0024)(?:j|\\u006[aA])(?:s|\\u0073)(?:o|\\u006[fF])(?:n|\\u006[eE])"


def _pg_e_literal(text: str) -> str:
    """An E'' literal (means the same whatever standard_conforming_strings is) for ASCII text."""
    return "E'" + text.replace("\\", "\\\\").replace("'", "''") + "'"


def _pg_text_of(t: _PgType, value: str) -> str:
    """The text a to_json of value writes (char(n) keeps its padding, which a cast to text drops)."""
    if t.nspname == "pg_catalog" and t.typname == "bpchar":
        return f"pg_catalog.textin(pg_catalog.bpcharout({value}))"
    return f"({value})::text"


def _pg_is_utf8(text: str) -> str:
    return f"({text}) collate pg_catalog.\"C\" ~ {_pg_e_literal(PG_VALID_UTF8_RE)}"


def _pg_bytes_cell(text: str) -> str:
    """JSON text {"$bytes_b64":"..."} holding the bytes of text exactly.

    convert_to(.., 'SQL_ASCII') in a SQL_ASCII database hands the bytes over as they are; textsend would not:
    it converts to the client encoding (UTF8 here), which fails on the very bytes we are after.
    """
    b64 = f"pg_catalog.translate(pg_catalog.encode(pg_catalog.convert_to({text}, 'SQL_ASCII'), 'base64'), E'\\n', '')"
    return f"('{{\"$bytes_b64\":\"' || {b64} || '\"}}')"


def _pg_json_lone_key(value: str, text: str) -> str:
    """value (json, whose text is text) is an object whose only key is "$json" (however often, however spelled)."""
    return (f"case when pg_catalog.strpos({text}, '$json') = 0 and pg_catalog.strpos({text}, E'\\\\u') = 0 then false "
            f"when not (({text}) ~ {_pg_e_literal(PG_JSON_KEY_RE)}) then false "
            f"else ({value} -> '$json') is not null and not exists "
            f"(select 1 from pg_catalog.json_object_keys({value}) k where k <> '$json') end")


def _pg_json_element(value: str) -> str:
    """JSON text of one json value (CR/LF already blanked), wrapped as the json encoding says; NULL stays NULL."""
    text = f"({value})::text"
    return (f"case pg_catalog.json_typeof({value}) when 'null' then '{JSON_NULL_CELL}' "
            f"when 'object' then case when {_pg_json_lone_key(value, text)} then '{{\"$json\":' || {text} || '}}' "
            f"else {text} end else {text} end")


def _pg_jsonb_element(value: str) -> str:
    text = f"({value})::text"
    return (f"case when pg_catalog.jsonb_typeof({value}) = 'null' then '{JSON_NULL_CELL}' "
            f"when {value} ? '$json' and {value} - '$json' = '{{}}'::jsonb then '{{\"$json\":' || {text} || '}}' "
            f"else {text} end")


def _pg_array_json(array: str, element: Callable[[str], str]) -> str:
    """A json expression: array as nested JSON arrays (its shape kept), each element written as the JSON
    text element("u.v") gives (NULL for a SQL NULL element, written null).

    unnest() yields the elements in row-major order as u.n = 1, 2, ...; with p_d the number of elements in
    one block of dimension d (the product of the lengths of dimensions d..ndims), element n opens one
    bracket for every d whose block starts at n and closes one for every d whose block ends at n.
    """
    dims = range(1, PG_MAXDIM + 1)
    lengths = ", ".join(f"pg_catalog.array_length(a, {d}) as l{d}" for d in dims)
    blocks = ", ".join(" * ".join([f"l{d}"] + [f"coalesce(l{k}, 1)" for k in dims if k > d]) + f" as p{d}" for d in dims)
    opens = " + ".join(f"(case when pg_catalog.mod(u.n - 1, s.p{d}) = 0 then 1 else 0 end)" for d in dims)
    closes = " + ".join(f"(case when pg_catalog.mod(u.n, s.p{d}) = 0 then 1 else 0 end)" for d in dims)
    # each "offset 0" keeps its subquery from being inlined, so that the array and its block sizes are
    # computed once per row rather than once per mention (per element, for the block sizes)
    bound = (f"(select a, {blocks} from (select a, {lengths} from (select {array} as a offset 0) a0 offset 0) l0 "
             "offset 0) s")
    return (
        f"(select case when s.a is null then null when pg_catalog.cardinality(s.a) = 0 then '[]'::json else ("
        f"select pg_catalog.string_agg(pg_catalog.repeat('[', {opens}) || coalesce({element('u.v')}, 'null') "
        f"|| pg_catalog.repeat(']', {closes}), ',' order by u.n)::json "
        f"from pg_catalog.unnest(s.a) with ordinality u(v, n)) end from {bound})"
    )


def _pg_array_unless(array: str, suspect: Callable[[str], str], element: Callable[[str], str]) -> str:
    """A json expression: to_json(array), or, when suspect(its JSON text) holds, _pg_array_json(array, element).

    The common case costs one to_json ("offset 0" computes it once) and a scan of its text.
    """
    return (f"(select case when {suspect('j0.j::text')} then {_pg_array_json(array, element)} else j0.j end "
            f"from (select pg_catalog.to_json({array}) as j offset 0) j0)")


def _pg_json_array(ident: str, typname: str) -> str:
    """A json[] or jsonb[] column, each element written as a json cell is. Only an array whose JSON text
    shows "null" (a JSON null or SQL NULL element, or a null inside one) or a "$json" key (in json perhaps
    escaped as \\u0024...; jsonb prints it as it is) goes element by element."""
    if typname == "json":
        array = f"pg_catalog.translate({ident}::text, E'\\n\\r', '  ')::json[]"
        element, marks = _pg_json_element, ["'null'", "'$json'", "E'\\\\u'"]
    else:
        array, element, marks = f"{ident}::jsonb[]", _pg_jsonb_element, ["'null'", "'$json'"]

    def suspect(text: str) -> str:
        return " or ".join(f"pg_catalog.strpos({text}, {m}) > 0" for m in marks)

    return _pg_array_unless(array, suspect, element)


@dataclass
class _PgType:
    oid: int
    typname: str
    nspname: str
    typtype: str
    typcategory: str
    typelem: int
    typbasetype: int


class PostgresReader(Reader):
    dialect = "postgresql"

    def connect(self) -> None:
        import psycopg

        src = self.src
        kwargs: dict[str, Any] = dict(src.params)
        kwargs.setdefault("connect_timeout", "10")
        kwargs.setdefault("application_name", PROG)
        try:
            self.conn = psycopg.connect(
                host=src.host, port=src.port, dbname=src.database, user=src.user or None,
                password=self.password, **kwargs,
            )
        except psycopg.Error as exc:
            detail = self.scrub(" ".join(str(exc).split()))
            raise ConnectError(f"cannot connect to {src.host}:{src.port}/{src.database} as user '{src.user or '(default)'}': {detail}. {connect_hint(detail)}") from None
        self._types: dict[int, _PgType] = {}
        try:
            with self.conn.cursor() as cur:
                cur.execute("select current_setting('server_version_num')::int, current_setting('server_encoding')")
                version, encoding = cur.fetchone()  # type: ignore[misc]
                # until client_encoding is set below, a SQL_ASCII database's text arrives as bytes
                self.server_encoding = encoding.decode("ascii") if isinstance(encoding, bytes) else encoding
                settings = {
                    "TimeZone": "UTC", "DateStyle": "ISO, YMD", "IntervalStyle": "iso_8601",
                    "extra_float_digits": "1" if version >= 120000 else "3",  # 1 = shortest exact on 12+
                    "bytea_output": "hex", "client_encoding": "UTF8",
                    "idle_in_transaction_session_timeout": "0",  # we sit idle in the snapshot while uploading
                }
                for name, value in settings.items():
                    cur.execute("select pg_catalog.set_config(%s, %s, false)", (name, value))
            self.conn.commit()
            self.conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ  # one snapshot for the run
            self.conn.read_only = True
        except psycopg.Error as exc:
            raise ConnectError(f"connected to {src.describe()} but could not prepare the session: {pg_error_summary(exc)}") from None

    def close(self) -> None:
        try:
            self.conn.rollback()
            self.conn.close()
        except Exception:  # noqa: BLE001, S110 - closing is best effort
            pass

    def _query(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        import psycopg

        try:
            with self.conn.cursor() as cur:
                cur.execute(sql, params)
                return cur.fetchall()
        except psycopg.Error as exc:
            raise ExtractError(f"catalog query on {self.src.describe()} failed: {pg_error_summary(exc)}") from None

    def list_tables(self, schema: str) -> list[str]:
        if not self._query("select 1 from pg_catalog.pg_namespace where nspname = %s", (schema,)):
            raise UsageError(f"schema {schema!r} does not exist in {self.src.describe()}; pass --schema")
        rows = self._query(
            "select c.relname from pg_catalog.pg_class c join pg_catalog.pg_namespace n on n.oid = c.relnamespace "
            "where n.nspname = %s and c.relkind in ('r', 'p') and not c.relispartition",
            (schema,),
        )
        return sorted(r[0] for r in rows)

    def existing(self, schema: str, names: tuple[str, ...]) -> set[str]:
        rows = self._query(
            "select c.relname from pg_catalog.pg_class c join pg_catalog.pg_namespace n on n.oid = c.relnamespace "
            "where n.nspname = %s and c.relkind in ('r', 'p', 'v', 'm', 'f') and c.relname = any(%s)",
            (schema, list(names)),
        )
        return {r[0] for r in rows}

    def _type(self, oid: int) -> _PgType:
        if oid not in self._types:
            rows = self._query(PG_TYPE_QUERY, (oid,))
            self._types[oid] = _PgType(*rows[0])
        return self._types[oid]

    def _base(self, oid: int) -> _PgType:
        t = self._type(oid)
        for _ in range(50):  # domains over domains
            if t.typtype != "d":
                break
            t = self._type(t.typbasetype)
        return t

    def _scalar_encoding(self, t: _PgType) -> str:
        if t.typtype == "e":
            return "enum"
        if t.typtype == "c":
            return "json"
        if t.nspname == "pg_catalog":
            return PG_ENCODINGS.get(t.typname, "string")
        return "string"

    def _plan(self, oid: int, ident: str) -> tuple[str, str]:
        """(encoding, select expression) for one column; the expression yields what row_to_json must see."""
        t = self._base(oid)
        if t.typcategory == "A" and t.typelem:
            return self._plan_array(self._base(t.typelem), ident)
        enc = self._scalar_encoding(t)
        if enc == "float":
            # PostgreSQL prints negative zero as -0, which JSON parsers read as the integer 0
            return enc, f"case when {ident} = 0 and {ident}::text = '-0' then '-0.0'::json else pg_catalog.to_json({ident}) end"
        if enc == "decimal":
            return enc, f"{ident}::text"
        if enc == "bytes_base64":
            return enc, f"pg_catalog.translate(pg_catalog.encode({ident}, 'base64'), E'\\n', '')"
        if enc == "json" and t.nspname == "pg_catalog" and t.typname == "json":
            # json keeps its input text; raw CR/LF can only be whitespace there, and our framing is line based
            value = f"pg_catalog.translate({ident}::text, E'\\n\\r', '  ')::json"
            return enc, (
                f"case pg_catalog.json_typeof({ident}) when 'null' then '{JSON_NULL_CELL}'::json "
                f"when 'object' then case when {_pg_json_lone_key(ident, f'{ident}::text')} "
                f"then pg_catalog.json_build_object('$json', {value}) else {value} end else {value} end"
            )
        if enc == "json" and t.nspname == "pg_catalog" and t.typname == "jsonb":
            return enc, (
                f"case when pg_catalog.jsonb_typeof({ident}) = 'null' then '{JSON_NULL_CELL}'::jsonb "
                f"when {ident} ? '$json' and {ident} - '$json' = '{{}}'::jsonb "
                f"then pg_catalog.jsonb_build_object('$json', {ident}) else {ident} end"
            )
        if enc not in PG_TEXT_ENCODINGS:
            return enc, ident
        expr = ident
        if enc == "string" and not (t.nspname == "pg_catalog" and t.typname in PG_NATIVE_TEXT):
            expr = f"{ident}::text"  # avoid casts to json (hstore, PostGIS): we promise a string
        if self.server_encoding != "SQL_ASCII":
            return enc, expr
        # SQL_ASCII stores any bytes: a cell that is not valid UTF-8 is written {"$bytes_b64": ...}
        text = _pg_text_of(t, expr)
        return enc, f"case when not ({_pg_is_utf8(text)}) then {_pg_bytes_cell(text)}::json else pg_catalog.to_json({expr}) end"

    def _plan_array(self, e: _PgType, ident: str) -> tuple[str, str]:
        """(encoding, select expression) for an array column whose element type is e."""
        enc = self._scalar_encoding(e)
        expr = ident
        if enc == "decimal":
            expr = f"{ident}::text[]"
        elif enc == "bytes_base64":
            enc = "bytes_hex"  # to_json gives PostgreSQL's "\\x..." text for bytea elements
        elif enc == "json" and e.nspname == "pg_catalog" and e.typname in ("json", "jsonb"):
            return "array<json>", _pg_json_array(ident, e.typname)
        elif enc == "string" and not (e.nspname == "pg_catalog" and e.typname in PG_NATIVE_TEXT):
            expr = f"{ident}::text[]"
        if enc not in PG_TEXT_ENCODINGS or self.server_encoding != "SQL_ASCII":
            return f"array<{enc}>", expr

        def text_element(v: str) -> str:
            text = _pg_text_of(e, v)
            return f"case when not ({_pg_is_utf8(text)}) then {_pg_bytes_cell(text)} else pg_catalog.to_json({v})::text end"

        # the array's JSON text is valid UTF-8 exactly when every element's text is (to_json adds ASCII only)
        return f"array<{enc}>", _pg_array_unless(expr, lambda text: f"not ({_pg_is_utf8(text)})", text_element)

    def columns(self, schema: str, table: str) -> list[Column]:
        from psycopg import sql

        cols = []
        for name, source_type, type_oid, nullable, pk in self._query(PG_COLUMNS_QUERY, (schema, table)):
            ident = sql.Identifier(name).as_string(self.conn)
            encoding, expr = self._plan(type_oid, ident)
            cols.append(Column(name, source_type, encoding, bool(nullable), bool(pk), select_sql=f"{expr} as {ident}"))
        return cols

    def high_mark(self, schema: str, table: str, cursor: Column) -> str | None:
        import psycopg
        from psycopg import sql

        query = sql.SQL("select max({})::text from {}.{}").format(
            sql.Identifier(cursor.name), sql.Identifier(schema), sql.Identifier(table))
        try:
            with self.conn.cursor() as cur:
                cur.execute(query)
                row = cur.fetchone()
        except psycopg.Error as exc:
            raise ExtractError(f"reading the high mark of {schema}.{table}.{cursor.name} failed: {pg_error_summary(exc)}") from None
        return None if row is None or row[0] is None else str(row[0])

    def _where(self, window: Window | None) -> str:
        """The window as a WHERE clause: the marks are literals the server casts to the cursor's type
        (COPY takes no parameters); the cursor is compared as the table stores it, so an index serves."""
        from psycopg import sql

        if window is None:
            return ""
        if window.high is None:
            return " where false"
        return sql.SQL(" where {c} >= {low} and {c} <= {high}").format(
            c=sql.Identifier(window.cursor.name), low=sql.Literal(window.low), high=sql.Literal(window.high),
        ).as_string(self.conn)

    def stream(self, schema: str, table: str, columns: list[Column],
               window: Window | None = None) -> Iterator[tuple[bytes, int]]:
        import psycopg
        from psycopg import sql

        target = sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(table)).as_string(self.conn)
        inner = ", ".join(c.select_sql for c in columns)
        # CSV with control characters as delimiter and quote: rows of valid JSON never contain them raw,
        # so each row arrives unquoted and unescaped, one row per message.
        query = (
            f"copy (select pg_catalog.row_to_json(_clientflow_row.*) from (select {inner} from {target}{self._where(window)}) _clientflow_row) "
            "to stdout with (format csv, delimiter E'\\x02', quote E'\\x01')"
        )
        # only SQL_ASCII stores bytes that are not UTF-8; _plan writes such text cells as {"$bytes_b64": ...},
        # so what is left to refuse is what cannot be written exactly (json, jsonb, composite values)
        check_utf8 = self.server_encoding == "SQL_ASCII"
        try:
            with self.conn.cursor() as cur, cur.copy(query) as copy:
                buf: list[Any] = []  # memoryview or bytes, one row per COPY message
                append = buf.append
                for message in copy:
                    append(message)
                    if len(buf) >= PAGE_ROWS:
                        yield self._page(buf, table, check_utf8), len(buf)
                        buf.clear()
                if buf:
                    yield self._page(buf, table, check_utf8), len(buf)
        except psycopg.Error as exc:
            if check_utf8 and getattr(exc, "sqlstate", None) == "22021":  # the server refused to send invalid UTF-8
                raise ExtractError(self._not_utf8(table)) from None
            raise ExtractError(f"reading table {schema}.{table} failed: {pg_error_summary(exc)}") from None

    @staticmethod
    def _not_utf8(table: str) -> str:
        return (f"table {table} holds a json, jsonb or composite value that is not valid UTF-8 (the database encoding "
                "is SQL_ASCII); it cannot be written as JSON exactly, so the table is not extracted. Text and enum "
                'columns are not the cause: they are written as {"$bytes_b64": ...}')

    @classmethod
    def _page(cls, buf: list[Any], table: str, check_utf8: bool) -> bytes:
        page = b"".join(buf)  # join takes the memoryviews as they are
        if b"\x01" in page:
            raise ExtractError(f"table {table}: a row did not arrive as a single line of JSON; the table has a column type this extractor cannot frame, please report it")
        if check_utf8:  # a safety net: the server already refuses to send invalid UTF-8 to a UTF8 client
            try:
                page.decode("utf-8")
            except UnicodeDecodeError:
                raise ExtractError(cls._not_utf8(table)) from None
        return page


def pg_error_summary(exc: Exception) -> str:
    """Class, SQLSTATE and, only for classes whose text never quotes data, the server's primary message."""
    sqlstate = getattr(exc, "sqlstate", None)
    text = f"{type(exc).__name__}"
    if sqlstate:
        text += f" (SQLSTATE {sqlstate})"
        diag = getattr(exc, "diag", None)
        primary = getattr(diag, "message_primary", None) if diag is not None else None
        if primary and sqlstate[:2] in {"08", "28", "3D", "3F", "42", "53", "54", "55", "57", "58", "25", "40"}:
            text += f": {primary}"
    return text
