"""Copy a batch's changes from staging's dummy production into production, in one transaction.

dbt merged the batch's change set (``changes_<entity>``: new, changed, revived and soft-deleted
rows) into dummy production, which equalled production before the batch; those rows, and only
those, carry the batch's ingestion id. Promotion copies them, entity by entity in foreign-key
order, into production with ``INSERT ... ON CONFLICT DO UPDATE``, and commits once: all of the
batch lands, or none of it does. A batch that changed 1% of the rows copies 1% of them.

Conflict resolution, for a row with the same primary key (``client_id`` + the entity's id; the
tenant key is always part of it, so two clients' equal ids never meet):

- newer or equal batch date wins: a row written by a newer batch (``source_batch_date``) is never
  overwritten by an older one;
- a row is rewritten only if a business column, its deletion or its batch date changes; replaying
  a batch rewrites nothing.

Soft deletes arrive as rows with ``deleted_at`` set; a row that returns gets it cleared. The
promotion writes ``promotions`` (one row per batch) in the same transaction: if that row exists,
the batch is in production, whatever the ledger says.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import psycopg
from psycopg import sql

from clientflow.entities import ENTITY_ORDER, entity

SCHEMA = "practice"
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


def _names(columns: Iterable[str], prefix: str = "") -> sql.Composed:
    return sql.SQL(", ").join(sql.SQL(prefix) + sql.Identifier(c) for c in columns)


def _upsert_sql(name: str, incoming: str) -> sql.Composed:
    """The upsert of one entity from the temp table ``incoming``, counting inserts and updates."""
    ours = entity(name)
    cols, keys = ours.production_columns, ours.primary_key
    watched = [c for c in (*ours.business_columns, "deleted_at") if c not in keys]
    return sql.SQL(
        "with written as ("
        " insert into {target} as t ({cols}) select {cols} from {incoming}"
        " on conflict ({keys}) do update set {updates}"
        " where (t.{d} is null or t.{d} <= excluded.{d})"
        " and (({old}, t.{d}) is distinct from ({new}, excluded.{d}))"
        " returning (xmax = 0) as inserted)"
        " select count(*) filter (where inserted), count(*) filter (where not inserted) from written"
    ).format(
        target=sql.Identifier(SCHEMA, name), incoming=sql.Identifier(incoming), cols=_names(cols),
        keys=_names(keys), d=sql.Identifier(BATCH_DATE),
        updates=sql.SQL(", ").join(sql.SQL("{c} = excluded.{c}").format(c=sql.Identifier(c))
                                   for c in cols if c not in keys),
        old=_names(watched, "t."), new=_names(watched, "excluded."),
    )


def _copy_batch(staging: psycopg.Connection[Any], production: psycopg.Connection[Any], name: str,
                client: str, ingestion_id: str, promoted_at: datetime) -> str:
    """Stream the batch's rows of one entity from dummy production into a temp table in production."""
    cols = entity(name).production_columns
    incoming = f"incoming_{name}"
    production.execute(sql.SQL("create temp table {} (like {} including defaults) on commit drop").format(
        sql.Identifier(incoming), sql.Identifier(SCHEMA, name)))
    selected = [sql.Literal(promoted_at) + sql.SQL("::timestamptz") if c == "promoted_at" else sql.Identifier(c)
                for c in cols]
    out_sql = sql.SQL("copy (select {} from {} where client_id = {} and ingestion_id = {}) to stdout (format binary)").format(
        sql.SQL(", ").join(selected), sql.Identifier(SCHEMA, name), sql.Literal(client), sql.Literal(ingestion_id))
    in_sql = sql.SQL("copy {} ({}) from stdin (format binary)").format(sql.Identifier(incoming), _names(cols))
    with staging.cursor() as out_cur, production.cursor() as in_cur:
        with out_cur.copy(out_sql) as source, in_cur.copy(in_sql) as sink:
            for chunk in source:
                sink.write(chunk)
    return incoming


def _count(conn: psycopg.Connection[Any], query: sql.Composed) -> int:
    row = conn.execute(query).fetchone()
    assert row is not None  # aggregates always return a row
    return int(row[0])


def _kept_newer(staging: psycopg.Connection[Any], client: str, name: str, ingestion_id: str, batch_date: date) -> int:
    """Rows of the batch that stayed out because dummy production (so production) holds them
    from a newer batch: a late upload of yesterday's files never undoes today's."""
    key = sql.Identifier(entity(name).key)
    return _count(staging, sql.SQL(
        "select count(*) from {stg} s join {dummy} d on d.client_id = {c} and d.{key} = s.{key} "
        "where s.ingestion_id = {i} and s.occurrence = 1 and not s.has_error and d.{d} > {day}").format(
        stg=sql.Identifier(f"stg_{client}", f"stg_{name}"), dummy=sql.Identifier(SCHEMA, name), c=sql.Literal(client),
        key=key, i=sql.Literal(ingestion_id), d=sql.Identifier(BATCH_DATE), day=sql.Literal(batch_date)))


def promote(
    staging: psycopg.Connection[Any],
    production: psycopg.Connection[Any],
    client: str,
    ingestion_id: str,
    batch_date: date,
    entities: Iterable[str] = ENTITY_ORDER,
) -> tuple[list[PromotedCounts], datetime]:
    """Upsert the batch's rows of each entity, parents first, and record the promotion; the
    caller commits production (and then dummy production's ``promoted_at``, same value)."""
    row = production.execute("select clock_timestamp()").fetchone()
    assert row is not None
    promoted_at: datetime = row[0]
    wanted = set(entities)
    results = []
    for name in (e for e in ENTITY_ORDER if e in wanted):
        incoming = _copy_batch(staging, production, name, client, ingestion_id, promoted_at)
        offered = _count(production, sql.SQL("select count(*) from {}").format(sql.Identifier(incoming)))
        newer = _kept_newer(staging, client, name, ingestion_id, batch_date)
        written = production.execute(_upsert_sql(name, incoming)).fetchone()
        assert written is not None
        results.append(PromotedCounts(name, offered, int(written[0]), int(written[1]), newer))
    production.execute(
        "insert into practice.promotions (client_id, ingestion_id, batch_date, promoted_at, rows_written) "
        "values (%s, %s, %s, %s, %s) on conflict (client_id, ingestion_id) do update set "
        "promoted_at = excluded.promoted_at, rows_written = excluded.rows_written",
        (client, ingestion_id, batch_date, promoted_at,
         json.dumps({c.entity: c.inserted + c.updated for c in results})),
    )
    return results, promoted_at


def was_promoted(production: psycopg.Connection[Any], client: str, ingestion_id: str) -> bool:
    """Whether production holds the batch (its promotion committed), whatever the ledger says."""
    return production.execute("select 1 from practice.promotions where client_id = %s and ingestion_id = %s",
                              (client, ingestion_id)).fetchone() is not None
