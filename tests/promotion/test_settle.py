"""A batch merged into dummy production whose run ended without recording its outcome is settled by
the client's next run, as production has it: undone if its promotion never committed, recorded
SUCCESS if it did. Real batches, real PostgreSQL, Redis and S3; production "unreachable" is a closed
loopback port, the "dead worker" a promotion whose staging side never commits."""

from __future__ import annotations

import socket
from datetime import date, timedelta
from typing import Any

import psycopg
import pytest

from clientflow import pipeline, promotion
from clientflow.batch import Batch
from clientflow.db import set_tenant
from clientflow.errors import TransientError
from clientflow.operations import ledger, locks
from tests.support.practice import (
    TABLES,
    Practice,
    assert_dummy_equals_production,
    mapping_for,
    production_rows,
    run_batch,
    tables,
)
from tests.support.transform import transform

DAY = date(2026, 8, 3)


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])  # closed once the block ends: nothing listens there


def _dummy_names(settings: Any, client: str) -> dict[str, str]:
    with psycopg.connect(settings.staging.conninfo()) as conn:
        return dict(conn.execute("select patient_id, last_name from practice.patients where client_id = %s",
                                 (client,)).fetchall())


def _renamed(version: str) -> dict[str, list[dict[str, Any]]]:
    data = tables(4)
    data[TABLES["patients"]][2]["pt_last"] = f"Renamed-{version}"
    return data


def _merged(settings: Any, client: str) -> tuple[Any, Practice, Batch, Batch]:
    """A client's first batch promoted, then a second (P2 renamed) merged into dummy production by
    a run ``manual__two`` that still holds the client's lock: (mapping, practice, first, second)."""
    mapping = mapping_for(client)
    practice = Practice(settings, mapping.client)
    first = run_batch(settings, mapping, practice.write(DAY, "r1", tables(4)))
    batch = pipeline.ingest(settings, mapping, practice.write(DAY + timedelta(days=1), "r2", _renamed("two")),
                            airflow_run_id="manual__two")
    transform(settings, mapping, batch)
    return mapping, practice, first, batch


def _blind(settings: Any) -> Any:
    """The settings with production on a closed port: production cannot be asked anything."""
    return settings.model_copy(update={"production": settings.production.model_copy(update={"port": _closed_port()})})


def _promoted_without_the_ledger(settings: Any, monkeypatch: Any, client: str) -> tuple[Any, Batch, TransientError]:
    """The second batch of :func:`_merged`, promoted by ``manual__two`` with the staging connection
    lost between production's commit and the ledger's: (mapping, batch, the promotion's error)."""
    mapping, _practice, _first, batch = _merged(settings, client)
    pipeline.validate(settings, mapping, batch)

    def connection_lost(*_args: Any, **_kwargs: Any) -> None:
        raise psycopg.OperationalError("consuming input failed: server closed the connection unexpectedly")

    with monkeypatch.context() as patched:
        patched.setattr(ledger, "record_promoted", connection_lost)
        with pytest.raises(TransientError) as caught:
            pipeline.promote(settings, mapping, batch, airflow_run_id="manual__two")
    return mapping, batch, caught.value


def test_a_failure_callback_without_production_leaves_the_batch_to_the_next_run(settings: Any) -> None:
    mapping, practice, first, batch = _merged(settings, "settle_unasked")

    pipeline.mark_failed(_blind(settings), batch, "promotion failed", airflow_run_id="manual__two")  # the callback

    with psycopg.connect(settings.staging.conninfo()) as conn:
        row = conn.execute("select state, error from pipeline.batches where ingestion_id = %s",
                           (batch.ingestion_id,)).fetchone()
        assert promotion.unsettled(conn, mapping.client) == [batch.ingestion_id]
    assert row[0] == "FAILED" and "the client's next run settles it" in row[1]
    assert _dummy_names(settings, mapping.client)["P2"] == "Renamed-two"  # kept: nobody knew
    assert production_rows(settings, mapping.client, "patients", "last_name")["P2"] != ("Renamed-two",)

    run_batch(settings, mapping, practice.write(DAY + timedelta(days=2), "r3", tables(4)))  # the first's rows

    # The third batch found dummy production put back as production has it: P2 was no change, so
    # production's row is still the first batch's (against the unsettled replica it was an update).
    assert production_rows(settings, mapping.client, "patients", "last_name", "ingestion_id")["P2"] == (
        "Name2-a", first.ingestion_id)
    assert_dummy_equals_production(settings, mapping.client)
    with psycopg.connect(settings.staging.conninfo()) as conn:
        assert ledger.state_of(conn, batch.require_ingestion_id()) == "FAILED"
        assert promotion.unsettled(conn, mapping.client) == []  # the third batch's promotion left none


