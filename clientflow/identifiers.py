"""Identifiers that come from client data: checked, then always quoted.

PostgreSQL silently truncates identifiers to 63 bytes (NAMEDATALEN - 1), so two long client
names can become the same column. We refuse such names instead of merging them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from psycopg import sql

MAX_IDENTIFIER_BYTES = 63
CLIENT_NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
RESERVED_RAW_COLUMNS = ("ingestion_id", "client_name", "source_file", "source_row", "loaded_at")


class IdentifierError(ValueError):
    """A client-supplied name PostgreSQL cannot hold faithfully."""


def check_identifier(name: str, kind: str = "identifier") -> str:
    if not isinstance(name, str) or name == "":
        raise IdentifierError(f"{kind} name is empty")
    if "\x00" in name:
        raise IdentifierError(f"{kind} name contains a NUL byte")
    encoded = name.encode("utf-8", errors="strict")
    if len(encoded) > MAX_IDENTIFIER_BYTES:
        raise IdentifierError(
            f"{kind} name {name[:20]!r}... is {len(encoded)} bytes; PostgreSQL keeps only "
            f"{MAX_IDENTIFIER_BYTES}, so it would be truncated"
        )
    return name


def check_client_name(name: str) -> str:
    if not CLIENT_NAME.match(name or ""):
        raise IdentifierError(f"client name {name!r} must match {CLIENT_NAME.pattern}")
    return name


def check_columns(names: Iterable[str], kind: str = "column") -> list[str]:
    """Check every name, and that none collide once PostgreSQL is done with them."""
    seen: dict[str, str] = {}
    checked = []
    for name in names:
        check_identifier(name, kind)
        if name in RESERVED_RAW_COLUMNS:
            raise IdentifierError(f"{kind} {name!r} collides with a raw-table metadata column")
        folded = name.lower()
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
