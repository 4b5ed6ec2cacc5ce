"""The stages of one batch, in order. Each function is the body of one Airflow task.

They take and return :class:`~clientflow.batch.Batch` records (identifiers and counts, never row
values); settings and the mapping are passed in, nothing here reads globals. Every database, S3
and Redis call runs inside :func:`clientflow.db.connect` or :func:`clientflow.faults.named`, so a
failure is named (client, table, date, run, file) where it happens.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Collection, Sequence
from contextlib import closing
from dataclasses import replace
from datetime import UTC, date, datetime
from typing import Any

from client_extractor.contract import RUN_ID, RUN_ID_RULE
from clientflow import promotion, validation
from clientflow.arrival import ArrivedTable, batch_files, complete_batches, complete_runs, read_manifests
from clientflow.arrival.events import Announced
from clientflow.batch import Batch, ClientLock, LoadedFile
from clientflow.config import PipelineSettings
from clientflow.db import connect
from clientflow.errors import (
    BadInputError,
    DuplicateBatch,
    NothingToProcess,
    PipelineError,
    TransientError,
    Where,
)
from clientflow.faults import named
from clientflow.identifiers import raw_schema
from clientflow.integrity import registry
from clientflow.load import raw
from clientflow.mapping import ClientMapping
from clientflow.operations import ledger, locks, logcontext

log = logging.getLogger(__name__)


def plan(client: str, batch_date: Any, run_id: Any, logical_date: datetime | None,
         announced: Sequence[Announced] | None = None,
         seen: Collection[tuple[date, str]] = frozenset()) -> Batch:
    """The batch to wait for: the ``batch_date`` param, else the oldest batch the bucket's
    messages announced (a run started by bucket events) that the ledger has not ``seen``, else the
    run's logical date, else today.

    Scheduled runs and ``airflow backfill create`` runs carry a logical date and no params, so a
    backfill reprocesses each date from the JSON files kept in the bucket. ``announced`` is None
    for a run no bucket event started; an empty list means every message of the run was dropped.
    ``seen``: (date, run id) of the batches the ledger holds. Events queue while a run of the client
    is busy, so one run's messages can announce a batch an earlier run has already taken up beside
    a new one: the run takes the new one at once, rather than ending on the old one as a duplicate
    and leaving the new one to the sweep's next run.
    """
    where = Where(client=client)
    if batch_date in (None, "") and announced is not None:
        if not announced:
            raise NothingToProcess("every bucket message of this run was dropped (the lines above say why)")
        unseen = [a for a in announced if (a.day, a.run_id) not in seen]
        if not unseen:
            raise NothingToProcess("the ledger already holds every batch this run's messages announce: "
                                   + ", ".join(sorted({f"{a.day} run {a.run_id}" for a in announced})))
        first, *others = unseen
        if others:
            log.info("[%s] the messages announce %d more batch(es): %s; the sweep starts a run for each in turn",
                     where.describe(), len(others), ", ".join(f"{a.day} run {a.run_id}" for a in others))
        return Batch(client=client, day=first.day, run_id=first.run_id)
    if batch_date not in (None, ""):
        if not isinstance(batch_date, str) or not re.fullmatch(r"\d{4}-\d{2}-\d{2}", batch_date):
            raise BadInputError("param batch_date must be a date written YYYY-MM-DD", where)
        try:
            day = date.fromisoformat(batch_date)
        except ValueError:
            raise BadInputError("param batch_date is not a calendar date", where) from None
    else:
        day = logical_date.date() if logical_date is not None else datetime.now(UTC).date()
    if run_id not in (None, "") and not (isinstance(run_id, str) and RUN_ID.fullmatch(run_id)):
        raise BadInputError(f"param run_id must be {RUN_ID_RULE}", where)
    return Batch(client=client, day=day, run_id=run_id or None)


def seen_of(settings: PipelineSettings, client: str, announced: Sequence[Announced] | None) -> set[tuple[date, str]]:
    """(date, run id) of the ``announced`` batches the ledger already holds (any state), for :func:`plan`."""
    if not announced:
        return set()
    with connect(settings.staging, Where(client=client), "reading the ledger for the announced batches") as conn:
        runs = [(a.day, a.run_id) for a in announced]
        return set(runs) - set(ledger.unseen(conn, client, runs))


SWEEP_RUN_PREFIX = "sweep__"
"""Run ids of the runs the sweep starts (``sweep__<date>__<run>``, deterministic: one per batch)."""
AUTOMATIC_RUN_PREFIXES = ("scheduled__", "asset_triggered__", SWEEP_RUN_PREFIX)
"""Runs nobody asked for: the timetable's, a bucket event's, the sweep's. They never take up a FAILED
batch; a person's run does (a manual trigger, `clientflow reprocess`, a backfill)."""


