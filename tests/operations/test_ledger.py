"""Exactly once: the ledger traces every state change; a failed batch is retried to SUCCESS; the
same content delivered again is skipped as a DUPLICATE. Real PostgreSQL, Redis and S3."""

from __future__ import annotations

from datetime import date
from typing import Any

import psycopg
import pytest
import redis

from clientflow import pipeline
from clientflow.arrival import read_manifests
from clientflow.errors import DuplicateBatch, IntegrityError
from clientflow.operations import ledger, locks
from tests.support.practice import Practice, ingestion_id, mapping_for, production_rows, run_batch, tables

DAY = date(2026, 4, 2)


def _events(settings: Any, ingestion_id: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(settings.staging.conninfo()) as conn:
        return conn.execute(
            "select state, at, airflow_run_id, source_files from pipeline.batch_events "
            "where ingestion_id = %s order by event_id", (ingestion_id,)).fetchall()


def _lock_held(settings: Any, client: str) -> bool:
    return bool(redis.Redis.from_url(settings.redis.url.get_secret_value()).exists(
        locks.key(settings.redis, "lock", client)))


def test_failed_batch_is_retried_and_every_change_is_traced(settings: Any) -> None:
    mapping = mapping_for("led_retry")
    practice = Practice(settings, mapping.client)
    data = tables(4)
    run = "20260402T010000Z"
    found = practice.write(DAY, run, data, corrupt=("person",))

    with pytest.raises(IntegrityError, match="checksum mismatch"):
        pipeline.ingest(settings, mapping, found, dag_id="client_led_retry", airflow_run_id="scheduled__1")
    pipeline.mark_failed(settings, found, "checksum mismatch", airflow_run_id="scheduled__1")
    assert not _lock_held(settings, mapping.client)  # released on failure, not left to expire

    # The client re-uploads the intact file; a retry of the same batch goes through.
    practice.write(DAY, run, data)
    batch = run_batch(settings, mapping, found, holder="manual__2")

    events = _events(settings, batch.ingestion_id)
    assert [e[0] for e in events] == ["PENDING", "PROCESSING", "FAILED", "PENDING", "PROCESSING", "SUCCESS"]
    assert [e[2] for e in events] == ["scheduled__1"] * 3 + ["manual__2"] * 3
    assert [e[1] for e in events] == sorted(e[1] for e in events)
    files = [f"client=led_retry/table={t}/date=20260402/run_id={run}/data.json" for t in ("clinician", "person", "visit")]
    assert all(e[3] == files for e in events)
    assert len(production_rows(settings, mapping.client, "patients")) == 4
    assert not _lock_held(settings, mapping.client)
    with psycopg.connect(settings.staging.conninfo()) as conn:
        assert conn.execute("select state, error from pipeline.batches where ingestion_id = %s",
                            (batch.ingestion_id,)).fetchone() == ("SUCCESS", None)

    # "It seemed stuck": the same content extracted again under a new run id is a duplicate.
    rerun = practice.write(DAY, "20260402T020000Z-again", data)
    with pytest.raises(DuplicateBatch):
        pipeline.ingest(settings, mapping, rerun, airflow_run_id="manual__3")
    last = _events(settings, batch.ingestion_id)[-1]
    assert last[0] == "DUPLICATE" and last[2] == "manual__3"
    assert last[3] == [f.replace(run, "20260402T020000Z-again") for f in files]
    assert locks.known_promoted(settings.redis, batch.ingestion_id)
    assert not _lock_held(settings, mapping.client)


def test_unseen_keeps_the_callers_order_and_counts_only_this_clients_batches(settings: Any) -> None:
    """What the sweep, the watchdog and offboarding ask: the ledger holds a batch in any state (a
    FAILED one is seen), and another client's batch of the same date and run id is not this one's."""
    mapping, other = mapping_for("led_unseen"), mapping_for("led_unseen_other")
    s3, bucket = settings.s3.client(), settings.s3.bucket
    days = [date(2026, 5, d) for d in (3, 1, 2, 4)]
    with psycopg.connect(settings.staging.conninfo()) as conn:
        for who, day, state in ((mapping, days[1], "FAILED"), (mapping, days[3], "SUCCESS"), (other, days[0], "PENDING")):
            data = tables(2, version=f"{who.client}{day}")
            batch = Practice(settings, who.client).write(day, "r1", data)
            ledger.record_batch(conn, ingestion_id(who.client, day, data), read_manifests(s3, bucket, batch),
                                dag_id=f"client_{who.client}", airflow_run_id="manual__x")
            ledger.set_state(conn, ingestion_id(who.client, day, data), state, detail="a cause")
        conn.commit()
        asked = [(days[0], "r1"), (days[1], "r1"), (days[2], "r1"), (days[1], "r2"), (days[3], "r1")]
        assert ledger.unseen(conn, mapping.client, asked) == [(days[0], "r1"), (days[2], "r1"), (days[1], "r2")]
        assert ledger.unseen(conn, mapping.client, iter([])) == []


def test_a_run_failing_before_ingest_leaves_alone_the_batch_another_run_is_processing(settings: Any) -> None:
    """A scheduled run whose sensor timed out (its batch never named) and a backfill processing the
    same date and extractor run: the failure callback of the first fails only what it took up."""
    mapping = mapping_for("led_two_runs")
    found = Practice(settings, mapping.client).write(DAY, "r1", tables(3))
    batch = pipeline.ingest(settings, mapping, found, airflow_run_id="backfill__2026-04-02")
    with psycopg.connect(settings.staging.conninfo()) as conn:
        assert ledger.state_of(conn, batch.require_ingestion_id()) == "PROCESSING"

    pipeline.mark_failed(settings, found, "sensor timeout", airflow_run_id="scheduled__2026-04-02")
    with psycopg.connect(settings.staging.conninfo()) as conn:
        assert ledger.state_of(conn, batch.require_ingestion_id()) == "PROCESSING"

    pipeline.mark_failed(settings, found, "ingest failed", airflow_run_id="backfill__2026-04-02")  # its own run
    with psycopg.connect(settings.staging.conninfo()) as conn:
        assert ledger.state_of(conn, batch.require_ingestion_id()) == "FAILED"
    pipeline.mark_failed(settings, batch, "cleanup", airflow_run_id="backfill__2026-04-02")  # frees the lock
    assert not _lock_held(settings, mapping.client)
