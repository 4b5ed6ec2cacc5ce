"""Row-count reconciliation: every row of the batch is accounted for.

For each of our entities the client feeds:

    manifest rows = raw rows = staged rows = kept + refused + collapsed duplicates

where the staging table (``stg_<client>.stg_<entity>``) holds one row per raw row, and every kept
row (one per key, without a refused value) is in dummy production after the merge: written by
this batch, already there unchanged, or held newer from a later batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from clientflow.batch import Batch
from clientflow.entities import entity as our_entity
from clientflow.identifiers import ident, raw_schema
from clientflow.load import raw
from clientflow.mapping import ClientMapping

DUMMY_PRODUCTION = "practice"


def staging_schema(client: str) -> str:
    """The client's dbt staging schema (dbt/macros/generate_schema_name.sql)."""
    return f"stg_{client}"


@dataclass(frozen=True)
class EntityCounts:
    entity: str
    manifest_rows: int
    raw_rows: int
    staged_rows: int
    duplicates_collapsed: int
    refused_rows: int
    kept_rows: int
    in_dummy_production: int
    """Kept rows whose key dummy production holds after the merge (it must be all of them)."""
    kept_newer: int
    """Kept rows left out of the change set because dummy production holds them from a newer
    batch date: a late upload of yesterday's files never undoes today's."""
    changes: dict[str, int]
    """What the batch writes: insert, update, revive, delete (changes_<entity>)."""


def one_row(conn: psycopg.Connection[Any], query: sql.Composed, params: tuple[Any, ...]) -> tuple[Any, ...]:
    row = conn.execute(query, params).fetchone()
    assert row is not None  # aggregates always return a row
    return tuple(row)


def count_entity(conn: psycopg.Connection[Any], mapping: ClientMapping, batch: Batch, name: str) -> EntityCounts:
    ingestion_id, client = batch.require_ingestion_id(), mapping.client
    tables, key = mapping.entities[name], sql.Identifier(our_entity(name).key)
    stg = ident(staging_schema(client), f"stg_{name}")
    staged, duplicates, refused = one_row(conn, sql.SQL(
        "select count(*), count(*) filter (where occurrence > 1), "
        "count(*) filter (where occurrence = 1 and has_error) from {} where ingestion_id = %s").format(stg),
        (ingestion_id,))
    kept, present, newer = one_row(conn, sql.SQL(
        "select count(*), count(d.{key}), count(*) filter (where d.source_batch_date > %s) "
        "from {stg} s left join {dummy} d on d.client_id = %s and d.{key} = s.{key} "
        "where s.ingestion_id = %s and s.occurrence = 1 and not s.has_error").format(
        key=key, stg=stg, dummy=ident(DUMMY_PRODUCTION, name)), (batch.day, client, ingestion_id))
    changes = dict(conn.execute(sql.SQL("select change, count(*) from {} group by change").format(
        ident(staging_schema(client), f"changes_{name}"))).fetchall())
    return EntityCounts(
        entity=name,
        manifest_rows=sum(batch.rows_of(t) for t in tables),
        raw_rows=sum(raw.batch_rows(conn, raw_schema(client), t, ingestion_id) for t in tables),
        staged_rows=staged, duplicates_collapsed=duplicates, refused_rows=refused, kept_rows=kept,
        in_dummy_production=present, kept_newer=newer, changes=changes,
    )


def reconcile_problems(counts: EntityCounts) -> list[str]:
    """What does not add up for one entity (empty: everything does)."""
    c, problems = counts, []
    if c.raw_rows != c.manifest_rows:
        problems.append(f"the raw tables hold {c.raw_rows} rows of this batch, the manifests declared {c.manifest_rows}")
    if c.staged_rows != c.raw_rows:
        problems.append(f"staging holds {c.staged_rows} rows, raw holds {c.raw_rows}")
    if c.kept_rows + c.refused_rows + c.duplicates_collapsed != c.staged_rows:
        problems.append(f"{c.kept_rows} kept + {c.refused_rows} refused + {c.duplicates_collapsed} duplicates "
                        f"!= {c.staged_rows} staged")
    if c.in_dummy_production != c.kept_rows:
        problems.append(f"dummy production holds {c.in_dummy_production} of the {c.kept_rows} kept rows")
    return problems
