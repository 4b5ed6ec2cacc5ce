"""Exactly once: the ledger traces every state change; a failed batch is retried to SUCCESS; the
same content delivered again is skipped as a DUPLICATE. Real PostgreSQL, Redis and S3."""

from __future__ import annotations

from datetime import date
from typing import Any

import psycopg
import pytest
import redis

from clientflow import pipeline
from clientflow.errors import DuplicateBatch, IntegrityError
from clientflow.operations import locks
from tests.support.practice import Practice, mapping_for, production_rows, run_batch, tables

DAY = date(2026, 4, 2)


def _events(settings: Any, ingestion_id: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(settings.staging.conninfo()) as conn:
        return conn.execute(
            "select state, at, airflow_run_id, source_files from pipeline.batch_events "
            "where ingestion_id = %s order by event_id", (ingestion_id,)).fetchall()


def _lock_held(settings: Any, client: str) -> bool:
    return bool(redis.Redis.from_url(settings.redis.url.get_secret_value()).exists(
        f"{settings.redis.key_prefix}:lock:{client}"))


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