def test_a_promotion_whose_run_died_before_the_ledger_knew_is_recorded_by_the_next_run(settings: Any) -> None:
    mapping, practice, _first, batch = _merged(settings, "settle_died")
    pipeline.validate(settings, mapping, batch)
    lock = batch.require_lock()
    with psycopg.connect(settings.staging.conninfo()) as staging, \
            psycopg.connect(settings.production.conninfo()) as production:
        promotion.promote(staging, production, mapping.client, batch.require_ingestion_id(), batch.day,
                          mapping.entities, fence_token=lock.token)
        production.commit()
        staging.rollback()  # the worker died here: production committed, the ledger never heard
    locks.release(settings.redis, lock)  # as the lock's timeout would

    with psycopg.connect(settings.staging.conninfo()) as conn:
        assert ledger.state_of(conn, batch.require_ingestion_id()) == "PROCESSING"
    run_batch(settings, mapping, practice.write(DAY + timedelta(days=2), "r3", _renamed("two")))  # same names

    with psycopg.connect(settings.staging.conninfo()) as conn:
        assert ledger.state_of(conn, batch.require_ingestion_id()) == "SUCCESS"
        assert "recorded by the client's next run" in ledger_detail(conn, batch.require_ingestion_id())
    assert production_rows(settings, mapping.client, "patients", "last_name")["P2"] == ("Renamed-two",)
    assert_dummy_equals_production(settings, mapping.client)


def ledger_detail(conn: psycopg.Connection[Any], ingestion_id: str) -> str:
    row = conn.execute("select detail from pipeline.batch_events where ingestion_id = %s order by event_id desc "
                       "limit 1", (ingestion_id,)).fetchone()
    return str(row[0]) if row else ""


def test_a_run_that_died_after_dbt_is_undone_and_failed_by_the_next_run(settings: Any) -> None:
    """No failure callback at all (the worker was killed, the lock expired): the next run puts dummy
    production back before its own merge and records the batch FAILED."""
    mapping, practice, _first, batch = _merged(settings, "settle_killed")
    locks.release(settings.redis, batch.require_lock())  # as the lock's timeout would

    later = run_batch(settings, mapping, practice.write(DAY + timedelta(days=2), "r3", tables(4)))

    with psycopg.connect(settings.staging.conninfo()) as conn:
        assert ledger.state_of(conn, batch.require_ingestion_id()) == "FAILED"
        assert "ended without recording an outcome" in ledger_detail(conn, batch.require_ingestion_id())
        assert ledger.state_of(conn, later.require_ingestion_id()) == "SUCCESS"
    assert production_rows(settings, mapping.client, "patients", "last_name")["P2"] == ("Name2-a",)
    assert_dummy_equals_production(settings, mapping.client)


def test_a_ledger_lost_after_production_committed_says_so_and_the_callback_records_success(
        settings: Any, monkeypatch: Any) -> None:
    """The staging connection fails between production's commit and the ledger's: the error must not
    say that nothing was kept, and the failure callback finds this run's promotion in production."""
    mapping, batch, error = _promoted_without_the_ledger(settings, monkeypatch, "settle_lagging")
    assert "production holds the batch" in str(error) and "nothing was committed" not in str(error)

    pipeline.mark_failed(settings, batch, type(error).__name__, airflow_run_id="manual__two")  # the callback
    with psycopg.connect(settings.staging.conninfo()) as conn:
        assert ledger.state_of(conn, batch.require_ingestion_id()) == "SUCCESS"
        assert promotion.unsettled(conn, mapping.client) == []
    assert production_rows(settings, mapping.client, "patients", "last_name")["P2"] == ("Renamed-two",)
    assert_dummy_equals_production(settings, mapping.client)


