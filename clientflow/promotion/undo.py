"""Undo a failed batch's merge into dummy production, so that it ends equal to production.

Each dummy-production model keeps, in the same transaction as its merge, the rows the merge
replaced and the keys it inserted (``stg_<client>.undo_<entity>``, tagged with the batch: the
``capture_undo`` pre-hook). When a batch fails after dbt (a validation gate, the promotion),
:func:`undo_batch` puts the replaced rows back and deletes the inserted ones: children first for
the deletes, so no foreign key is ever broken, in one transaction. Its cost follows the size of
the batch's changes, not of the client. Running it twice changes nothing the second time.

Undo rows therefore mean one thing: the batch they name is merged into dummy production and neither
promoted (the promotion deletes them with the SUCCESS it records: :func:`forget_undo`) nor undone.
A run that ended without recording its outcome (its worker died, its lock was taken over, its
failure callback could not reach production) leaves them; the client's next run finds them
(:func:`unsettled`) and settles that batch before its own merge.

A client's first rows of an entity are kept as one row (``undo_key`` null: the client had none),
and undone by deleting the client's rows of the entity, never another client's.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from clientflow.entities import ENTITY_ORDER, PRACTICE_SCHEMA, entity
from clientflow.identifiers import ident


def _undo_table(client: str, name: str) -> sql.Identifier:
    return ident(f"stg_{client}", f"undo_{name}")


def _exists(conn: psycopg.Connection[Any], table: sql.Identifier) -> bool:
    row = conn.execute("select to_regclass(%s)", (table.as_string(conn),)).fetchone()
    return row is not None and row[0] is not None


def _first_rows(conn: psycopg.Connection[Any], undo: sql.Identifier, ingestion_id: str) -> bool:
    """Whether the batch wrote the client's first rows of the entity (the undo's marker row)."""
    return conn.execute(sql.SQL("select exists (select 1 from {} where undo_for = %s and undo_key is null)").format(
        undo), (ingestion_id,)).fetchone() == (True,)


def merged_rows(conn: psycopg.Connection[Any], client: str, name: str, ingestion_id: str) -> int:
    """The rows of ``name`` the batch's dbt build merged into dummy production, from its undo rows
    (logged, kept in the merge's own transaction): one per row, or, for the client's first rows,
    the marker, and then every row dummy production holds of the client."""
    undo = _undo_table(client, name)
    if not _exists(conn, undo):
        return 0
    if _first_rows(conn, undo, ingestion_id):
        query = sql.SQL("select count(*) from {} where client_id = %s").format(sql.Identifier(PRACTICE_SCHEMA, name))
        row = conn.execute(query, (client,)).fetchone()
    else:
        row = conn.execute(sql.SQL("select count(*) from {} where undo_for = %s").format(undo), (ingestion_id,)).fetchone()
    assert row is not None  # aggregates always return a row
    return int(row[0])


def undo_batch(conn: psycopg.Connection[Any], client: str, ingestion_id: str) -> dict[str, int]:
    """Restore dummy production's rows of ``client`` that the batch replaced or inserted; returns
    the rows put back per entity. The caller commits."""
    restored: dict[str, int] = {}
    # The undo tables were just written by dbt and have no statistics: the planner took them for
    # tiny and joined them by nested loop, each dummy-production row against a scan of the whole
    # undo table (the update of a 150,000-patient first load ran over ten minutes). Hash joins
    # keep the cost to the batch's size.
    conn.execute("set local enable_nestloop = off")
    present = [n for n in ENTITY_ORDER if _exists(conn, _undo_table(client, n))]
    for name in present:  # put the replaced rows back (their parents all existed before the batch)
        ours, undo = entity(name), _undo_table(client, name)
        cols = [c for c in ours.production_columns if c not in ours.primary_key]
        restored[name] = conn.execute(sql.SQL(
            "update {target} as d set ({cols}) = ({old}) from {undo} as u "
            "where u.undo_for = %s and u.existed and d.client_id = %s and d.{key} = u.undo_key"
        ).format(target=sql.Identifier(PRACTICE_SCHEMA, name), undo=undo, key=sql.Identifier(ours.key),
                 cols=sql.SQL(", ").join(map(sql.Identifier, cols)),
                 old=sql.SQL(", ").join(sql.SQL("u.{}").format(sql.Identifier(c)) for c in cols)),
            (ingestion_id, client)).rowcount
    for name in reversed(present):  # then delete what the batch inserted, children first
        ours, undo = entity(name), _undo_table(client, name)
        target = sql.Identifier(PRACTICE_SCHEMA, name)
        if _first_rows(conn, undo, ingestion_id):
            deleted = conn.execute(sql.SQL("delete from {} where client_id = %s").format(target), (client,)).rowcount
        else:
            deleted = conn.execute(sql.SQL(
                "delete from {target} as d using {undo} as u "
                "where u.undo_for = %s and not u.existed and d.client_id = %s and d.{key} = u.undo_key"
            ).format(target=target, undo=undo, key=sql.Identifier(ours.key)), (ingestion_id, client)).rowcount
        restored[name] = restored.get(name, 0) + deleted
        _forget(conn, undo, ingestion_id)
    return restored


def unsettled(conn: psycopg.Connection[Any], client: str) -> list[str]:
    """The batches whose undo rows are still kept for ``client``: merged into dummy production,
    and neither promoted nor undone (module docstring)."""
    found: set[str] = set()
    for name in ENTITY_ORDER:
        undo = _undo_table(client, name)
        if _exists(conn, undo):
            found.update(row[0] for row in conn.execute(sql.SQL("select distinct undo_for from {}").format(undo)))
    return sorted(found)


def forget_undo(conn: psycopg.Connection[Any], client: str, ingestion_id: str | None) -> None:
    """Drop the batch's undo rows once production holds it: nothing is left to undo. ``None``
    drops every batch's of the client (dummy production was just copied from production)."""
    for name in ENTITY_ORDER:
        undo = _undo_table(client, name)
        if _exists(conn, undo):
            _forget(conn, undo, ingestion_id)


def _forget(conn: psycopg.Connection[Any], undo: sql.Identifier, ingestion_id: str | None) -> None:
    if ingestion_id is None:
        conn.execute(sql.SQL("delete from {}").format(undo))
    else:
        conn.execute(sql.SQL("delete from {} where undo_for = %s").format(undo), (ingestion_id,))
