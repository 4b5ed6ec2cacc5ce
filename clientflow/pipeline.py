"""The stages of one batch, in order. Each function is the body of one Airflow task.

Inputs and outputs are small JSON-able dicts of identifiers and counts (they travel as XComs),
never row values. Settings and the mapping are passed in; nothing here reads globals.
"""

from __future__ import annotations

import logging
import re
import uuid
from dataclasses import asdict
from datetime import UTC, date, datetime
from typing import Any

import psycopg
from psycopg import sql

from clientflow.arrival.batches import batch_for, complete_runs
from clientflow.arrival.manifest import Manifest, parse_manifest
from clientflow.config import PipelineSettings
from clientflow.errors import BadInputError, DuplicateBatch, TransientError, Where
from clientflow.identifiers import RUN_ID, ident, raw_schema
from clientflow.integrity import registry
from clientflow.load.raw import load_table
from clientflow.mapping import ClientMapping
from clientflow.operations import ledger, locks
from clientflow.promotion.promote import promote as promote_rows
from clientflow.validation.reconcile import reconcile

log = logging.getLogger(__name__)

MAX_MANIFEST_BYTES = 1 << 20


def _where(batch: dict[str, Any], table: str | None = None, file: str | None = None) -> Where:
    return Where(client=batch["client"], table=table, batch_date=batch["date"],
                 run_id=batch.get("run_id"), file=file)


def _lock_of(batch: dict[str, Any]) -> locks.ClientLock:
    return locks.ClientLock(**batch["lock"])


def plan(client: str, batch_date: Any, run_id: Any, logical_date: datetime | None) -> dict[str, str]:
    """The batch to wait for: the ``batch_date`` param, else the run's logical date, else today.

    Scheduled runs and ``airflow backfill create`` runs carry a logical date and no params, so a
    backfill reprocesses each date from the JSON files kept in the bucket.
    """
    where = Where(client=client)
    if batch_date not in (None, ""):
        if not isinstance(batch_date, str) or not re.fullmatch(r"\d{4}-\d{2}-\d{2}", batch_date):
            raise BadInputError("param batch_date must be a date written YYYY-MM-DD", where)
        try:
            day = date.fromisoformat(batch_date)
        except ValueError:
            raise BadInputError("param batch_date is not a calendar date", where) from None
    else:
        day = logical_date.date() if logical_date is not None else datetime.now(UTC).date()
    if run_id not in (None, "") and not (isinstance(run_id, str) and RUN_ID.match(run_id)):
        raise BadInputError(f"param run_id must match {RUN_ID.pattern}", where)
    return {"client": client, "date": day.isoformat(), "date_nodash": day.strftime("%Y%m%d"),
            "run_id": run_id or ""}


def find_batch(settings: PipelineSettings, mapping: ClientMapping, day: date, run_id: str | None) -> dict[str, Any]:
    """Pick the batch to process: the given run, or the newest complete run of the date."""
    where = Where(client=mapping.client, batch_date=day.isoformat(), run_id=run_id)
    runs = complete_runs(settings.s3.client(), settings.s3.bucket, mapping, day)
    if run_id is not None and run_id not in runs:
        raise TransientError(f"run {run_id} is not complete in the bucket yet", where,
                             kept="nothing was changed")
    if not runs:
        raise TransientError("no complete batch in the bucket yet (every mapped table needs "
                             "data.json and manifest.json)", where, kept="nothing was changed")
    chosen = run_id or runs[-1]
    files = [f.data_key for f in batch_for(mapping, day, chosen).files]
    return {"client": mapping.client, "date": day.isoformat(), "run_id": chosen, "files": files}


def _read_manifests(settings: PipelineSettings, mapping: ClientMapping, batch: dict[str, Any]) -> list[tuple[Manifest, str, str]]:
    s3 = settings.s3.client()
    day = date.fromisoformat(batch["date"])
    out = []
    for files in batch_for(mapping, day, batch["run_id"]).files:
        where = _where(batch, files.table, files.manifest_key)
        body = s3.get_object(Bucket=settings.s3.bucket, Key=files.manifest_key)["Body"]
        raw = body.read(MAX_MANIFEST_BYTES + 1)
        if len(raw) > MAX_MANIFEST_BYTES:
            raise BadInputError("manifest.json is larger than 1 MiB", where)
        manifest = parse_manifest(raw, where)
        if (manifest.client, manifest.table, manifest.date, manifest.run_id) != (
            mapping.client, files.table, day, batch["run_id"]
        ):
            raise BadInputError("manifest.json names a different client, table, date or run "
                                "than its location in the bucket", where)
        registry.check_mapped_columns(mapping, manifest, where)
        out.append((manifest, files.data_key, files.manifest_key))
    return out


