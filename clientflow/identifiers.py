"""Identifiers that come from client data: checked, then always quoted.

PostgreSQL silently truncates identifiers to 63 bytes (NAMEDATALEN - 1), so two long client
names can become the same column, and ``ADD COLUMN IF NOT EXISTS`` can then match the wrong one.
We refuse such names instead of merging them. Names that differ only by case are distinct to
PostgreSQL once quoted, but not to the people and tools downstream (dbt, spreadsheets), so they
are refused too, as are names that would shadow a raw table's metadata columns.

Quotes, spaces, semicolons and any printable Unicode are fine: every name is quoted with
``psycopg.sql.Identifier``. Control characters are refused: no database needs them in a column
name, and they would make error messages and logs ambiguous.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable

from psycopg import sql

from client_extractor.contract import CLIENT_NAME

MAX_IDENTIFIER_BYTES = 63
RESERVED_RAW_COLUMNS = ("ingestion_id", "client_name", "source_file", "source_row", "loaded_at")


class IdentifierError(ValueError):
    """A client-supplied name PostgreSQL cannot hold faithfully."""


def check_identifier(name: str, kind: str = "identifier") -> str:
    if not isinstance(name, str) or name == "":
        raise IdentifierError(f"{kind} name is empty")
    if any(unicodedata.category(char) in ("Cc", "Cs") for char in name):
        raise IdentifierError(f"{kind} name {_shown(name)} holds a control character or a lone "
                              "surrogate")
    encoded = name.encode("utf-8")
    if len(encoded) > MAX_IDENTIFIER_BYTES:
        raise IdentifierError(
            f"{kind} name {_shown(name)} is {len(encoded)} bytes; PostgreSQL keeps only "
            f"{MAX_IDENTIFIER_BYTES}, so it would be truncated"
        )
    return name


def check_client_name(name: str) -> str:
    if not CLIENT_NAME.fullmatch(name or ""):
        raise IdentifierError(f"client name {name!r} must match {CLIENT_NAME.pattern}")
    return name


def check_columns(names: Iterable[str], kind: str = "column") -> list[str]:
    """Check every name, and that none collide once case is ignored or with metadata columns."""
    reserved = {r.casefold(): r for r in RESERVED_RAW_COLUMNS}
    seen: dict[str, str] = {}
    checked = []
    for name in names:
        check_identifier(name, kind)
        folded = name.casefold()
        if folded in reserved:
            raise IdentifierError(
                f"{kind} {name!r} collides with the raw-table metadata column {reserved[folded]!r}"
            )
        if folded in seen:
            raise IdentifierError(
                f"{kind} names {seen[folded]!r} and {name!r} differ only by case; refused rather "
                "than merged"
            )
        seen[folded] = name
        checked.append(name)
    return checked


def raw_schema(client: str) -> str:
    return f"raw_{check_client_name(client)}"


def ident(*parts: str) -> sql.Identifier:
    for part in parts:
        check_identifier(part)
    return sql.Identifier(*parts)


def _shown(name: str) -> str:
    """A name as it may appear in a message: repr() escapes what is not printable; long ones cut."""
    return repr(name if len(name) <= 40 else name[:40] + "...")