def next_batch(settings: PipelineSettings, mapping: ClientMapping, planned: Batch | None,
               today: date) -> dict[str, str] | None:
    """The sweep: the oldest complete batch of the last ``mapping.sweep_days`` days in the bucket
    that the ledger has never seen, other than the one this run takes; None if there is none.

    Every run asks, so a batch whose bucket event was lost, or that arrived while another run
    held the client, still gets its own run (the caller starts it; runs of a client queue).
    """
    since = mapping.sweep_since(today)
    where = Where(client=mapping.client)
    with named(where, "listing the bucket for the sweep"):
        complete = complete_batches(settings.s3.client(), settings.s3.bucket, mapping, since)
    with connect(settings.staging, where, "reading the ledger for the sweep") as conn:
        unseen = ledger.unseen(conn, mapping.client, complete)
    for day, run_id in unseen:
        if planned is not None and planned.day == day and planned.run_id in (None, run_id):
            continue
        log.info("[%s] the sweep found batch %s run %s in the bucket, unseen by the ledger", where.describe(), day,
                 run_id)
        return {"batch_date": day.isoformat(), "run_id": run_id}
    log.info("[%s] the sweep found no other unprocessed batch since %s", where.describe(), since)
    return None


def find_batch(settings: PipelineSettings, mapping: ClientMapping, planned: Batch) -> Batch:
    """Pick the batch to process: the planned run, or the newest complete run of the date."""
    where = planned.where()
    with named(where, "listing the bucket"):
        runs = complete_runs(settings.s3.client(), settings.s3.bucket, mapping, planned.day)
    if planned.run_id is not None and planned.run_id not in runs:
        raise TransientError(f"run {planned.run_id} is not complete in the bucket yet", where,
                             kept="nothing was changed")
    if not runs:
        raise TransientError("no complete batch in the bucket yet (every mapped table needs "
                             "data.json and manifest.json)", where, kept="nothing was changed")
    run_id = planned.run_id or runs[-1]
    return replace(planned, run_id=run_id, files=batch_files(mapping, planned.day, run_id))


def ingest(
    settings: PipelineSettings,
    mapping: ClientMapping,
    found: Batch,
    *,
    dag_id: str | None = None,
    airflow_run_id: str | None = None,
) -> Batch:
    """Verify and load a batch into the raw tables; raise DuplicateBatch if already promoted.

    The client's lock is taken first, so the duplicate check and every write happen under it;
    it stays held (its token travels in the returned batch) until ``promote`` or ``mark_failed``
    releases it. If this stage fails, it releases the lock itself: a retry must not wait for
    the lock's timeout.
    """
    with named(found.where(), "reading the manifests"):
        arrived = read_manifests(settings.s3.client(), settings.s3.bucket, found)
    ingestion_id = ledger.ingestion_id_for(found.client, found.day, [t.manifest.job_id for t in arrived])
    batch = replace(found, ingestion_id=ingestion_id)
    logcontext.bind_job(batch)
    lock: ClientLock | None = None
    try:
        with connect(settings.staging, batch.where(), "taking the client lock") as conn:
            lock = locks.acquire(settings.redis, conn, mapping.client,
                                 holder=airflow_run_id or f"manual-{uuid.uuid4().hex}")
    except BaseException:
        if lock is not None:  # taken in Redis, but its fence row never committed
            _release_quietly(settings, lock)
        raise
    batch = replace(batch, lock=lock)
    try:
        settle_earlier(settings, batch.client, lock, airflow_run_id=airflow_run_id)
        _skip_if_taken(settings, batch, arrived, airflow_run_id)
        with connect(settings.staging, batch.where(), "recording the batch") as conn:
            locks.check(conn, lock)
            ledger.record_batch(conn, ingestion_id, arrived, dag_id=dag_id, airflow_run_id=airflow_run_id,
                                fence_token=lock.token)
        # A mapped column renamed or removed stops the batch here, before anything is loaded; the
        # batch is in the ledger, so the failure callback records it FAILED (one email, and the
        # sweep does not take it up again) and `clientflow reprocess` runs it after the fix.
        for table in arrived:
            registry.check_mapped_columns(mapping, table.manifest, batch.where(table.files.table,
                                                                               table.files.manifest_key))
        loaded = _load(settings, mapping, batch, arrived, airflow_run_id)
    except BaseException:
        _release_quietly(settings, lock)
        raise
    return replace(batch, loaded=loaded)