def ingest(
    settings: PipelineSettings,
    mapping: ClientMapping,
    batch: dict[str, Any],
    *,
    dag_id: str | None = None,
    airflow_run_id: str | None = None,
) -> dict[str, Any]:
    """Verify and load a batch into the raw tables; raise DuplicateBatch if already promoted.

    The client's lock is taken first, so the duplicate check and every write happen under it;
    it stays held (its token travels in the returned batch) until ``promote`` or ``mark_failed``
    releases it. If this stage fails, it releases the lock itself: a retry must not wait for
    the lock's timeout.
    """
    manifests = _read_manifests(settings, mapping, batch)
    ingestion_id = ledger.ingestion_id_for(mapping.client, batch["date"], [m.job_id for m, _, _ in manifests])
    batch = {**batch, "ingestion_id": ingestion_id}
    with psycopg.connect(settings.staging.conninfo()) as conn:
        lock = locks.acquire(settings.redis, conn, mapping.client,
                             holder=airflow_run_id or f"manual-{uuid.uuid4().hex}")
    try:
        _skip_if_promoted(settings, batch, manifests, lock, airflow_run_id)
        with psycopg.connect(settings.staging.conninfo()) as conn:
            locks.check(conn, lock)
            ledger.record_batch(conn, ingestion_id, manifests, dag_id=dag_id, airflow_run_id=airflow_run_id,
                                fence_token=lock.token)
        rows = _load(settings, mapping, batch, manifests, lock, airflow_run_id)
    except BaseException:
        _release_quietly(settings, lock)
        raise
    return {**batch, "lock": asdict(lock), "manifest_rows": rows}


def _skip_if_promoted(
    settings: PipelineSettings,
    batch: dict[str, Any],
    manifests: list[tuple[Manifest, str, str]],
    lock: locks.ClientLock,
    airflow_run_id: str | None,
) -> None:
    """Raise DuplicateBatch if the ledger (the source of truth) has this content as promoted.

    Redis remembers promoted ids too, but only as a hint: a Redis entry the ledger does not
    confirm (a restored database, a shared Redis) never causes a skip.
    """
    ingestion_id = batch["ingestion_id"]
    hinted = locks.known_promoted(settings.redis, ingestion_id)
    with psycopg.connect(settings.staging.conninfo()) as conn:
        state = ledger.state_of(conn, ingestion_id)
        if state in ledger.DONE:
            locks.check(conn, lock)
            ledger.record_duplicate(conn, ingestion_id, [key for _, key, _ in manifests],
                                    run_id=batch["run_id"], airflow_run_id=airflow_run_id)
            conn.commit()  # leaving the block by an exception would roll the event back
            raise DuplicateBatch(ingestion_id)
    if hinted:
        log.warning("[%s] Redis lists batch %s as promoted but the ledger does not; processing it",
                    _where(batch).describe(), ingestion_id)


def _load(
    settings: PipelineSettings,
    mapping: ClientMapping,
    batch: dict[str, Any],
    manifests: list[tuple[Manifest, str, str]],
    lock: locks.ClientLock,
    airflow_run_id: str | None,
) -> dict[str, int]:
    """Stream every table into raw in one transaction, fenced by the client's token."""
    ingestion_id = batch["ingestion_id"]
    rows: dict[str, int] = {}
    with psycopg.connect(settings.staging.conninfo()) as conn:  # visible while the load runs
        locks.check(conn, lock)
        ledger.set_state(conn, ingestion_id, "PROCESSING", airflow_run_id=airflow_run_id)
    with psycopg.connect(settings.staging.conninfo()) as conn:
        locks.check(conn, lock)
        s3 = settings.s3.client()
        schema = raw_schema(mapping.client)
        for manifest, data_key, _ in manifests:
            file_where = _where(batch, manifest.table, data_key)
            registry.register(conn, mapping, manifest, ingestion_id, file_where)
            if _table_exists(conn, schema, manifest.table):
                # A retried batch replaces its own earlier attempt, never another batch.
                conn.execute(sql.SQL("delete from {} where ingestion_id = %s").format(ident(schema, manifest.table)),
                             (ingestion_id,))
            body = s3.get_object(Bucket=settings.s3.bucket, Key=data_key)["Body"]
            result = load_table(conn, schema, manifest, body, ingestion_id=ingestion_id,
                                source_file=f"s3://{settings.s3.bucket}/{data_key}")
            rows[manifest.table] = result.rows
            log.info("[%s] loaded %d rows (%d bytes, sha256 verified)", file_where.describe(), result.rows, result.byte_size)
    return rows


def _table_exists(conn: psycopg.Connection[Any], schema: str, table: str) -> bool:
    row = conn.execute("select to_regclass(%s)", (ident(schema, table).as_string(conn),)).fetchone()
    return row is not None and row[0] is not None


