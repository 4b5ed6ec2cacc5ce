"""Settings: the command line merged over the TOML config file, validated once.

Owns the options and config keys, the parsing of the --source URL (its password is kept apart and
never shown: SourceUrl.describe leaves it out), the default run id, and where the database password
comes from (EXTRACTOR_DB_PASSWORD, the config file, the URL, a no-echo prompt).
"""

from __future__ import annotations

import argparse
import datetime as dt
import getpass
import os
import secrets
import sys
import tomllib
import urllib.parse
from dataclasses import dataclass
from typing import Any

from client_extractor import PROG, VERSION
from client_extractor.contract import CLIENT_NAME, CLIENT_NAME_RULE, DATE_TEXT, RUN_ID, RUN_ID_RULE
from client_extractor.errors import PASSWORD_ENV, ArgParser, UsageError, warn

CONFIG_KEYS = {"source", "client", "schema", "tables", "date", "output", "endpoint_url", "run_id", "password",
               "state_file", "incremental"}


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
    incremental: tuple[tuple[str, str], ...] = ()
    """(table, cursor column) of the tables extracted incrementally (the config's [incremental])."""
    state_file: str = ""
    """Where the high-water marks of the incremental tables are kept, on this machine."""
    full_refresh: bool = False
    """Take a full snapshot of every table, incremental ones too (their marks restart from it)."""

    def cursor_of(self, table: str) -> str | None:
        return dict(self.incremental).get(table)


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
        elif key == "incremental":
            if not (isinstance(value, dict) and all(isinstance(v, str) and v for v in value.values())):
                raise UsageError(f"config file {path}: [incremental] must map table names to their cursor "
                                 'column, e.g. appointments = "updated_at"')
        elif not isinstance(value, str):
            raise UsageError(f"config file {path}: {key!r} must be a string")
    if "password" in data and os.name == "posix" and os.stat(path).st_mode & 0o077:
        warn(f"config file {path} holds a password and is readable by other users: run chmod 600 {path}")
    return data


def default_run_id(now: dt.datetime) -> str:
    return now.strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


def _parser() -> ArgParser:
    parser = ArgParser(
        prog=PROG,
        description="Extract the tables of a client database into clientflow's layout (data.json + manifest.json per table).",
        epilog="The password comes from EXTRACTOR_DB_PASSWORD, the config file's 'password', the URL, or a prompt when run in a terminal. Exit codes: 0 ok, 2 usage, 3 connection/auth, 4 extraction, 5 output/upload, 130 interrupted.",
    )
    parser.add_argument("--source", help="postgresql://user@host:port/db, mysql://user@host:port/db or sqlite:///path")
    parser.add_argument("--client", help=f"client name: {CLIENT_NAME.pattern}")
    parser.add_argument("--schema", help="default: public (postgresql), the URL's database (mysql), main (sqlite)")
    parser.add_argument("--tables", help="comma-separated table names (default: all tables of the schema)")
    parser.add_argument("--date", help="batch date YYYY-MM-DD (default: today, UTC)")
    parser.add_argument("--output", help="local folder, or s3://bucket[/prefix]")
    parser.add_argument("--endpoint-url", dest="endpoint_url", help="S3-compatible endpoint, e.g. http://127.0.0.1:9000")
    parser.add_argument("--config", help="TOML file with any of: " + ", ".join(sorted(CONFIG_KEYS)))
    parser.add_argument("--run-id", dest="run_id", help="batch id; reuse it to complete an interrupted batch")
    parser.add_argument("--full-refresh", dest="full_refresh", action="store_true",
                        help="take a full snapshot of every table, also those the config's [incremental] names")
    parser.add_argument("--state-file", dest="state_file",
                        help="where the incremental tables' high-water marks are kept (default: "
                             "$XDG_STATE_HOME or ~/.local/state, then clientflow-extractor/CLIENT.json)")
    parser.add_argument("--version", action="version", version=f"{PROG} {VERSION}")
    return parser


def _pick_tables(args: argparse.Namespace, conf: dict[str, Any]) -> tuple[str, ...] | None:
    if args.tables is not None:
        tables = tuple(t.strip() for t in args.tables.split(",") if t.strip())
        if not tables:
            raise UsageError("--tables is empty")
        return tables
    if conf.get("tables") is not None:
        tables = tuple(conf["tables"])
        if not tables:
            raise UsageError("config 'tables' is empty")
        return tables
    return None


def _parse_date(date_raw: str | None, today: dt.date) -> dt.date:
    if date_raw is None:
        return today
    try:
        if not DATE_TEXT.match(date_raw):
            raise ValueError
        return dt.date.fromisoformat(date_raw)
    except ValueError:
        raise UsageError(f"--date must be YYYY-MM-DD, got {date_raw!r}") from None


def build_settings(argv: list[str] | None) -> Settings:
    args = _parser().parse_args(argv)
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
    if not CLIENT_NAME.fullmatch(client):
        raise UsageError(f"--client must match {CLIENT_NAME.pattern} ({CLIENT_NAME_RULE})")

    tables = _pick_tables(args, conf)
    now = dt.datetime.now(dt.UTC)
    date = _parse_date(pick("date"), now.date())

    run_id = pick("run_id") or default_run_id(now)
    if not RUN_ID.fullmatch(run_id):
        raise UsageError(f"--run-id must be {RUN_ID_RULE}")

    endpoint_url = pick("endpoint_url")
    if endpoint_url and not output.startswith("s3://"):
        raise UsageError("--endpoint-url only applies to an s3:// --output")

    schema = pick("schema") or {"postgresql": "public", "mysql": source.database, "sqlite": "main"}[source.dialect]
    incremental = tuple(sorted(conf.get("incremental", {}).items()))
    if tables is not None:
        unlisted = [t for t, _ in incremental if t not in tables]
        if unlisted and args.tables is None:
            raise UsageError(f"config [incremental] names table(s) that 'tables' does not list: {', '.join(unlisted)}")
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
        incremental=incremental,
        state_file=pick("state_file") or default_state_file(client),
        full_refresh=bool(args.full_refresh),
    )


def default_state_file(client: str) -> str:
    """``$XDG_STATE_HOME/clientflow-extractor/CLIENT.json``, or under ``~/.local/state``."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "clientflow-extractor", f"{client}.json")


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