def _skip_if_taken(settings: PipelineSettings, batch: Batch, arrived: list[ArrivedTable],
                   airflow_run_id: str | None) -> None:
    """Raise DuplicateBatch if the ledger (the source of truth) has this content as promoted, and
    NothingToProcess if it FAILED and this is a run nobody asked for (:data:`AUTOMATIC_RUN_PREFIXES`).

    Redis remembers promoted ids too, but only as a hint: a Redis entry the ledger does not
    confirm (a restored database, a shared Redis) never causes a skip.

    A run nobody asked for leaves a FAILED batch alone. Such runs queue behind the one that took
    the batch up: a second bucket event of the same upload (one message per table's manifest), or
    the sweep, which looked before that run recorded the batch. Taking it up again would fail it
    twice (two emails), or promote it behind the back of the person fixing it; it waits for them.
    """
    ingestion_id = batch.require_ingestion_id()
    hinted = locks.known_promoted(settings.redis, ingestion_id)
    automatic = airflow_run_id is not None and airflow_run_id.startswith(AUTOMATIC_RUN_PREFIXES)
    with connect(settings.staging, batch.where(), "checking the ledger for duplicates and failures") as conn:
        state = ledger.state_of(conn, ingestion_id)
        if state in ledger.DONE:
            locks.check(conn, batch.require_lock())
            ledger.record_duplicate(conn, ingestion_id, [t.files.data_key for t in arrived],
                                    run_id=batch.run_id or "", airflow_run_id=airflow_run_id)
            conn.commit()  # leaving the block by an exception would roll the event back
            raise DuplicateBatch(ingestion_id)
        if state == "FAILED" and automatic:
            raise NothingToProcess(
                f"[{batch.where().describe()}] another run took this batch up and it FAILED there: a failed batch "
                "waits for a person (clientflow reprocess, docs/runbook.md#reprocess-a-failed-batch); "
                "no scheduled, event or sweep run takes it up again")
    if hinted:
        log.warning("[%s] Redis lists batch %s as promoted but the ledger does not; processing it",
                    batch.where().describe(), ingestion_id)


def _load(settings: PipelineSettings, mapping: ClientMapping, batch: Batch, arrived: list[ArrivedTable],
          airflow_run_id: str | None) -> tuple[LoadedFile, ...]:
    """Stream every table into raw in one transaction, fenced by the client's token."""
    ingestion_id, lock = batch.require_ingestion_id(), batch.require_lock()
    with connect(settings.staging, batch.where(), "marking the batch PROCESSING") as conn:
        locks.check(conn, lock)  # committed on its own: visible while the load runs
        ledger.set_state(conn, ingestion_id, "PROCESSING", airflow_run_id=airflow_run_id)
    loaded = []
    schema = raw_schema(mapping.client)
    with connect(settings.staging, batch.where(), "loading raw") as conn:
        locks.check(conn, lock)
        s3 = settings.s3.client()
        for table in arrived:
            manifest, data_key = table.manifest, table.files.data_key
            where = batch.where(manifest.table, data_key)
            with named(where, "loading raw"):
                registry.register(conn, mapping, manifest, ingestion_id, where)
                raw.discard_batch(conn, schema, manifest.table, ingestion_id)
                with closing(s3.get_object(Bucket=settings.s3.bucket, Key=data_key)["Body"]) as body:
                    result = raw.load_table(conn, schema, manifest, body, ingestion_id=ingestion_id,
                                            source_file=f"s3://{settings.s3.bucket}/{data_key}")
                raw.analyze(conn, schema, manifest.table)  # the staging models' plans need the statistics
            loaded.append(LoadedFile(manifest.table, manifest.job_id, data_key, result.rows,
                                     result.byte_size, result.sha256))
            log.info("[%s] loaded %d rows (%d bytes, sha256 verified)", where.describe(), result.rows,
                     result.byte_size)
    return tuple(loaded)


def _release_quietly(settings: PipelineSettings, lock: ClientLock) -> None:
    """Free the lock after a failure; if Redis is unreachable too, its timeout frees it."""
    try:
        locks.release(settings.redis, lock)
    except Exception as err:  # the original error matters more
        log.warning("[client=%s] could not release the lock (%s); it expires on its own",
                    lock.client, type(err).__name__)


