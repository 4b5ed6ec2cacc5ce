"""Row-count reconciliation: every row of the batch is accounted for.

For each entity: the raw table holds exactly the manifest's row count for this batch, and the
dummy production table holds one row per distinct key among them (duplicates within the batch
collapse to the last occurrence). dbt's tests have already checked keys, nulls, accepted values
and references on the same rows.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import psycopg
from psycopg import sql

from clientflow.entities import ENTITY_ORDER, PRIMARY_KEYS
from clientflow.errors import ValidationFailed, Where
from clientflow.identifiers import ident, raw_schema
from clientflow.mapping import ClientMapping


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


def reconcile(
    conn: psycopg.Connection[Any],
    mapping: ClientMapping,
    ingestion_id: str,
    manifest_rows: dict[str, int],
    where: Where,
) -> list[EntityCounts]:
    results = []
    for entity in ENTITY_ORDER:
        spec = mapping.entities[entity]
        key = PRIMARY_KEYS[entity][1]
        key_source = spec.columns[key].source
        raw_rows, distinct_keys = conn.execute(
            sql.SQL(
                "select count(*), count(distinct nullif(trim({}::text), '')) from {} "
                "where ingestion_id = %s"
            ).format(ident(key_source), ident(raw_schema(mapping.client), spec.source_table)),
            (ingestion_id,),
        ).fetchone()  # type: ignore[misc]
        staged_rows = conn.execute(
            sql.SQL("select count(*) from practice.{} where client_id = %s and ingestion_id = %s").format(
                ident(entity)
            ),
            (mapping.client, ingestion_id),
        ).fetchone()[0]  # type: ignore[index]
        counts = EntityCounts(entity, manifest_rows[spec.source_table], raw_rows, distinct_keys, staged_rows)
        entity_where = replace(where, table=spec.source_table)
        if counts.raw_rows != counts.manifest_rows:
            raise ValidationFailed(
                f"{entity}: raw table holds {counts.raw_rows} rows of this batch, the manifest "
                f"declared {counts.manifest_rows}",
                entity_where,
            )
        if counts.staged_rows != counts.distinct_keys:
            raise ValidationFailed(
                f"{entity}: dummy production holds {counts.staged_rows} rows of this batch, expected "
                f"one per distinct {key} ({counts.distinct_keys})",
                entity_where,
            )
        results.append(counts)
    return results
