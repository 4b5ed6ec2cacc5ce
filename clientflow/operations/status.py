"""What the status page and the metrics show, read from the ledger (schema ``pipeline``) only.

It runs as the read-only role ``clientflow_status``, which may read the ledger and nothing else:
not the raw tables, not dummy production, not production. Every figure is a count, a state, a
time or an identifier (client, table, date, run, job, file); never a value of a row.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row
from pydantic import BaseModel

STATES = ("PENDING", "PROCESSING", "SUCCESS", "FAILED", "REOFFERED")


class StageCounts(BaseModel):
    """Rows of one batch at each stage: what the manifests declared, what raw received, what was
    refused, what dummy production kept, and what the promotion offered production."""

    manifest: int | None
    raw: int | None
    rejects: int | None
    dummy_production: int | None
    production: int | None


class TableSchema(BaseModel):
    table: str
    version: int
    drift_events: int
    last_change: str | None
    registered_at: datetime


class BatchRow(BaseModel):
    ingestion_id: str
    batch_date: date
    run_id: str
    state: str
    updated_at: datetime
    airflow_dag_id: str | None
    airflow_run_id: str | None
    error: str | None


class ClientStatus(BaseModel):
    client: str
    last_promoted: BatchRow | None
    last_promoted_age_seconds: float | None
    batches: dict[str, int]
    duplicates: int
    last_batch: BatchRow | None
    last_batch_rows: StageCounts | None
    schemas: list[TableSchema]
    open_incidents: list[str]
    recent: list[BatchRow]


class Event(BaseModel):
    at: datetime
    state: str
    airflow_run_id: str | None
    detail: str | None
    source_files: list[str]


class JobFile(BaseModel):
    job_id: str
    table: str
    source_file: str
    manifest_file: str
    row_count: int
    extraction_mode: str


class StageRun(BaseModel):
    stage: str
    outcome: str
    airflow_run_id: str | None
    started_at: datetime
    finished_at: datetime
    seconds: float


class BatchTimeline(BaseModel):
    batch: BatchRow
    client: str
    files: list[JobFile]
    events: list[Event]
    stages: list[StageRun]
    rows: StageCounts


_BATCH_COLUMNS = "ingestion_id, batch_date, run_id, state, updated_at, airflow_dag_id, airflow_run_id, error"


def _row_counts(conn: psycopg.Connection[Any], ingestion_id: str) -> StageCounts:
    row = conn.execute(
        """
        select (select sum(row_count) from pipeline.jobs where ingestion_id = %(id)s) as manifest,
               (select sum(rows_received) from pipeline.batch_profiles where ingestion_id = %(id)s) as raw,
               (select count(*) from (select distinct table_name, source_row from pipeline.rejects
                                      where ingestion_id = %(id)s) r) as rejects,
               (select sum(rows_kept) from pipeline.batch_profiles where ingestion_id = %(id)s) as dummy_production,
               (select sum((v ->> 'offered')::bigint) from pipeline.batches b, jsonb_each(b.promoted) as e(k, v)
                where b.ingestion_id = %(id)s) as production
        """,
        {"id": ingestion_id},
    ).fetchone()
    assert row is not None
    return StageCounts(manifest=row[0], raw=row[1], rejects=row[2] if row[1] is not None else None,
                       dummy_production=row[3], production=row[4])


def _batch(row: dict[str, Any] | None) -> BatchRow | None:
    return BatchRow(**row) if row else None


def client_status(conn: psycopg.Connection[Any], client: str, now: datetime | None = None,
                  recent: int = 20) -> ClientStatus:
    now = now or datetime.now(UTC)
    cur = conn.cursor(row_factory=dict_row)
    last_promoted = cur.execute(
        f"select {_BATCH_COLUMNS} from pipeline.batches where client_name = %s and state = 'SUCCESS' "
        "order by updated_at desc limit 1", (client,)).fetchone()
    last = cur.execute(
        f"select {_BATCH_COLUMNS} from pipeline.batches where client_name = %s order by updated_at desc limit 1",
        (client,)).fetchone()
    counts = {s: 0 for s in STATES}
    for r in cur.execute("select state, count(*) as n from pipeline.batches where client_name = %s group by state",
                         (client,)):
        counts[r["state"]] = r["n"]
    duplicates = cur.execute(
        "select count(*) as n from pipeline.batch_events e join pipeline.batches b using (ingestion_id) "
        "where b.client_name = %s and e.state = 'DUPLICATE'", (client,)).fetchone()
    schemas = [TableSchema(**r) for r in cur.execute(
        """
        select distinct on (table_name) table_name as "table", version,
               count(*) filter (where change is not null) over (partition by table_name) as drift_events,
               first_value(change) over (partition by table_name order by change is null, version desc) as last_change,
               registered_at
        from pipeline.schema_registry where client_name = %s order by table_name, version desc
        """, (client,))]
    incidents = [r["kind"] for r in cur.execute(
        "select kind from pipeline.incidents where client_name = %s and closed_at is null order by kind", (client,))]
    rows = [BatchRow(**r) for r in cur.execute(
        f"select {_BATCH_COLUMNS} from pipeline.batches where client_name = %s order by updated_at desc limit %s",
        (client, recent))]
    promoted = _batch(last_promoted)
    return ClientStatus(
        client=client, last_promoted=promoted,
        last_promoted_age_seconds=(now - promoted.updated_at).total_seconds() if promoted else None,
        batches=counts, duplicates=duplicates["n"] if duplicates else 0, last_batch=_batch(last),
        last_batch_rows=_row_counts(conn, last["ingestion_id"]) if last else None,
        schemas=schemas, open_incidents=incidents, recent=rows,
    )


def batch_timeline(conn: psycopg.Connection[Any], ingestion_id: str) -> BatchTimeline | None:
    cur = conn.cursor(row_factory=dict_row)
    found = cur.execute(f"select client_name, {_BATCH_COLUMNS} from pipeline.batches where ingestion_id = %s",
                        (ingestion_id,)).fetchone()
    if found is None:
        return None
    client = found.pop("client_name")
    files = [JobFile(**r) for r in cur.execute(
        "select job_id, table_name as \"table\", source_file, manifest_file, row_count, extraction_mode "
        "from pipeline.jobs where ingestion_id = %s order by table_name", (ingestion_id,))]
    events = [Event(**{**r, "source_files": r["source_files"] or []}) for r in cur.execute(
        "select at, state, airflow_run_id, detail, source_files from pipeline.batch_events "
        "where ingestion_id = %s order by event_id", (ingestion_id,))]
    stages = [StageRun(**r) for r in cur.execute(
        "select stage, outcome, airflow_run_id, started_at, finished_at, "
        "extract(epoch from finished_at - started_at)::float8 as seconds from pipeline.stage_runs "
        "where ingestion_id = %s order by started_at, stage_run_id", (ingestion_id,))]
    return BatchTimeline(batch=BatchRow(**found), client=client, files=files, events=events, stages=stages,
                         rows=_row_counts(conn, ingestion_id))


def known_clients(conn: psycopg.Connection[Any]) -> list[str]:
    return [r[0] for r in conn.execute("select distinct client_name from pipeline.batches order by 1")]