def test_a_retry_after_the_ledger_was_lost_records_the_promotion_s_own_counts(
        settings: Any, monkeypatch: Any) -> None:
    """Airflow retries the promote task whose production committed: the retry writes nothing again
    and records the first attempt's figures (a second merge would find every row unchanged and
    record zeros in the ledger and in production's promotions)."""
    mapping, batch, _error = _promoted_without_the_ledger(settings, monkeypatch, "settle_retried")

    summary = pipeline.promote(settings, mapping, batch, airflow_run_id="manual__two")  # the task's retry

    assert summary["patients"] == {"offered": 1, "inserted": 0, "updated": 1, "unchanged": 0}
    with psycopg.connect(settings.staging.conninfo()) as conn:
        assert ledger.state_of(conn, batch.require_ingestion_id()) == "SUCCESS"
        recorded = conn.execute("select promoted from pipeline.batches where ingestion_id = %s",
                                (batch.ingestion_id,)).fetchone()[0]
        assert recorded == summary and promotion.unsettled(conn, mapping.client) == []
    with psycopg.connect(settings.production.conninfo()) as conn:
        set_tenant(conn, mapping.client, local=False)
        written = conn.execute("select rows_written from practice.promotions where ingestion_id = %s",
                               (batch.ingestion_id,)).fetchone()[0]
    assert written["patients"] == 1
    assert production_rows(settings, mapping.client, "patients", "last_name")["P2"] == ("Renamed-two",)
    assert_dummy_equals_production(settings, mapping.client)


def test_a_batch_left_before_dbt_is_failed_by_the_next_run_but_not_by_its_own_run_cleared(settings: Any) -> None:
    """No undo rows (the worker died in ingest): another run's batch in flight is over once this run
    holds the client's lock; the same Airflow run, cleared and run again, carries on with its batch."""
    mapping = mapping_for("settle_early")
    practice = Practice(settings, mapping.client)
    found = practice.write(DAY, "r1", tables(3))
    batch = pipeline.ingest(settings, mapping, found, airflow_run_id="scheduled__one")
    locks.release(settings.redis, batch.require_lock())  # killed after the raw load, before dbt

    again = pipeline.ingest(settings, mapping, found, airflow_run_id="scheduled__one")  # the task cleared
    with psycopg.connect(settings.staging.conninfo()) as conn:
        assert ledger.history(conn, batch.require_ingestion_id()) == ["PENDING", "PROCESSING", "PENDING",
                                                                        "PROCESSING"]
    locks.release(settings.redis, again.require_lock())  # killed again

    later = run_batch(settings, mapping, practice.write(DAY + timedelta(days=1), "r2", tables(3)),
                      holder="scheduled__two")
    with psycopg.connect(settings.staging.conninfo()) as conn:
        assert ledger.state_of(conn, batch.require_ingestion_id()) == "FAILED"
        assert "ended without recording an outcome" in ledger_detail(conn, batch.require_ingestion_id())
        assert ledger.state_of(conn, later.require_ingestion_id()) == "SUCCESS"
    assert_dummy_equals_production(settings, mapping.client)


def test_a_restore_s_sync_leaves_nothing_for_the_next_run_to_undo(settings: Any) -> None:
    """Dummy production copied from production (``clientflow restore``) must not be "put back" by a
    failed run's undo rows afterwards."""
    from clientflow.operations import restore

    mapping, practice, _first, batch = _merged(settings, "settle_restored")
    pipeline.mark_failed(_blind(settings), batch, "promotion failed", airflow_run_id="manual__two")  # leaves its undo rows

    with psycopg.connect(settings.staging.conninfo()) as staging, \
            psycopg.connect(settings.production.conninfo()) as production:
        restore.sync_dummy_production(staging, production, mapping.client)
        assert promotion.unsettled(staging, mapping.client) == []
    assert_dummy_equals_production(settings, mapping.client)

    run_batch(settings, mapping, practice.write(DAY + timedelta(days=2), "r3", tables(4, "three")))
    assert_dummy_equals_production(settings, mapping.client)
