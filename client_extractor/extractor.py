"""client-extractor: copy the tables of one client database into the clientflow layout.

Clients run the built binary (PyInstaller onefile) against their own PostgreSQL, MySQL/MariaDB or
SQLite database. For every table it writes, under a local folder or an S3 prefix:

    client=<client>/table=<quoted table>/date=<YYYYMMDD>/run_id=<run_id>/data.json
    client=<client>/table=<quoted table>/date=<YYYYMMDD>/run_id=<run_id>/manifest.json

data.json is a JSON array with one object per row, streamed page by page while sha256 is fed in
the same pass; manifest.json is written last, never overwrites, and describes how every column is
encoded (see docs/extractor.md for the encoding table, exit codes and the config file).

Privacy rules that the whole module keeps: no row value, password or token is ever printed, logged,
written to the manifest or put into an exception message that reaches the user. Driver errors are
reduced to their class and SQLSTATE/code; unexpected errors to their type and line number.

Everything lives in this one file on purpose: it is the unit PyInstaller turns into the binary.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import getpass
import hashlib
import json
import math
import os
import re
import secrets
import sqlite3
import struct
import sys
import tempfile
import time
import tomllib
import traceback
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from json.encoder import encode_basestring  # type: ignore[attr-defined]  # C-accelerated, no ASCII escaping
from typing import Any, BinaryIO

VERSION = "0.1.0"
FORMAT_VERSION = 1
PROG = "client-extractor"

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_CONNECT = 3
EXIT_EXTRACT = 4
EXIT_OUTPUT = 5
EXIT_INTERRUPTED = 130
EXIT_INTERNAL = 70

PASSWORD_ENV = "EXTRACTOR_DB_PASSWORD"
PART_SIZE_ENV = "EXTRACTOR_S3_PART_MB"
MAX_ATTEMPTS_ENV = "EXTRACTOR_S3_MAX_ATTEMPTS"

CLIENT_RE = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
RUN_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
CONFIG_KEYS = {"source", "client", "schema", "tables", "date", "output", "endpoint_url", "run_id", "password"}

PAGE_ROWS = 2000  # rows per page: bounds memory, amortises per-page overhead
JOB_ID_PREFIX = b"clientflow-job-v1\0"
# In json columns SQL NULL is null, so the JSON value null is wrapped (and so is a lone "$json" key)
JSON_NULL_CELL = '{"$json":null}'


# --------------------------------------------------------------------------------------------------
# Errors: each carries its exit code and a message that is safe to print.


class ExtractorError(Exception):
    exit_code = EXIT_INTERNAL


class UsageError(ExtractorError):
    exit_code = EXIT_USAGE


class ConnectError(ExtractorError):
    exit_code = EXIT_CONNECT


class ExtractError(ExtractorError):
    exit_code = EXIT_EXTRACT


class OutputError(ExtractorError):
    exit_code = EXIT_OUTPUT


_OPTION_NAME_RE = re.compile(r"--[a-z][a-z0-9-]*")


class _ArgParser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse prints and exits by itself; keep our format
        raise UsageError(f"{_without_values(message)} (see --help)")


def _without_values(message: str) -> str:
    """argparse quotes what it could not parse: a --source URL holding a password, a mistyped
    `--password secret`. Keep the option names only, never a value."""
    if message.startswith("unrecognized arguments: "):
        tokens = message.removeprefix("unrecognized arguments: ").split()
        names = [m.group(0) for t in tokens if (m := _OPTION_NAME_RE.match(t))]
        message = "unrecognized arguments: " + (" ".join(names) if names else "(values without an option name)")
        if "--password" in names:
            message += f"; the password comes from {PASSWORD_ENV}, 'password' in the config file, or the prompt"
        return message
    ambiguous = re.match(r"ambiguous option: (\S*?)(=.*)? could match (.*)$", message, re.DOTALL)
    if ambiguous:
        return f"ambiguous option: {ambiguous.group(1)} could match {ambiguous.group(3)}"
    return re.sub(r"ignored explicit argument .*", "takes no value", message, flags=re.DOTALL)


# --------------------------------------------------------------------------------------------------
# Settings: command line merged over the config file, validated once.


@dataclass(frozen=True)
class SourceUrl:
    dialect: str  # postgresql | mysql | sqlite
    user: str | None = None
    url_password: str | None = None
    host: str = ""
    port: int = 0
    database: str = ""
    path: str = ""  # sqlite file
    params: tuple[tuple[str, str], ...] = ()

    def describe(self) -> str:
        """Where we connect, for messages: never includes the password."""
        if self.dialect == "sqlite":
            return f"sqlite file {self.path}"
        return f"{self.host}:{self.port}/{self.database}"


@dataclass(frozen=True)
class Settings:
    source: SourceUrl
    client: str
    schema: str
    tables: tuple[str, ...] | None
    date: dt.date
    output: str
    endpoint_url: str | None
    run_id: str
    config_password: str | None


def parse_source_url(url: str) -> SourceUrl:
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep:
        raise UsageError("--source must be a URL such as postgresql://user@host:5432/db, mysql://user@host:3306/db or sqlite:///path/to/file.db")
    if scheme == "sqlite":
        # SQLAlchemy's convention: sqlite:///relative.db and sqlite:////absolute/path.db
        raw = rest.removeprefix("/")
        path = urllib.parse.unquote(raw.split("?", 1)[0])
        if not path:
            raise UsageError("sqlite URL has no file path: use sqlite:///relative.db or sqlite:////absolute/path.db")
        return SourceUrl(dialect="sqlite", path=path)
    dialects = {"postgresql": "postgresql", "postgres": "postgresql", "mysql": "mysql", "mariadb": "mysql"}
    if scheme not in dialects:
        raise UsageError(f"unsupported URL scheme {scheme!r}: use postgresql://, mysql:// (also MariaDB) or sqlite:///")
    dialect = dialects[scheme]
    try:
        parts = urllib.parse.urlsplit("//" + rest)
        port = parts.port
    except ValueError:
        # urlsplit's messages can quote the netloc, which may hold a password: say nothing of it
        raise UsageError("--source is not a valid URL (check the host and port)") from None
    if not parts.hostname:
        raise UsageError("--source has no host: use e.g. postgresql://user@db.example:5432/dbname")
    database = urllib.parse.unquote(parts.path.lstrip("/"))
    if not database:
        raise UsageError("--source has no database name: add it after the port, e.g. .../dbname")
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    # libpq also takes ?password=: treat it as the URL's password (used once, and scrubbed from messages)
    query_passwords = [v for k, v in query if k == "password"]
    params = tuple((k, v) for k, v in query if k != "password")
    url_password = urllib.parse.unquote(parts.password) if parts.password is not None else None
    return SourceUrl(
        dialect=dialect,
        user=urllib.parse.unquote(parts.username) if parts.username else None,
        url_password=url_password if url_password is not None else (query_passwords[-1] if query_passwords else None),
        host=parts.hostname,
        port=port or (5432 if dialect == "postgresql" else 3306),
        database=database,
        params=params,
    )


def load_config(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise UsageError(f"config file not found: {path}") from None
    except OSError as exc:
        raise UsageError(f"cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        # the decoder's message names line and column, not the content
        raise UsageError(f"config file {path} is not valid TOML: {exc}") from None
    unknown = sorted(set(data) - CONFIG_KEYS)
    if unknown:
        raise UsageError(f"config file {path}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(CONFIG_KEYS))}")
    for key, value in data.items():
        if key == "tables":
            if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
                raise UsageError(f"config file {path}: 'tables' must be a list of strings")
        elif not isinstance(value, str):
            raise UsageError(f"config file {path}: {key!r} must be a string")
    if "password" in data and os.name == "posix" and os.stat(path).st_mode & 0o077:
        warn(f"config file {path} holds a password and is readable by other users: run chmod 600 {path}")
    return data


def default_run_id(now: dt.datetime) -> str:
    return now.strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


def build_settings(argv: list[str] | None) -> Settings:
    parser = _ArgParser(
        prog=PROG,
        description="Extract the tables of a client database into clientflow's layout (data.json + manifest.json per table).",
        epilog="The password comes from EXTRACTOR_DB_PASSWORD, the config file's 'password', the URL, or a prompt when run in a terminal. Exit codes: 0 ok, 2 usage, 3 connection/auth, 4 extraction, 5 output/upload, 130 interrupted.",
    )
    parser.add_argument("--source", help="postgresql://user@host:port/db, mysql://user@host:port/db or sqlite:///path")
    parser.add_argument("--client", help="client name: ^[a-z][a-z0-9_]{0,39}$")
    parser.add_argument("--schema", help="default: public (postgresql), the URL's database (mysql), main (sqlite)")
    parser.add_argument("--tables", help="comma-separated table names (default: all tables of the schema)")
    parser.add_argument("--date", help="batch date YYYY-MM-DD (default: today, UTC)")
    parser.add_argument("--output", help="local folder, or s3://bucket[/prefix]")
    parser.add_argument("--endpoint-url", dest="endpoint_url", help="S3-compatible endpoint, e.g. http://127.0.0.1:9000")
    parser.add_argument("--config", help="TOML file with any of: " + ", ".join(sorted(CONFIG_KEYS)))
    parser.add_argument("--run-id", dest="run_id", help="batch id; reuse it to complete an interrupted batch")
    parser.add_argument("--version", action="version", version=f"{PROG} {VERSION}")
    args = parser.parse_args(argv)

    conf = load_config(args.config) if args.config else {}

    def pick(name: str) -> Any:
        value = getattr(args, name)
        return value if value is not None else conf.get(name)

    source_raw = pick("source")
    client = pick("client")
    output = pick("output")
    missing = [f"--{n.replace('_', '-')}" for n, v in (("source", source_raw), ("client", client), ("output", output)) if not v]
    if missing:
        raise UsageError(f"missing {', '.join(missing)} (on the command line or in --config)")
    source = parse_source_url(source_raw)
    if not CLIENT_RE.match(client):
        raise UsageError("--client must match ^[a-z][a-z0-9_]{0,39}$ (lowercase letter first, then lowercase letters, digits or _)")

    if args.tables is not None:
        tables: tuple[str, ...] | None = tuple(t.strip() for t in args.tables.split(",") if t.strip())
        if not tables:
            raise UsageError("--tables is empty")
    elif conf.get("tables") is not None:
        tables = tuple(conf["tables"])
        if not tables:
            raise UsageError("config 'tables' is empty")
    else:
        tables = None

    now = dt.datetime.now(dt.UTC)
    date_raw = pick("date")
    if date_raw is None:
        date = now.date()
    else:
        try:
            if not DATE_RE.match(date_raw):
                raise ValueError
            date = dt.date.fromisoformat(date_raw)
        except ValueError:
            raise UsageError(f"--date must be YYYY-MM-DD, got {date_raw!r}") from None

    run_id = pick("run_id") or default_run_id(now)
    if not RUN_ID_RE.match(run_id):
        raise UsageError("--run-id must be 1-64 characters of letters, digits, '.', '_' or '-', starting with a letter or digit")

    endpoint_url = pick("endpoint_url")
    if endpoint_url and not output.startswith("s3://"):
        raise UsageError("--endpoint-url only applies to an s3:// --output")

    schema = pick("schema") or {"postgresql": "public", "mysql": source.database, "sqlite": "main"}[source.dialect]
    return Settings(
        source=source,
        client=client,
        schema=schema,
        tables=tables,
        date=date,
        output=output,
        endpoint_url=endpoint_url,
        run_id=run_id,
        config_password=conf.get("password"),
    )


def resolve_password(settings: Settings) -> str | None:
    """EXTRACTOR_DB_PASSWORD, then the config file, then the URL, then a no-echo prompt on a terminal."""
    src = settings.source
    if src.dialect == "sqlite":
        return None
    for candidate in (os.environ.get(PASSWORD_ENV), settings.config_password, src.url_password):
        if candidate:
            return candidate
    if sys.stdin is not None and sys.stdin.isatty():
        who = f"{src.user}@" if src.user else ""
        try:
            answer = getpass.getpass(f"Password for {who}{src.host}:{src.port}/{src.database} (Enter for none): ")
        except EOFError:
            answer = ""
        return answer or None
    return None


# --------------------------------------------------------------------------------------------------
# Columns and value encodings shared by all dialects.


@dataclass
class Column:
    name: str
    source_type: str
    encoding: str
    nullable: bool
    primary_key: bool
    select_sql: str = ""  # dialect-specific select expression (not in the manifest)
    encode: Callable[[Any], str] | None = None  # python-side value encoder (mysql, sqlite)

    def manifest_entry(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "source_type": self.source_type,
            "encoding": self.encoding,
            "nullable": self.nullable,
            "primary_key": self.primary_key,
        }


def enc_float(x: float) -> str:
    if math.isnan(x):
        return '"NaN"'
    if math.isinf(x):
        return '"Infinity"' if x > 0 else '"-Infinity"'
    return repr(x)  # shortest round-trip repr, always a valid JSON number ('1e+300', '-0.0')


_F32 = struct.Struct("<f")


def enc_float32(x: float) -> str:
    """Shortest decimal text that reads back as the same single-precision value (like PostgreSQL's float4out)."""
    if not math.isfinite(x):
        return enc_float(x)
    for digits in range(1, 10):
        text = f"{x:.{digits}g}"
        try:
            if _F32.unpack(_F32.pack(float(text)))[0] == x:
                return text
        except OverflowError:  # rounded past the largest single-precision value
            continue
    return repr(x)


def enc_bytes_b64(v: bytes | str) -> str:
    if isinstance(v, str):
        v = v.encode("utf-8")
    return '"' + base64.b64encode(v).decode("ascii") + '"'


def enc_string(v: str | bytes) -> str:
    """A JSON string; a value that is not valid UTF-8 becomes {"$bytes_b64": "..."} for that cell only."""
    if isinstance(v, bytes):
        try:
            v = v.decode("utf-8")
        except UnicodeDecodeError:
            return '{"$bytes_b64":' + enc_bytes_b64(v) + "}"
    return encode_basestring(v)


def enc_json_text(v: str | bytes) -> str:
    """Embed a JSON document as-is; raw CR/LF (only legal as whitespace between tokens) become spaces.

    SQL NULL is written as null, so the JSON value null becomes {"$json":null}; an object whose only key
    is "$json" is wrapped the same way so that the wrapper stays unambiguous.
    """
    if isinstance(v, bytes):
        v = v.decode("utf-8")

    def reject(_: str) -> Any:
        raise ValueError("NaN/Infinity are not JSON")

    parsed = json.loads(v, parse_constant=reject)  # ValueError: the caller reports the column, never the value
    if parsed is None:
        return JSON_NULL_CELL
    text = v.replace("\n", " ").replace("\r", " ")
    if isinstance(parsed, dict) and list(parsed) == ["$json"]:
        return '{"$json":' + text + "}"
    return text


def enc_quoted(v: str | bytes) -> str:
    """Text known to need no JSON escaping (digits, dates, times): just quote it."""
    if isinstance(v, bytes):
        v = v.decode("ascii")
    return '"' + v + '"'


def enc_raw(v: str | bytes) -> str:
    return v.decode("ascii") if isinstance(v, bytes) else v


# --------------------------------------------------------------------------------------------------
# The data file: "[", rows joined by ",\n", "]" -- written and hashed in one pass.


class DataFileWriter:
    def __init__(self, fh: BinaryIO, progress: Progress) -> None:
        self._fh = fh
        self._sha = hashlib.sha256()
        self._progress = progress
        self.rows = 0
        self.size = 0
        self._emit(b"[")

    def _emit(self, chunk: bytes) -> None:
        self._sha.update(chunk)
        self._fh.write(chunk)
        self.size += len(chunk)

    def add_lines(self, page: bytes, count: int) -> None:
        """page: `count` rows, each a JSON object terminated by one b"\\n" and holding no other raw newline."""
        if not count:
            return
        self._emit(b"\n" if self.rows == 0 else b",\n")
        self._emit(page[:-1].replace(b"\n", b",\n"))
        self.rows += count
        self._progress.update(self.rows, self.size)

    def finish(self) -> str:
        self._emit(b"\n]\n" if self.rows else b"]\n")
        self._fh.flush()
        return self._sha.hexdigest()


class Progress:
    """One live line per table on a terminal (stderr); silent otherwise."""

    def __init__(self, label: str, enabled: bool) -> None:
        self.label = label
        self.enabled = enabled
        self.started = time.monotonic()
        self._last = 0.0

    def update(self, rows: int, size: int, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._last < 0.2:
            return
        self._last = now
        elapsed = max(now - self.started, 1e-6)
        sys.stderr.write(f"\r{self.label}: {rows:,} rows, {human_bytes(size)}, {rows / elapsed:,.0f} rows/s\x1b[K")
        sys.stderr.flush()

    def done(self, rows: int, size: int, note: str = "") -> None:
        if not self.enabled:
            return
        self.update(rows, size, force=True)
        sys.stderr.write(f"{note}\n")
        sys.stderr.flush()


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1000
    return f"{n:,.1f} TB"


def warn(message: str) -> None:
    sys.stderr.write(f"{PROG}: warning: {message}\n")


# --------------------------------------------------------------------------------------------------
# Sources. Each reader: connect(), default listing, columns(), stream() -> pages of JSON lines.


class Reader:
    dialect = ""

    def __init__(self, src: SourceUrl, password: str | None) -> None:
        self.src = src
        self.password = password

    def scrub(self, text: str) -> str:
        if self.password:
            text = text.replace(self.password, "***")
        if self.src.url_password:
            text = text.replace(self.src.url_password, "***")
        return text

    def connect(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def list_tables(self, schema: str) -> list[str]:
        raise NotImplementedError

    def existing(self, schema: str, names: tuple[str, ...]) -> set[str]:
        raise NotImplementedError

    def columns(self, schema: str, table: str) -> list[Column]:
        raise NotImplementedError

    def stream(self, schema: str, table: str, columns: list[Column]) -> Iterator[tuple[bytes, int]]:
        raise NotImplementedError


def pages_from_rows(columns: list[Column], fetch: Callable[[int], list[Any]]) -> Iterator[tuple[bytes, int]]:
    """Python-side row encoding (MySQL, SQLite): every cell through its column's encoder."""
    keys = [encode_basestring(c.name) + ":" for c in columns]
    encoders = [c.encode for c in columns]
    triples = list(zip(keys, encoders, strict=False))
    while True:
        batch = fetch(PAGE_ROWS)
        if not batch:
            return
        lines = [
            "{" + ",".join([k + ("null" if v is None else e(v)) for (k, e), v in zip(triples, row, strict=False)]) + "}"  # type: ignore[misc]
            for row in batch
        ]
        lines.append("")
        yield "\n".join(lines).encode("utf-8"), len(batch)


# ---- PostgreSQL -----------------------------------------------------------------------------------

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
            raise ConnectError(f"cannot connect to {src.host}:{src.port}/{src.database} as user '{src.user or '(default)'}': {detail}. {_connect_hint(detail)}") from None
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

    def stream(self, schema: str, table: str, columns: list[Column]) -> Iterator[tuple[bytes, int]]:
        import psycopg
        from psycopg import sql

        target = sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(table)).as_string(self.conn)
        inner = ", ".join(c.select_sql for c in columns)
        # CSV with control characters as delimiter and quote: rows of valid JSON never contain them raw,
        # so each row arrives unquoted and unescaped, one row per message.
        query = (
            f"copy (select pg_catalog.row_to_json(_clientflow_row.*) from (select {inner} from {target}) _clientflow_row) "
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


def _connect_hint(detail: str) -> str:
    low = detail.lower()
    if "password" in low or "access denied" in low or "authentication" in low:
        return f"Check the user name and the password (set {PASSWORD_ENV}, 'password' in the config file, or run in a terminal to be asked)."
    if "does not exist" in low or "unknown database" in low:
        return "Check the database name at the end of --source."
    if "timeout" in low or "timed out" in low:
        return "Check the host and port, and that a firewall lets this machine reach the database."
    return "Check the host, port and that the database server is running and reachable from this machine."


# ---- MySQL / MariaDB ------------------------------------------------------------------------------

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
            raise ConnectError(f"cannot connect to {src.host}:{src.port}/{src.database} as user '{src.user or ''}': {detail}. {_connect_hint(detail)}") from None

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
        return sorted(_text(r[0]) for r in rows)

    def existing(self, schema: str, names: tuple[str, ...]) -> set[str]:
        rows = self._query("SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s", (schema,))
        have = {_text(r[0]) for r in rows}
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
            m = re.fullmatch(r"\s*json_valid\(`((?:[^`]|``)+)`\)\s*", _text(clause))
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
            name, data_type, column_type = _text(name), _text(data_type).lower(), _text(column_type)
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
            cols.append(Column(name, column_type, encoding, _text(is_nullable) == "YES", _text(key) == "PRI", select_sql=select, encode=encoder))
        return cols

    def stream(self, schema: str, table: str, columns: list[Column]) -> Iterator[tuple[bytes, int]]:
        import pymysql
        import pymysql.cursors

        query = f"SELECT {', '.join(c.select_sql for c in columns)} FROM {_mysql_ident(schema)}.{_mysql_ident(table)}"
        cur = self.conn.cursor(pymysql.cursors.SSCursor)
        try:
            cur.execute(query)
            yield from pages_from_rows(_guard_encoders(columns), cur.fetchmany)
        except pymysql.Error as exc:
            raise ExtractError(f"reading table {schema}.{table} failed: {mysql_error_text(exc, with_message=False)}") from None
        except UnicodeDecodeError:
            raise ExtractError(f"table {schema}.{table}: the server sent text that is not valid UTF-8") from None
        finally:
            try:
                cur.close()
            except Exception:  # noqa: BLE001, S110 - a broken stream must not hide the first error
                pass


def _guard_encoders(columns: list[Column]) -> list[Column]:
    """Wrap encoders so a value that cannot be encoded names its column, never its content."""
    out = []
    for c in columns:
        enc = c.encode
        assert enc is not None

        def guarded(v: Any, _enc: Callable[[Any], str] = enc, _col: str = c.name, _kind: str = c.encoding) -> str:
            try:
                return _enc(v)
            except (ValueError, TypeError, UnicodeError):
                raise ExtractError(f"column {_col!r}: a value could not be encoded as {_kind}") from None

        out.append(Column(c.name, c.source_type, c.encoding, c.nullable, c.primary_key, c.select_sql, guarded))
    return out


def mysql_error_text(exc: Exception, with_message: bool) -> str:
    args: tuple[Any, ...] = tuple(getattr(exc, "args", ()))
    code = args[0] if args and isinstance(args[0], int) else None
    text = type(exc).__name__ + (f" ({code})" if code is not None else "")
    if with_message and len(args) > 1 and isinstance(args[1], str):
        text += f": {' '.join(args[1].split())}"
    return text


def _text(v: Any) -> str:
    return v.decode("utf-8") if isinstance(v, (bytes, bytearray)) else str(v)


# ---- SQLite ---------------------------------------------------------------------------------------


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
        return sorted(_text(r[0]) for r in rows)

    def existing(self, schema: str, names: tuple[str, ...]) -> set[str]:
        rows = self._query(f"SELECT name FROM {_sqlite_ident(schema)}.sqlite_master WHERE type IN ('table', 'view')")
        have = {_text(r[0]) for r in rows}
        return {n for n in names if n in have}

    def columns(self, schema: str, table: str) -> list[Column]:
        rows = self._query(f"PRAGMA {_sqlite_ident(schema)}.table_xinfo({_sqlite_ident(table)})")
        cols = []
        for _cid, name, declared, notnull, _default, pk, hidden in rows:
            if hidden == 1:  # hidden columns of virtual tables are not part of SELECT *
                continue
            name, declared = _text(name), _text(declared or "")
            encoding = sqlite_encoding(declared)
            cols.append(Column(name, declared, encoding, not notnull and not pk, bool(pk), select_sql=_sqlite_ident(name), encode=_sqlite_encoder(encoding)))
        return cols

    def stream(self, schema: str, table: str, columns: list[Column]) -> Iterator[tuple[bytes, int]]:
        query = f"SELECT {', '.join(c.select_sql for c in columns)} FROM {_sqlite_ident(schema)}.{_sqlite_ident(table)}"
        try:
            cur = self.conn.execute(query)
            yield from pages_from_rows(_guard_encoders(columns), cur.fetchmany)
        except sqlite3.Error as exc:
            raise ExtractError(f"reading table {table} failed: {type(exc).__name__}") from None


def _sqlite_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


READERS: dict[str, type[Reader]] = {"postgresql": PostgresReader, "mysql": MysqlReader, "sqlite": SqliteReader}


# --------------------------------------------------------------------------------------------------
# Outputs: the same layout under a folder or an S3 prefix. data.json first, manifest.json last.


def table_prefix(settings: Settings, table: str) -> str:
    return (
        f"client={settings.client}/table={urllib.parse.quote(table, safe='')}/"
        f"date={settings.date.strftime('%Y%m%d')}/run_id={settings.run_id}/"
    )


class Target:
    description = ""

    def check(self) -> None:
        raise NotImplementedError

    def manifest_exists(self, prefix: str) -> bool:
        raise NotImplementedError

    def open_data(self, prefix: str) -> tuple[BinaryIO, str]:
        raise NotImplementedError

    def commit_data(self, prefix: str, tmp_path: str, size: int) -> None:
        raise NotImplementedError

    def discard(self, tmp_path: str) -> None:
        try:
            os.unlink(tmp_path)
        except FileNotFoundError:
            pass

    def put_manifest(self, prefix: str, body: bytes) -> None:
        raise NotImplementedError


class LocalTarget(Target):
    def __init__(self, root: str) -> None:
        self.root = root
        self.description = os.path.abspath(root)

    def check(self) -> None:
        try:
            os.makedirs(self.root, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"cannot create output folder {self.root}: {exc.strerror}") from None
        if not os.access(self.root, os.W_OK):
            raise OutputError(f"output folder {self.root} is not writable")

    def _dir(self, prefix: str) -> str:
        return os.path.join(self.root, *prefix.rstrip("/").split("/"))

    def manifest_exists(self, prefix: str) -> bool:
        return os.path.exists(os.path.join(self._dir(prefix), "manifest.json"))

    def open_data(self, prefix: str) -> tuple[BinaryIO, str]:
        folder = self._dir(prefix)
        try:
            os.makedirs(folder, exist_ok=True)
            tmp = os.path.join(folder, ".data.json.partial")
            return open(tmp, "wb", buffering=1 << 20), tmp
        except OSError as exc:
            raise OutputError(f"cannot write in {folder}: {exc.strerror}") from None

    def commit_data(self, prefix: str, tmp_path: str, size: int) -> None:
        try:
            os.replace(tmp_path, os.path.join(self._dir(prefix), "data.json"))
        except OSError as exc:
            raise OutputError(f"cannot finish {self._dir(prefix)}/data.json: {exc.strerror}") from None

    def put_manifest(self, prefix: str, body: bytes) -> None:
        folder = self._dir(prefix)
        final = os.path.join(folder, "manifest.json")
        tmp = os.path.join(folder, ".manifest.json.partial")
        try:
            with open(tmp, "wb") as fh:
                fh.write(body)
                fh.flush()
                os.fsync(fh.fileno())
            os.link(tmp, final)  # fails if it exists: never overwrite a manifest
        except FileExistsError:
            raise OutputError(f"{final} already exists (another run with the same --run-id?); nothing was overwritten") from None
        except OSError as exc:
            raise OutputError(f"cannot write {final}: {exc.strerror}") from None
        finally:
            self.discard(tmp)


class S3Target(Target):
    def __init__(self, url: str, endpoint_url: str | None) -> None:
        rest = url[len("s3://"):]
        bucket, _, prefix = rest.partition("/")
        if not bucket:
            raise UsageError("--output s3:// needs a bucket: s3://bucket[/prefix]")
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.endpoint_url = endpoint_url
        self.description = f"s3://{bucket}/{self.prefix}"
        self.tmp_dir = tempfile.gettempdir()

    def _client(self) -> Any:
        import boto3
        from botocore.config import Config

        attempts = int(os.environ.get(MAX_ATTEMPTS_ENV, "5"))
        config = Config(
            # total_max_attempts counts the first try (max_attempts would count retries only: one more);
            # standard mode: exponential backoff with jitter on network errors, throttling and 5xx
            retries={"total_max_attempts": max(1, attempts), "mode": "standard"},
            connect_timeout=10,
            read_timeout=120,
            user_agent_extra=f"{PROG}/{VERSION}",
        )
        return boto3.session.Session().client("s3", endpoint_url=self.endpoint_url, config=config)

    def check(self) -> None:
        import botocore.exceptions as bx

        try:
            self.s3 = self._client()
            self.s3.head_bucket(Bucket=self.bucket)
        except bx.NoCredentialsError:
            raise OutputError("no S3 credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)") from None
        except bx.ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "?")
            raise OutputError(f"cannot use bucket {self.bucket!r} ({code}): check the bucket name and that these credentials may write to it") from None
        except (bx.BotoCoreError, ValueError) as exc:
            raise OutputError(f"cannot reach S3{' at ' + self.endpoint_url if self.endpoint_url else ''}: {type(exc).__name__}: {exc}") from None

    def manifest_exists(self, prefix: str) -> bool:
        import botocore.exceptions as bx

        try:
            self.s3.head_object(Bucket=self.bucket, Key=self.prefix + prefix + "manifest.json")
            return True
        except bx.ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in {"404", "NoSuchKey", "NotFound"}:
                return False
            if code in {"403", "AccessDenied"}:
                return False  # may not read; the conditional write still refuses to overwrite
            raise OutputError(f"cannot check s3://{self.bucket}/{self.prefix}{prefix}manifest.json: {code}") from None
        except bx.BotoCoreError as exc:
            raise OutputError(f"cannot reach S3: {type(exc).__name__}") from None

    def open_data(self, prefix: str) -> tuple[BinaryIO, str]:
        try:
            fd, tmp = tempfile.mkstemp(prefix="client-extractor-", suffix=".json", dir=self.tmp_dir)
            return os.fdopen(fd, "wb", buffering=1 << 20), tmp
        except OSError as exc:
            raise OutputError(f"cannot create a temporary file in {self.tmp_dir} (set TMPDIR to a folder with space): {exc.strerror}") from None

    def commit_data(self, prefix: str, tmp_path: str, size: int) -> None:
        import botocore.exceptions as bx
        from boto3.exceptions import S3UploadFailedError
        from boto3.s3.transfer import TransferConfig

        part = max(5, int(os.environ.get(PART_SIZE_ENV, "16"))) * 1024 * 1024
        part = max(part, -(-size // 9000))  # S3 allows 10,000 parts
        config = TransferConfig(multipart_threshold=part, multipart_chunksize=part, max_concurrency=4, use_threads=True)
        key = self.prefix + prefix + "data.json"
        try:
            self.s3.upload_file(tmp_path, self.bucket, key, ExtraArgs={"ContentType": "application/json"}, Config=config)
        except (S3UploadFailedError, bx.BotoCoreError, bx.ClientError) as exc:
            raise OutputError(f"upload of s3://{self.bucket}/{key} failed after retries ({type(exc).__name__}); no manifest was written, re-run with the same --run-id and --date to complete the batch") from None

    def put_manifest(self, prefix: str, body: bytes) -> None:
        import botocore.exceptions as bx

        key = self.prefix + prefix + "manifest.json"
        try:
            self.s3.put_object(Bucket=self.bucket, Key=key, Body=body, ContentType="application/json", IfNoneMatch="*")
        except bx.ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in {"PreconditionFailed", "412"}:
                if self._same_manifest(key, body):
                    return  # our own earlier attempt landed before its response was lost
                raise OutputError(f"s3://{self.bucket}/{key} already exists (another run with the same --run-id?); nothing was overwritten") from None
            raise OutputError(f"writing s3://{self.bucket}/{key} failed ({code}); re-run with the same --run-id and --date") from None
        except bx.BotoCoreError as exc:
            raise OutputError(f"writing s3://{self.bucket}/{key} failed ({type(exc).__name__}); re-run with the same --run-id and --date") from None

    def _same_manifest(self, key: str, body: bytes) -> bool:
        try:
            return bool(self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read() == body)
        except Exception:  # noqa: BLE001 - treat as different
            return False


def make_target(settings: Settings) -> Target:
    if settings.output.startswith("s3://"):
        return S3Target(settings.output, settings.endpoint_url)
    if "://" in settings.output:
        raise UsageError("--output must be a local folder or s3://bucket[/prefix]")
    return LocalTarget(settings.output)


# --------------------------------------------------------------------------------------------------
# One table: stream to data.json, commit it, then the manifest.


@dataclass
class TableResult:
    table: str
    rows: int = 0
    size: int = 0
    seconds: float = 0.0
    skipped: bool = False


def job_id(client: str, table: str, date: dt.date, data_sha256: str) -> str:
    material = JOB_ID_PREFIX + f"{client}\0{table}\0{date.isoformat()}\0{data_sha256}".encode()
    return hashlib.sha256(material).hexdigest()[:32]


def build_manifest(settings: Settings, dialect: str, table: str, columns: list[Column], extracted_at: dt.datetime, rows: int, size: int, sha: str) -> bytes:
    manifest = {
        "format_version": FORMAT_VERSION,
        "job_id": job_id(settings.client, table, settings.date, sha),
        "client": settings.client,
        "table": table,
        "schema": settings.schema,
        "date": settings.date.isoformat(),
        "run_id": settings.run_id,
        "extracted_at": extracted_at.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "extractor_version": VERSION,
        "source_dialect": dialect,
        "row_count": rows,
        "byte_size": size,
        "sha256": sha,
        "data_file": "data.json",
        "columns": [c.manifest_entry() for c in columns],
    }
    return (json.dumps(manifest, ensure_ascii=False, indent=2) + "\n").encode("utf-8")


def extract_table(settings: Settings, reader: Reader, target: Target, table: str, show_progress: bool) -> TableResult:
    prefix = table_prefix(settings, table)
    if target.manifest_exists(prefix):
        return TableResult(table, skipped=True)
    started = time.monotonic()
    extracted_at = dt.datetime.now(dt.UTC)
    columns = reader.columns(settings.schema, table)
    progress = Progress(table, show_progress)
    fh, tmp = target.open_data(prefix)
    try:
        with fh:
            writer = DataFileWriter(fh, progress)
            for page, count in reader.stream(settings.schema, table, columns):
                try:
                    writer.add_lines(page, count)
                except OSError as exc:
                    raise OutputError(f"writing data for table {table} failed: {exc.strerror}") from None
            try:
                sha = writer.finish()
            except OSError as exc:
                raise OutputError(f"writing data for table {table} failed: {exc.strerror}") from None
        progress.done(writer.rows, writer.size, " - uploading" if isinstance(target, S3Target) else "")
        target.commit_data(prefix, tmp, writer.size)
        manifest = build_manifest(settings, reader.dialect, table, columns, extracted_at, writer.rows, writer.size, sha)
        target.put_manifest(prefix, manifest)
    finally:
        target.discard(tmp)  # the S3 temp copy, or a local partial file left by a failure
    return TableResult(table, writer.rows, writer.size, time.monotonic() - started)


# --------------------------------------------------------------------------------------------------
# Main.


def select_tables(settings: Settings, reader: Reader) -> list[str]:
    if settings.tables is None:
        tables = reader.list_tables(settings.schema)
        if not tables:
            raise UsageError(f"schema {settings.schema!r} in {reader.src.describe()} has no tables; pass --schema or --tables")
        return tables
    found = reader.existing(settings.schema, settings.tables)
    missing = [t for t in settings.tables if t not in found]
    if missing:
        raise UsageError(f"table(s) not found in schema {settings.schema!r} of {reader.src.describe()}: {', '.join(missing)}")
    return sorted(dict.fromkeys(settings.tables))


def print_summary(settings: Settings, target: Target, results: list[TableResult], seconds: float) -> None:
    done = [r for r in results if not r.skipped]
    rows = sum(r.rows for r in done)
    size = sum(r.size for r in done)
    out = sys.stdout
    out.write(
        f"{PROG} {VERSION}: client {settings.client}, run {settings.run_id}, date {settings.date.isoformat()}: "
        f"{len(done)} table(s) extracted, {len(results) - len(done)} already complete, {rows:,} rows, {human_bytes(size)} "
        f"in {seconds:.1f} s -> {target.description}\n"
    )
    width = max((len(r.table) for r in results), default=0)
    for r in results:
        if r.skipped:
            out.write(f"  {r.table:<{width}}  already complete in this run (skipped)\n")
        else:
            out.write(f"  {r.table:<{width}}  {r.rows:>12,} rows  {human_bytes(r.size):>10}  {r.seconds:7.1f} s\n")
    out.flush()


def run(argv: list[str] | None) -> int:
    settings = build_settings(argv)
    target = make_target(settings)
    target.check()
    password = resolve_password(settings)
    reader = READERS[settings.source.dialect](settings.source, password)
    reader.connect()
    started = time.monotonic()
    results: list[TableResult] = []
    show_progress = sys.stderr.isatty()
    try:
        tables = select_tables(settings, reader)
        for table in tables:
            try:
                results.append(extract_table(settings, reader, target, table, show_progress))
            except ExtractorError as exc:
                if show_progress:
                    sys.stderr.write("\n")
                done = [r.table for r in results]
                raise type(exc)(
                    f"{exc} [table {table}; run {settings.run_id}; completed: {', '.join(done) or 'none'}; "
                    f"re-run with --run-id {settings.run_id} --date {settings.date.isoformat()} to complete the batch]"
                ) from None
    finally:
        reader.close()
    print_summary(settings, target, results, time.monotonic() - started)
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    try:
        return run(argv)
    except ExtractorError as exc:
        sys.stderr.write(f"{PROG}: error: {exc}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        sys.stderr.write(f"\n{PROG}: interrupted; no manifest was written for the table in progress\n")
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - never print a message that might quote a value
        tb = traceback.extract_tb(exc.__traceback__)
        where = f"{os.path.basename(tb[-1].filename)}:{tb[-1].lineno}" if tb else "?"
        sys.stderr.write(f"{PROG}: internal error ({type(exc).__name__} at {where}); please report this with the command you ran (not the password)\n")
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
