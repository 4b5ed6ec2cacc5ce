"""Row-count reconciliation: every row of the batch is accounted for.

For each of our entities the client feeds: its raw tables hold exactly the rows their manifests
declared; the staging table (``stg_<client>.stg_<entity>``, one row per raw row) holds them all;
and the dummy production table holds the kept ones: one per distinct key, without a refused
value. dbt's tests have already checked keys, nulls, accepted values and references.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from clientflow.batch import Batch
from clientflow.errors import ValidationFailed
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
    promoted_rows: int
    """Rows of the batch in dummy production, the ones promotion offers to production."""


def _one(conn: psycopg.Connection[Any], query: sql.Composed, params: tuple[Any, ...]) -> tuple[Any, ...]:
    row = conn.execute(query, params).fetchone()
    assert row is not None  # aggregates always return a row
    return tuple(row)


def count_entity(conn: psycopg.Connection[Any], mapping: ClientMapping, batch: Batch, entity: str) -> EntityCounts:
    ingestion_id = batch.require_ingestion_id()
    tables = mapping.entities[entity]
    staged, duplicates, refused = _one(conn, sql.SQL(
        "select count(*), count(*) filter (where occurrence > 1), "
        "count(*) filter (where occurrence = 1 and has_error) from {} where ingestion_id = %s"
    ).format(ident(staging_schema(mapping.client), f"stg_{entity}")), (ingestion_id,))
    promoted = _one(conn, sql.SQL("select count(*) from {} where client_id = %s and ingestion_id = %s").format(
        ident(DUMMY_PRODUCTION, entity)), (mapping.client, ingestion_id))[0]
    return EntityCounts(
        entity=entity,
        manifest_rows=sum(batch.rows_of(t) for t in tables),
        raw_rows=sum(raw.batch_rows(conn, raw_schema(mapping.client), t, ingestion_id) for t in tables),
        staged_rows=staged, duplicates_collapsed=duplicates, refused_rows=refused, promoted_rows=promoted,
    )


def reconcile(conn: psycopg.Connection[Any], mapping: ClientMapping, batch: Batch) -> list[EntityCounts]:
    results = []
    for entity, tables in mapping.entities.items():
        c = count_entity(conn, mapping, batch, entity)
        where = batch.where(", ".join(tables))
        if c.raw_rows != c.manifest_rows:
            raise ValidationFailed(f"{entity}: the raw tables hold {c.raw_rows} rows of this batch, the "
                                   f"manifests declared {c.manifest_rows}", where)
        if c.staged_rows != c.raw_rows:
            raise ValidationFailed(f"{entity}: staging holds {c.staged_rows} rows of this batch, raw holds "
                                   f"{c.raw_rows}", where)
        kept = c.staged_rows - c.duplicates_collapsed - c.refused_rows
        if c.promoted_rows != kept:
            raise ValidationFailed(f"{entity}: dummy production holds {c.promoted_rows} rows of this batch, "
                                   f"expected {kept} ({c.staged_rows} staged - {c.duplicates_collapsed} "
                                   f"duplicates - {c.refused_rows} refused)", where)
        results.append(c)
    return results
