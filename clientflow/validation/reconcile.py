"""Row-count reconciliation: every row of the batch is accounted for.

For each entity: the raw table holds exactly the manifest's row count for this batch, and the
dummy production table holds one row per distinct key among them (duplicates within the batch
collapse to the last occurrence). dbt's tests have already checked keys, nulls, accepted values
and references on the same rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from clientflow.batch import Batch
from clientflow.entities import ENTITY_ORDER, entity
from clientflow.errors import ValidationFailed
from clientflow.identifiers import ident, raw_schema
from clientflow.load import raw
from clientflow.mapping import ClientMapping

DUMMY_PRODUCTION = "practice"


@dataclass(frozen=True)
class EntityCounts:
    entity: str
    manifest_rows: int
    raw_rows: int
    distinct_keys: int
    staged_rows: int

    @property
    def duplicates_collapsed(self) -> int:
        return self.raw_rows - self.distinct_keys


def staged_rows(conn: psycopg.Connection[Any], entity_name: str, client: str, ingestion_id: str) -> int:
    """Rows of the batch in the dummy production table of ``entity_name``."""
    row = conn.execute(
        sql.SQL("select count(*) from {} where client_id = %s and ingestion_id = %s").format(
            ident(DUMMY_PRODUCTION, entity_name)),
        (client, ingestion_id),
    ).fetchone()
    assert row is not None  # an aggregate always returns a row
    return int(row[0])


def reconcile(conn: psycopg.Connection[Any], mapping: ClientMapping, batch: Batch) -> list[EntityCounts]:
    ingestion_id = batch.require_ingestion_id()
    results = []
    for name in ENTITY_ORDER:
        spec = mapping.entities[name]
        key = entity(name).key
        raw_rows, distinct_keys = raw.batch_rows(conn, raw_schema(mapping.client), spec.source_table,
                                                 spec.columns[key].source, ingestion_id)
        counts = EntityCounts(name, batch.rows_of(spec.source_table), raw_rows, distinct_keys,
                              staged_rows(conn, name, mapping.client, ingestion_id))
        where = batch.where(spec.source_table)
        if counts.raw_rows != counts.manifest_rows:
            raise ValidationFailed(
                f"{name}: raw table holds {counts.raw_rows} rows of this batch, the manifest "
                f"declared {counts.manifest_rows}", where)
        if counts.staged_rows != counts.distinct_keys:
            raise ValidationFailed(
                f"{name}: dummy production holds {counts.staged_rows} rows of this batch, expected "
                f"one per distinct {key} ({counts.distinct_keys})", where)
        results.append(counts)
    return results