def validate(settings: PipelineSettings, mapping: ClientMapping, batch: Batch) -> dict[str, Any]:
    """The validation gates after dbt (clientflow.validation.gates): counts, rejects, anomalies."""
    with connect(settings.staging, batch.where(), "validating") as conn:
        locks.check(conn, batch.require_lock())
        report = validation.run(conn, mapping, batch)
    for c in report.counts:
        log.info("[%s] %s: %d raw rows, %d kept (%d held newer from a later batch), %d refused, "
                 "%d duplicates collapsed; writes %s", batch.where().describe(), c.entity, c.raw_rows, c.kept_rows,
                 c.kept_newer, c.refused_rows, c.duplicates_collapsed, c.changes or "nothing")
    return {
        "kept": {c.entity: c.kept_rows for c in report.counts},
        "refused": {t.table: t.refused_rows for t in report.rejects},
        "kept_newer": {c.entity: c.kept_newer for c in report.counts},
        "changes": {c.entity: c.changes for c in report.counts},
        "accepted_gates": sorted(report.accepted),
    }


def promote(settings: PipelineSettings, mapping: ClientMapping, batch: Batch, *,
            airflow_run_id: str | None = None) -> dict[str, dict[str, int]]:
    """Copy the batch's changes into production in one transaction, then mark SUCCESS and prune
    old raw batches.

    The staging transaction holds the client's fence row (``locks.check``) until production has
    committed, so a run whose lock was taken over cannot commit, and a newer holder cannot start
    writing before this promotion has finished.
    """
    lock, ingestion_id = batch.require_lock(), batch.require_ingestion_id()
    committed = False
    try:
        with connect(settings.staging, batch.where(), "promoting (staging)") as staging:
            locks.check(staging, lock)
            with connect(settings.production, batch.where(), "promoting (production)") as production:
                counts, _promoted_at = promotion.promote(staging, production, mapping.client, ingestion_id,
                                                        batch.day, mapping.entities, fence_token=lock.token)
                locks.check(staging, lock)  # still ours, and the staging session still alive, right before
                production.commit()
                committed = True
            summary = {c.entity: {"offered": c.offered, "inserted": c.inserted, "updated": c.updated,
                                  "unchanged": c.unchanged} for c in counts}
            ledger.set_state(staging, ingestion_id, "SUCCESS", airflow_run_id=airflow_run_id, detail=str(summary))
            ledger.record_promoted(staging, ingestion_id, summary)
            promotion.forget_undo(staging, mapping.client, ingestion_id)
            raw.delete_batches(staging, raw_schema(mapping.client), mapping.source_tables,
                               ledger.prunable(staging, mapping.client, mapping.raw_retention_batches))
    except PipelineError as err:
        if committed:  # what was kept is not "nothing": production holds the batch
            raise replace(err, kept=PROMOTED_BEFORE_THE_LEDGER) from None
        raise
    with named(batch.where(), "releasing the client lock"):
        locks.remember_promoted(settings.redis, ingestion_id)
        locks.release(settings.redis, lock)
    log.info("[%s] promoted: %s", batch.where().describe(), summary)
    return summary


PROMOTED_BEFORE_THE_LEDGER = ("production holds the batch: its promotion committed before the ledger could record "
                              "it; the failure callback, a retry or the client's next run records it SUCCESS")


def undo_partial_transform(settings: PipelineSettings, batch: Batch) -> dict[str, int]:
    """Before a retry of the dbt build: put dummy production back as it was before the batch, under
    the run's own fencing token (a run whose lock was taken over changes nothing)."""
    with connect(settings.staging, batch.where(), "undoing the failed dbt build in dummy production") as conn:
        locks.check(conn, batch.require_lock())
        restored = promotion.undo_batch(conn, batch.client, batch.require_ingestion_id())
    log.info("[%s] dbt build to be retried; dummy production restored: %s", batch.where().describe(), restored)
    return restored


