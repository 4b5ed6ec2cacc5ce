"""Copy a batch's rows from staging's dummy production into production in one transaction.

Conflict resolution: the batch's row replaces production's row with the same primary key
(client_id + the entity's id) only if a business column differs; identical rows are left alone,
so replaying a batch changes nothing. Rows absent from the batch are kept (an extract is not a
delete). Tables go in foreign-key order and the transaction commits once: all of the batch lands,
or none of it does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from clientflow.entities import ENTITY_ORDER, PRIMARY_KEYS, business_columns, production_columns

_SCHEMA = "practice"


@dataclass(frozen=True)
class PromotedCounts:
    entity: str
    offered: int
    inserted: int
    updated: int

    @property
    def unchanged(self) -> int:
        return self.offered - self.inserted - self.updated


def _upsert_sql(entity: str, staging_table: str) -> sql.Composed:
    cols = production_columns(entity)
    keys = PRIMARY_KEYS[entity]
    business = [c for c in business_columns(entity) if c not in keys]
    target = sql.Identifier(_SCHEMA, entity)
    col_list = sql.SQL(", ").join(sql.Identifier(c) for c in cols)
    updates = sql.SQL(", ").join(
        sql.SQL("{} = excluded.{}").format(sql.Identifier(c), sql.Identifier(c))
        for c in cols
        if c not in keys
    )
    changed = sql.SQL("({}) is distinct from ({})").format(
        sql.SQL(", ").join(sql.SQL("t.{}").format(sql.Identifier(c)) for c in business),
        sql.SQL(", ").join(sql.SQL("excluded.{}").format(sql.Identifier(c)) for c in business),
    )
    return sql.SQL(
        "insert into {target} as t ({cols}) select {cols} from {staging} "
        "on conflict ({keys}) do update set {updates} where {changed} "
        "returning (xmax = 0) as inserted"
    ).format(
        target=target,
        cols=col_list,
        staging=sql.Identifier(staging_table),
        keys=sql.SQL(", ").join(sql.Identifier(k) for k in keys),
        updates=updates,
        changed=changed,
    )


def promote(
    staging: psycopg.Connection[Any],
    production: psycopg.Connection[Any],
    client: str,
    ingestion_id: str,
) -> list[PromotedCounts]:
    """Stream each entity's batch rows into production and upsert them; the caller commits."""
    results = []
    for entity in ENTITY_ORDER:
        cols = sql.SQL(", ").join(sql.Identifier(c) for c in production_columns(entity))
        temp = f"incoming_{entity}"
        production.execute(
            sql.SQL("create temp table {} (like {} including defaults) on commit drop").format(
                sql.Identifier(temp), sql.Identifier(_SCHEMA, entity)
            )
        )
        out_sql = sql.SQL(
            "copy (select {} from {} where client_id = {} and ingestion_id = {}) to stdout (format binary)"
        ).format(cols, sql.Identifier(_SCHEMA, entity), sql.Literal(client), sql.Literal(ingestion_id))
        in_sql = sql.SQL("copy {} ({}) from stdin (format binary)").format(sql.Identifier(temp), cols)
        with staging.cursor() as out_cur, production.cursor() as in_cur:
            with out_cur.copy(out_sql) as source, in_cur.copy(in_sql) as sink:
                for chunk in source:
                    sink.write(chunk)
        offered = production.execute(sql.SQL("select count(*) from {}").format(sql.Identifier(temp))).fetchone()[0]  # type: ignore[index]
        flags = [row[0] for row in production.execute(_upsert_sql(entity, temp))]
        inserted = sum(1 for f in flags if f)
        results.append(PromotedCounts(entity, offered, inserted, len(flags) - inserted))
    return results
