"""Copy a batch's rows from staging's dummy production into production in one transaction.

Conflict resolution, for a row with the same primary key (client_id + the entity's id):

- newer or equal batch date wins: a row written by a newer batch (``source_batch_date``) is never
  overwritten by an older one, so a late upload of yesterday's files cannot undo today's;
- among those, the row is rewritten only if a business column differs or its batch date moves
  forward; replaying a batch rewrites nothing.

Rows absent from the batch are kept (an extract is not a delete). Tables go in foreign-key order
and the transaction commits once: all of the batch lands, or none of it does.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from clientflow.entities import ENTITY_ORDER, entity

_SCHEMA = "practice"
BATCH_DATE = "source_batch_date"


@dataclass(frozen=True)
class PromotedCounts:
    entity: str
    offered: int
    inserted: int
    updated: int
    kept_newer: int = 0

    @property
    def unchanged(self) -> int:
        return self.offered - self.inserted - self.updated - self.kept_newer


def _upsert_sql(name: str, staging_table: str) -> sql.Composed:
    ours = entity(name)
    cols = ours.production_columns
    keys = ours.primary_key
    business = [c for c in ours.business_columns if c not in keys]
    target = sql.Identifier(_SCHEMA, name)
    col_list = sql.SQL(", ").join(sql.Identifier(c) for c in cols)
    updates = sql.SQL(", ").join(
        sql.SQL("{} = excluded.{}").format(sql.Identifier(c), sql.Identifier(c))
        for c in cols
        if c not in keys
    )
    changed = sql.SQL("({}) is distinct from ({})").format(
        sql.SQL(", ").join(sql.SQL("t.{}").format(sql.Identifier(c)) for c in (*business, BATCH_DATE)),
        sql.SQL(", ").join(sql.SQL("excluded.{}").format(sql.Identifier(c)) for c in (*business, BATCH_DATE)),
    )
    not_older = sql.SQL("(t.{d} is null or t.{d} <= excluded.{d})").format(d=sql.Identifier(BATCH_DATE))
    return sql.SQL(
        "insert into {target} as t ({cols}) select {cols} from {staging} "
        "on conflict ({keys}) do update set {updates} where {not_older} and {changed} "
        "returning (xmax = 0) as inserted"
    ).format(
        not_older=not_older,
        target=target,
        cols=col_list,
        staging=sql.Identifier(staging_table),
        keys=sql.SQL(", ").join(sql.Identifier(k) for k in keys),
        updates=updates,
        changed=changed,
    )


def _newer_in_production_sql(name: str, staging_table: str) -> sql.Composed:
    """Rows of the batch that production already holds from a newer batch (left as they are)."""
    keys = entity(name).primary_key
    return sql.SQL(
        "select count(*) from {staging} i join {target} t using ({keys}) where t.{d} > i.{d}"
    ).format(
        staging=sql.Identifier(staging_table),
        target=sql.Identifier(_SCHEMA, name),
        keys=sql.SQL(", ").join(sql.Identifier(k) for k in keys),
        d=sql.Identifier(BATCH_DATE),
    )


def promote(
    staging: psycopg.Connection[Any],
    production: psycopg.Connection[Any],
    client: str,
    ingestion_id: str,
    entities: Iterable[str] = ENTITY_ORDER,
) -> list[PromotedCounts]:
    """Stream each entity's batch rows into production and upsert them, parents first; the
    caller commits."""
    results = []
    for name in (e for e in ENTITY_ORDER if e in set(entities)):
        cols = sql.SQL(", ").join(sql.Identifier(c) for c in entity(name).production_columns)
        temp = f"incoming_{name}"
        production.execute(
            sql.SQL("create temp table {} (like {} including defaults) on commit drop").format(
                sql.Identifier(temp), sql.Identifier(_SCHEMA, name)
            )
        )
        out_sql = sql.SQL(
            "copy (select {} from {} where client_id = {} and ingestion_id = {}) to stdout (format binary)"
        ).format(cols, sql.Identifier(_SCHEMA, name), sql.Literal(client), sql.Literal(ingestion_id))
        in_sql = sql.SQL("copy {} ({}) from stdin (format binary)").format(sql.Identifier(temp), cols)
        with staging.cursor() as out_cur, production.cursor() as in_cur:
            with out_cur.copy(out_sql) as source, in_cur.copy(in_sql) as sink:
                for chunk in source:
                    sink.write(chunk)
        offered = production.execute(sql.SQL("select count(*) from {}").format(sql.Identifier(temp))).fetchone()[0]  # type: ignore[index]
        kept_newer = production.execute(_newer_in_production_sql(name, temp)).fetchone()[0]  # type: ignore[index]
        flags = [row[0] for row in production.execute(_upsert_sql(name, temp))]
        inserted = sum(1 for f in flags if f)
        results.append(PromotedCounts(name, offered, inserted, len(flags) - inserted, kept_newer))
    return results