def mark_failed(settings: PipelineSettings, batch: Batch | None, error: str, *,
                airflow_run_id: str | None) -> None:
    """Record FAILED, undo the batch in dummy production, and free the client's lock. Raw batches
    and production are left as they are.

    A run whose lock was taken over changes nothing: the newer run owns the batch (and dummy
    production) now. A batch whose promotion had committed before the failure (production's
    ``promotions`` holds it under this run's token) is recorded SUCCESS instead, and not undone. If
    production cannot be asked, the batch is recorded FAILED and left merged in dummy production:
    the client's next run settles it (:func:`settle_earlier`). Before ``ingest`` named
    the batch, the client's unfinished batches of the same date and extractor run are the ones
    that failed, if this run took them up (another run may be processing the same batch).
    """
    if batch is None:
        return
    lock = batch.lock
    with connect(settings.staging, batch.where(), "recording FAILED") as conn:
        if batch.ingestion_id:
            owned = lock is not None and _still_holds(conn, lock)
            promoted = _was_promoted(settings, batch, lock.token) if owned and lock is not None else False
            if promoted:
                ledger.set_state(conn, batch.ingestion_id, "SUCCESS", airflow_run_id=airflow_run_id,
                                 detail=f"production had committed the promotion before: {error}")
                promotion.forget_undo(conn, batch.client, batch.ingestion_id)
                failed = []
            else:
                if owned and lock is not None:
                    if promoted is None:
                        error += ("; production could not be asked whether the promotion committed, so dummy "
                                  "production keeps the batch until the client's next run settles it")
                    else:
                        restored = promotion.undo_batch(conn, batch.client, batch.ingestion_id)
                        log.info("[%s] dummy production restored: %s", batch.where().describe(), restored)
                    locks.retire(conn, lock)
                state = ledger.state_of(conn, batch.ingestion_id)
                failed = [batch.ingestion_id] if state not in (None, *ledger.DONE) else []
        else:
            failed = (ledger.unfinished(conn, batch.client, batch.day, batch.run_id, airflow_run_id)
                      if batch.run_id else [])
        for ingestion_id in failed:
            ledger.set_state(conn, ingestion_id, "FAILED", airflow_run_id=airflow_run_id, detail=error,
                             fence_token=lock.token if lock else None)
    if lock is not None:
        with named(batch.where(), "releasing the client lock"):
            locks.release(settings.redis, lock)


def settle_earlier(settings: PipelineSettings, client: str, lock: ClientLock, *,
                   airflow_run_id: str | None = None) -> None:
    """Before a run takes its batch up, under the client's lock: what earlier runs left without an
    outcome (a worker killed before its failure callback ran, a lock taken over, a callback that
    could not reach production) is settled as production has it.

    - A batch merged into dummy production (its undo rows say so): if production holds its
      promotion under the token of the run that took it up, it is recorded SUCCESS (the ledger
      lagged) and its undo rows go; if not, dummy production is put back.
    - A batch still PENDING or PROCESSING that another Airflow run took up: its run is over (this
      run holds the lock), so it is recorded FAILED, to be reprocessed by a person like any other.
      A batch this same run took up (a task cleared and run again) is only put back: the run goes
      on with it.

    Production unreachable: this run stops (and is retried) with nothing changed.
    """
    where = Where(client=client)
    with connect(settings.staging, where, "settling the client's earlier batches") as conn:
        locks.check(conn, lock)
        for ingestion_id in promotion.unsettled(conn, client):
            held = ledger.holder_of(conn, ingestion_id)
            if held.state == "SUCCESS" or (held.fence_token is not None and _promoted_under(
                    settings, client, ingestion_id, held.fence_token)):
                promotion.forget_undo(conn, client, ingestion_id)
                if held.state != "SUCCESS":
                    ledger.set_state(conn, ingestion_id, "SUCCESS", airflow_run_id=airflow_run_id,
                                     detail="production had committed its promotion; recorded by the client's next run")
                log.warning("[%s] batch %s: production holds its promotion; the ledger records it (was %s)",
                            where.describe(), ingestion_id, held.state)
                continue
            restored = promotion.undo_batch(conn, client, ingestion_id)
            log.warning("[%s] batch %s (%s) was merged into dummy production but never promoted; dummy production "
                        "restored: %s", where.describe(), ingestion_id, held.state, restored)
        for ingestion_id in ledger.in_flight_elsewhere(conn, client, airflow_run_id):
            ledger.set_state(conn, ingestion_id, "FAILED", airflow_run_id=airflow_run_id,
                             detail="its run ended without recording an outcome; the client's next run recorded it "
                                    "(dummy production as production has it)")
            log.warning("[%s] batch %s: its run ended without an outcome; recorded FAILED", where.describe(),
                        ingestion_id)


def _still_holds(conn: Any, lock: ClientLock) -> bool:
    """Whether this run still owns the client (a savepoint keeps the transaction usable if not)."""
    try:
        with conn.transaction():
            locks.check(conn, lock)
    except locks.LockLost:
        return False
    return True


def _was_promoted(settings: PipelineSettings, batch: Batch, token: int) -> bool | None:
    """Whether this run's promotion of the batch committed; None if production cannot be asked."""
    try:
        return _promoted_under(settings, batch.client, batch.require_ingestion_id(), token)
    except TransientError as err:
        log.warning("[%s] could not ask production whether the promotion committed: %s", batch.where().describe(),
                    err)
        return None


def _promoted_under(settings: PipelineSettings, client: str, ingestion_id: str, token: int) -> bool:
    with connect(settings.production, Where(client=client), "checking production's promotions") as production:
        return promotion.was_promoted(production, client, ingestion_id, token)