def _release_quietly(settings: PipelineSettings, lock: locks.ClientLock) -> None:
    """Free the lock after a failure; if Redis is unreachable too, its timeout frees it."""
    try:
        locks.release(settings.redis, lock)
    except Exception as err:  # the original error matters more
        log.warning("[client=%s] could not release the lock (%s); it expires on its own",
                    lock.client, type(err).__name__)


def validate(settings: PipelineSettings, mapping: ClientMapping, batch: dict[str, Any]) -> dict[str, Any]:
    with psycopg.connect(settings.staging.conninfo()) as conn:
        counts = reconcile(conn, mapping, batch["ingestion_id"], batch["manifest_rows"], _where(batch))
    for c in counts:
        log.info("[%s] %s: %d raw rows, %d distinct keys, %d in dummy production (%d duplicates collapsed)",
                 _where(batch).describe(), c.entity, c.raw_rows, c.distinct_keys, c.staged_rows, c.duplicates_collapsed)
    return {c.entity: c.staged_rows for c in counts}


def promote(settings: PipelineSettings, mapping: ClientMapping, batch: dict[str, Any], *, airflow_run_id: str | None = None) -> dict[str, dict[str, int]]:
    """Upsert into production in one transaction, then mark SUCCESS and prune old raw batches.

    The staging transaction holds the client's fence row (``locks.check``) until production has
    committed, so a run whose lock was taken over cannot commit, and a newer holder cannot start
    writing before this promotion has finished.
    """
    lock = _lock_of(batch)
    ingestion_id = batch["ingestion_id"]
    with psycopg.connect(settings.staging.conninfo()) as staging:
        locks.check(staging, lock)
        with psycopg.connect(settings.production.conninfo()) as production:
            counts = promote_rows(staging, production, mapping.client, ingestion_id)
            production.commit()
        summary = {c.entity: {"offered": c.offered, "inserted": c.inserted, "updated": c.updated,
                              "kept_newer": c.kept_newer, "unchanged": c.unchanged} for c in counts}
        ledger.set_state(staging, ingestion_id, "SUCCESS", airflow_run_id=airflow_run_id, detail=str(summary))
        prune_raw(staging, mapping)
    locks.remember_promoted(settings.redis, ingestion_id)
    locks.release(settings.redis, lock)
    log.info("[%s] promoted: %s", _where(batch).describe(), summary)
    return summary


def prune_raw(conn: psycopg.Connection[Any], mapping: ClientMapping) -> None:
    """Keep the newest ``raw_retention_batches`` promoted batches and everything newer."""
    keep = conn.execute(
        "select ingestion_id, batch_date, created_at from pipeline.batches where client_name = %s "
        "and state = 'SUCCESS' order by batch_date desc, created_at desc limit %s",
        (mapping.client, mapping.raw_retention_batches),
    ).fetchall()
    if len(keep) < mapping.raw_retention_batches:
        return
    oldest_kept = keep[-1]
    old = [
        row[0]
        for row in conn.execute(
            "select ingestion_id from pipeline.batches where client_name = %s "
            "and (batch_date, created_at) < (%s, %s)",
            (mapping.client, oldest_kept[1], oldest_kept[2]),
        )
    ]
    if not old:
        return
    schema = raw_schema(mapping.client)
    for table in mapping.source_tables:
        if _table_exists(conn, schema, table):
            conn.execute(sql.SQL("delete from {} where ingestion_id = any(%s)").format(ident(schema, table)), (old,))


def mark_failed(settings: PipelineSettings, batch: dict[str, Any], error: str, *, airflow_run_id: str | None) -> None:
    """Record FAILED and free the client's lock. Raw batches and production are left as they are.

    A run whose lock was taken over leaves the state alone when a newer run has taken the same
    batch up again (the ledger row then carries the newer run's fencing token).
    """
    lock = _lock_of(batch) if batch.get("lock") else None
    with psycopg.connect(settings.staging.conninfo()) as conn:
        for ingestion_id in _unfinished(conn, batch):
            ledger.set_state(conn, ingestion_id, "FAILED", airflow_run_id=airflow_run_id, detail=error,
                             fence_token=lock.token if lock else None)
    if lock is not None:
        locks.release(settings.redis, lock)


def _unfinished(conn: psycopg.Connection[Any], batch: dict[str, Any]) -> list[str]:
    """The batch's ingestion id if it is not done; before ``ingest`` returned one, the client's
    unfinished batches of the same date and extractor run."""
    if batch.get("ingestion_id"):
        state = ledger.state_of(conn, batch["ingestion_id"])
        return [batch["ingestion_id"]] if state not in (None, *ledger.DONE) else []
    if not batch.get("run_id"):
        return []
    return [
        row[0] for row in conn.execute(
            "select ingestion_id from pipeline.batches where client_name = %s and batch_date = %s "
            "and run_id = %s and state in ('PENDING', 'PROCESSING')",
            (batch.get("client"), batch.get("date"), batch.get("run_id")),
        )
    ]
