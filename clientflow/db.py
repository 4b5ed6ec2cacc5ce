"""PostgreSQL connections, and error text that is safe to log or email.

PostgreSQL's messages quote row values ("Failing row contains (...)", "invalid input syntax for
type date: ..."), so :func:`describe_db_error` keeps only the error class and the names of the
objects involved.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg

from clientflow.config import PostgresSettings
from clientflow.errors import PermanentError, TransientError, Where

# Connection problems and server shutdowns: worth a retry. Everything else is about the data.
_TRANSIENT_CLASSES = ("08", "57", "53", "40")


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


def wrap_db_error(exc: psycopg.Error, where: Where, doing: str) -> Exception:
    sqlstate = exc.sqlstate or ""
    text = f"{doing} failed: {describe_db_error(exc)}"
    if isinstance(exc, psycopg.OperationalError) or sqlstate[:2] in _TRANSIENT_CLASSES:
        return TransientError(text, where)
    return PermanentError(text, where)


@contextmanager
def connect(settings: PostgresSettings, where: Where, doing: str) -> Iterator[psycopg.Connection[Any]]:
    """A connection whose errors come out named and scrubbed; commits on success."""
    try:
        with psycopg.connect(settings.conninfo()) as conn:
            yield conn
    except psycopg.Error as exc:
        raise wrap_db_error(exc, where, f"{doing} on {settings.describe()}") from None
