"""Anomalies: a batch compared with the client's previous promoted batch.

Each validated batch leaves a profile per entity in ``pipeline.batch_profiles``: rows received,
kept and refused, NULLs per column among the kept rows, unmapped values per coded column. The
gates compare this batch's profile with the newest promoted batch's of the same client (the
thresholds are the mapping's ``anomalies``):

- ``row_drop``: a full snapshot holding far fewer rows than the previous promoted full snapshot
  (a batch is a full snapshot of an entity when the mapping declares every table that feeds it
  ``full_snapshot`` and the batch's file of each is one: an incremental file holds only changes);
- ``null_rate``: a column whose share of NULLs jumps (the phantom null in a column everyone
  assumed populated);
- ``unmapped_values``: a coded column (one with ``values``) that held no unmapped value and now
  does (a new status code nobody mapped);
- ``reject_share``: the share of refused rows rising.

Each finding is a message with its figures and never a value. Entities with fewer rows than
``min_rows`` in either batch are not judged.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from clientflow.entities import entity as our_entity
from clientflow.identifiers import ident
from clientflow.mapping import ClientMapping
from clientflow.validation.reconcile import staging_schema


@dataclass(frozen=True)
class Profile:
    entity: str
    full_snapshot: bool
    rows_received: int
    rows_kept: int
    rows_refused: int
    nulls: dict[str, int]
    unmapped: dict[str, int]

    @property
    def judged(self) -> int:
        return self.rows_kept + self.rows_refused

    def null_share(self, column: str) -> float:
        return self.nulls.get(column, 0) / self.rows_kept if self.rows_kept else 0.0

    @property
    def reject_share(self) -> float:
        return self.rows_refused / self.judged if self.judged else 0.0


@dataclass(frozen=True)
class Finding:
    gate: str
    message: str


def full_snapshots(conn: psycopg.Connection[Any], mapping: ClientMapping, ingestion_id: str) -> dict[str, bool]:
    """entity -> whether this batch is a full snapshot of it (the mapping and the files agree)."""
    incremental = {r[0] for r in conn.execute(
        "select table_name from pipeline.jobs where ingestion_id = %s and extraction_mode <> 'full'", (ingestion_id,))}
    return {name: mapping.full_snapshot(name) and not incremental.intersection(tables)
            for name, tables in mapping.entities.items()}


def profile(conn: psycopg.Connection[Any], mapping: ClientMapping, ingestion_id: str) -> list[Profile]:
    """Profile the batch from its staging tables and store it (replacing an earlier attempt's)."""
    out = []
    full = full_snapshots(conn, mapping, ingestion_id)
    for name in mapping.entities:
        columns = our_entity(name).column_names
        stg = ident(staging_schema(mapping.client), f"stg_{name}")
        counts = sql.SQL(", ").join(
            sql.SQL("count(*) filter (where occurrence = 1 and not has_error and {} is null)").format(sql.Identifier(c))
            for c in columns)
        unmapped = sql.SQL(", ").join(
            sql.SQL("count(*) filter (where occurrence = 1 and {} = 'unmapped_value')").format(
                sql.Identifier(f"{c}__error")) for c in columns)
        row = conn.execute(sql.SQL(
            "select count(*), count(*) filter (where occurrence = 1 and not has_error), "
            "count(*) filter (where occurrence = 1 and has_error), {}, {} from {} where ingestion_id = %s").format(
            counts, unmapped, stg), (ingestion_id,)).fetchone()
        assert row is not None
        n = len(columns)
        found = Profile(name, full[name], row[0], row[1], row[2],
                        dict(zip(columns, row[3:3 + n], strict=True)), dict(zip(columns, row[3 + n:], strict=True)))
        conn.execute(
            "insert into pipeline.batch_profiles (ingestion_id, entity, full_snapshot, rows_received, rows_kept, "
            "rows_refused, nulls, unmapped) values (%s, %s, %s, %s, %s, %s, %s, %s) on conflict (ingestion_id, entity) "
            "do update set full_snapshot = excluded.full_snapshot, rows_received = excluded.rows_received, "
            "rows_kept = excluded.rows_kept, rows_refused = excluded.rows_refused, nulls = excluded.nulls, "
            "unmapped = excluded.unmapped, profiled_at = clock_timestamp()",
            (ingestion_id, name, found.full_snapshot, found.rows_received, found.rows_kept, found.rows_refused,
             json.dumps(found.nulls), json.dumps(found.unmapped)))
        out.append(found)
    return out


def previous(conn: psycopg.Connection[Any], client: str, ingestion_id: str) -> dict[str, Profile]:
    """The profiles of the client's newest promoted batch other than this one (by batch date)."""
    rows = conn.execute(
        "select p.entity, p.full_snapshot, p.rows_received, p.rows_kept, p.rows_refused, p.nulls, p.unmapped "
        "from pipeline.batch_profiles p where p.ingestion_id = ("
        " select b.ingestion_id from pipeline.batches b where b.client_name = %s and b.state = 'SUCCESS' "
        " and b.ingestion_id <> %s and exists (select 1 from pipeline.batch_profiles q where q.ingestion_id = b.ingestion_id)"
        " order by b.batch_date desc, b.updated_at desc limit 1)", (client, ingestion_id)).fetchall()
    return {r[0]: Profile(r[0], r[1], r[2], r[3], r[4], r[5], r[6]) for r in rows}


def previous_full(conn: psycopg.Connection[Any], client: str, ingestion_id: str) -> dict[str, Profile]:
    """Per entity, the profile of the client's newest promoted full snapshot other than this batch:
    what a full snapshot's row count is compared with, across the incremental batches between."""
    rows = conn.execute(
        "select distinct on (p.entity) p.entity, p.full_snapshot, p.rows_received, p.rows_kept, p.rows_refused, "
        "p.nulls, p.unmapped from pipeline.batch_profiles p join pipeline.batches b using (ingestion_id) "
        "where b.client_name = %s and b.state = 'SUCCESS' and b.ingestion_id <> %s and p.full_snapshot "
        "order by p.entity, b.batch_date desc, b.updated_at desc", (client, ingestion_id)).fetchall()
    return {r[0]: Profile(r[0], r[1], r[2], r[3], r[4], r[5], r[6]) for r in rows}


def compare(mapping: ClientMapping, now: list[Profile], before: dict[str, Profile],
            before_full: dict[str, Profile] | None = None) -> list[Finding]:
    """The findings of this batch against the previous promoted batch (``before``) and, for the
    row count of a full snapshot, the previous promoted full snapshot (``before_full``; by default
    ``before``'s full snapshots)."""
    limits, found = mapping.anomalies, []
    if before_full is None:
        before_full = {e: p for e, p in before.items() if p.full_snapshot}
    for p in now:
        full = before_full.get(p.entity)
        if (p.full_snapshot and full is not None and min(p.judged, full.judged) >= limits.min_rows
                and p.rows_received < full.rows_received * (1 - limits.max_row_drop)):
            found.append(Finding("row_drop", f"{p.entity}: the full snapshot holds {p.rows_received} rows, the "
                                 f"previous one {full.rows_received} (a drop of more than {limits.max_row_drop:.0%})"))
        old = before.get(p.entity)
        if old is None or min(p.judged, old.judged) < limits.min_rows:
            continue
        for column in p.nulls:
            rise = p.null_share(column) - old.null_share(column)
            if rise > limits.max_null_rate_increase:
                found.append(Finding("null_rate", f"{p.entity}.{column}: NULL in {p.null_share(column):.1%} of the "
                                     f"kept rows, previously {old.null_share(column):.1%} (allowed rise "
                                     f"{limits.max_null_rate_increase:.0%} points)"))
        for column, count in p.unmapped.items():
            if count and not old.unmapped.get(column) and limits.unmapped_values == "fail":
                found.append(Finding("unmapped_values", f"{p.entity}.{column}: {count} value(s) the mapping's "
                                     "`values` does not list, none in the previous batch"))
        if p.reject_share - old.reject_share > limits.max_reject_share_increase:
            found.append(Finding("reject_share", f"{p.entity}: {p.reject_share:.1%} of the rows refused, "
                                 f"previously {old.reject_share:.1%} (allowed rise {limits.max_reject_share_increase:.0%} points)"))
    return found
