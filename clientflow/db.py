"""PostgreSQL connections whose errors come out named, and error text that is safe to log or email.

PostgreSQL's messages quote row values ("Failing row contains (...)", "invalid input syntax for
type date: ..."), so :func:`describe_db_error` keeps only the error class and the names of the
objects involved.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import sql

from clientflow.config import PostgresSettings
from clientflow.errors import PermanentError, TransientError, Where

# Connection problems, serialization failures and deadlocks, out of resources (disk, memory,
# connections), locks not available, server shutdowns, I/O errors: worth a retry. Everything else,
# a program limit (54: a table past 1,600 columns) and a refused login (28) among them, is about the
# data, the schema or the set-up, and no retry changes it.
_TRANSIENT_CLASSES = ("08", "40", "53", "55", "57", "58")


def describe_db_error(exc: BaseException) -> str:
    if not isinstance(exc, psycopg.Error):
        return type(exc).__name__
    diag = getattr(exc, "diag", None)
    names = []
    if diag is not None:
        for label, value in (
            ("sqlstate", diag.sqlstate),
            ("schema", diag.schema_name),
            ("table", diag.table_name),
            ("column", diag.column_name),
            ("constraint", diag.constraint_name),
        ):
            if value:
                names.append(f"{label}={value}")
    return f"PostgreSQL {type(exc).__name__}" + (f" ({', '.join(names)})" if names else "")


TENANT_SETTING = "app.client_id"
"""The connection setting production's row-level security policies compare ``client_id`` with
(include/sql/production_rls.sql): unset, a role sees and writes no row at all."""


def set_tenant(conn: psycopg.Connection[Any], client: str, *, local: bool = True) -> None:
    """Make ``client`` the only tenant this connection can see or write in production: for the
    current transaction (``local``), or for the whole session."""
    conn.execute("select set_config(%s, %s, %s)", (TENANT_SETTING, client, local))


def is_transient(exc: psycopg.Error) -> bool:
    """By the error's SQLSTATE class; an error without one (the connection failed or was lost
    before the server answered) is worth a retry."""
    if exc.sqlstate:
        return exc.sqlstate[:2] in _TRANSIENT_CLASSES
    return isinstance(exc, psycopg.OperationalError)


def wrap_db_error(exc: psycopg.Error, where: Where, doing: str) -> PermanentError | TransientError:
    text = f"{doing} failed: {describe_db_error(exc)}"
    return TransientError(text, where) if is_transient(exc) else PermanentError(text, where)


SESSION_SETTINGS = {"jit": "off", "random_page_cost": "1.1"}
"""The planner settings of every session of the pipeline and of dbt (PGOPTIONS, clientflow.transform.dbt_group).

- No JIT compilation: each of the pipeline's queries runs once, and compiling one of its plans took
  1.5-2 s on our machines, more than running it on any batch but the largest (dbt's staging models
  of a large batch turn it back on: dbt/macros/staging/planner_settings.sql).
- Random reads cost what they cost on SSDs: a batch's checks join its rows to the client's tables by
  key, and at the default cost (4, for spinning disks) the planner read all 2,000,000
  dummy-production appointments to count an incremental batch's 20,000 (0.66 s) instead of looking
  them up (0.19 s); a large batch still gets hash joins.
"""


def pg_options(extra: Mapping[str, object] | None = None) -> str:
    """SESSION_SETTINGS, then ``extra``, as libpq's ``options``: the pipeline's connections pass
    them, dbt gets them as PGOPTIONS (with the batch's settings: clientflow.transform.dbt_group).
    libpq splits the options at spaces, so a space or backslash in a value is escaped."""
    settings = {**SESSION_SETTINGS, **(extra or {})}
    return " ".join(f"-c {name}={_option_value(value)}" for name, value in settings.items())


def _option_value(value: object) -> str:
    return str(value).replace("\\", "\\\\").replace(" ", "\\ ")


@contextmanager
def connect(settings: PostgresSettings, where: Where, doing: str) -> Iterator[psycopg.Connection[Any]]:
    """A connection (committed when the block ends, rolled back on an error) whose PostgreSQL,
    S3 and Redis errors, inside the block too, come out as ours and name ``where``; with the
    SESSION_SETTINGS."""
    from clientflow.faults import named

    # The settings travel in the connection's startup packet, as dbt's do (PGOPTIONS): no statement,
    # no round trip, and the block starts outside any transaction.
    with named(where, f"{doing} on {settings.describe()}"), \
            psycopg.connect(settings.conninfo(), options=pg_options(), client_encoding="UTF8") as conn:
        yield conn


COPY_BUFFER = 1 << 20
"""Bytes relayed per write by :func:`relay_copy`. PostgreSQL's COPY sends one message per row;
passing each one on as it came took 5.0-5.2 s for a first load's 2,000,000 appointments, a
megabyte at a time 4.1 s (alternated runs, 2026-12-06)."""


def relay_copy(source: psycopg.Connection[Any], copy_out: sql.Composed,
               target: psycopg.Connection[Any], copy_in: sql.Composed) -> None:
    """Stream the rows of ``copy_out`` (a ``COPY ... TO STDOUT``) on one database into ``copy_in``
    (a ``COPY ... FROM STDIN`` of the same format) on another, without holding them in memory."""
    with source.cursor() as out_cur, target.cursor() as in_cur:
        with out_cur.copy(copy_out) as rows, in_cur.copy(copy_in) as sink:
            pending = bytearray()
            for row in rows:
                pending += row
                if len(pending) >= COPY_BUFFER:
                    sink.write(pending)
                    pending = bytearray()
            if pending:
                sink.write(pending)
