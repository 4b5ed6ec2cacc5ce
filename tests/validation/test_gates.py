"""Nothing bad passes silently: rejects, and every gate stopping a bad batch with production unchanged.

Each test runs real batches (the bucket, the raw load, dbt, the gates, the promotion) for its own
test client on real PostgreSQL, Redis and S3, then checks production, dummy production, the
ledger and pipeline.rejects.
"""

from __future__ import annotations

import subprocess
import sys
from datetime import date, timedelta
from typing import Any

import psycopg
import pytest

from clientflow import pipeline
from clientflow.errors import ValidationFailed
from tests.support.practice import (
    TABLES,
    Practice,
    assert_dummy_equals_production,
    mapping_for,
    production_rows,
    run_batch,
    tables,
)
from tests.support.transform import TransformFailed, transform

DAY = date(2026, 10, 10)
LENIENT = {"max_share": 0.5}


def _mapping(client: str, **overrides: Any) -> Any:
    """The standard test practice, with lenient reject thresholds and small anomaly samples."""
    base = mapping_for(client)
    specs = {name: spec.model_dump(exclude_none=True) for name, spec in base.tables.items()}
    for spec in specs.values():
        spec["rejects"] = LENIENT
    return mapping_for(client, tables=specs, anomalies={"min_rows": 5, **overrides.pop("anomalies", {})}, **overrides)


def _clientflow(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "clientflow.cli", *args], capture_output=True, text=True, timeout=120)


def _state(settings: Any, ingestion_id: str) -> str:
    with psycopg.connect(settings.staging.conninfo()) as conn:
        return conn.execute("select state from pipeline.batches where ingestion_id = %s",
                            (ingestion_id,)).fetchone()[0]


def test_rejects_are_recorded_without_values_and_the_good_rows_promoted(settings: Any) -> None:
    mapping = _mapping("rej_good")
    data = tables(10)
    data[TABLES["patients"]][3]["patient_dob"] = "31/31/1999"  # no such date in any format
    data[TABLES["patients"]][5]["gender"] = "q"  # a code the mapping does not list
    batch = run_batch(settings, mapping, Practice(settings, mapping.client).write(DAY, "r1", data))

    patients = production_rows(settings, mapping.client, "patients")
    assert sorted(patients) == sorted(f"P{i}" for i in range(10) if i not in (3, 5))
    # appointments of the refused patients are refused too: their parent did not reach production
    assert sorted(production_rows(settings, mapping.client, "appointments")) == sorted(
        f"A{i}" for i in range(10) if i not in (3, 5))
    with psycopg.connect(settings.staging.conninfo()) as conn:
        rejects = conn.execute(
            "select table_name, source_row, source_key, column_name, rule, reason from pipeline.rejects "
            "where ingestion_id = %s order by table_name, source_row", (batch.ingestion_id,)).fetchall()
    assert [r[:5] for r in rejects] == [
        ("person", 4, "P3", "date_of_birth", "date_format"), ("person", 6, "P5", "sex", "unmapped_value"),
        ("visit", 4, "A3", "patient_id", "parent_missing"), ("visit", 6, "A5", "patient_id", "parent_missing")]
    assert all("31/31" not in str(r) and "'q'" not in str(r) for r in rejects)
    listed = _clientflow("rejects", mapping.client, "--batch", batch.ingestion_id)
    assert listed.returncode == 0 and "4 refused value(s)" in listed.stdout and "unmapped_value" in listed.stdout
    assert_dummy_equals_production(settings, mapping.client)


def test_the_rejects_gate_stops_a_batch_past_its_threshold(settings: Any) -> None:
    mapping = mapping_for("rej_stop")  # default threshold: 1% of a table's rows
    data = tables(10)
    data[TABLES["patients"]][2]["patient_dob"] = "soon"
    with pytest.raises(ValidationFailed, match=r"gate rejects: person: 1 of 10 rows refused \(10.0%; allowed 1.0%\)"):
        run_batch(settings, mapping, Practice(settings, mapping.client).write(DAY, "r1", data))
    assert production_rows(settings, mapping.client, "patients") == {}
    assert_dummy_equals_production(settings, mapping.client)  # the failed batch left nothing in dummy production


def test_the_counts_gate_stops_a_batch_whose_rows_do_not_add_up(settings: Any) -> None:
    mapping = mapping_for("count_gate")
    found = Practice(settings, mapping.client).write(DAY, "r1", tables(4))
    batch = pipeline.ingest(settings, mapping, found, airflow_run_id="t")
    with psycopg.connect(settings.staging.conninfo()) as conn:  # a row lost after the load
        conn.execute("delete from raw_count_gate.person where source_row = 2")
    try:
        transform(settings, mapping, batch)
        with pytest.raises(ValidationFailed, match="gate counts: patients: the raw tables hold 3 rows of this batch, "
                                                   "the manifests declared 4"):
            pipeline.validate(settings, mapping, batch)
    finally:
        pipeline.mark_failed(settings, batch, "counts", airflow_run_id="t")
    assert production_rows(settings, mapping.client, "patients") == {}
    assert_dummy_equals_production(settings, mapping.client)


def test_the_counts_gate_stops_a_batch_whose_staging_tables_a_crash_emptied(settings: Any, admin_dsn: str) -> None:
    """dbt's tables are unlogged (no WAL for rows rebuilt from raw by every batch), and a crash of the
    database empties them (truncated here, as crash recovery does): the counts gate stops the
    batch before anything is promoted. tests/promotion has the crash after validation."""
    mapping = mapping_for("crash_gate")
    practice = Practice(settings, mapping.client)
    run_batch(settings, mapping, practice.write(DAY, "r1", tables(4, "one")))
    batch = pipeline.ingest(settings, mapping, practice.write(DAY + timedelta(days=1), "r2", tables(6, "two")),
                            airflow_run_id="t")
    transform(settings, mapping, batch)
    staging_admin = psycopg.conninfo.make_conninfo(admin_dsn, dbname=settings.staging.dbname)
    with psycopg.connect(staging_admin, autocommit=True) as admin:
        persistence = dict(admin.execute(
            "select relname, relpersistence from pg_class where relnamespace = %s::regnamespace and relkind = 'r'",
            (f"stg_{mapping.client}",)).fetchall())
        assert {persistence[f"{m}_{e}"] for m in ("stg", "changes") for e in ("providers", "patients")} == {"u"}
        assert persistence["undo_patients"] == "p"  # what puts dummy production back survives a crash
        admin.execute(f"truncate stg_{mapping.client}.stg_patients")
    before = production_rows(settings, mapping.client, "patients", "last_name")
    try:
        with pytest.raises(ValidationFailed, match="gate counts: patients: "):
            pipeline.validate(settings, mapping, batch)
    finally:
        pipeline.mark_failed(settings, batch, "crash", airflow_run_id="t")
    assert production_rows(settings, mapping.client, "patients", "last_name") == before
    assert_dummy_equals_production(settings, mapping.client)
    run_batch(settings, mapping, practice.write(DAY + timedelta(days=1), "r2", tables(6, "two")))  # again
    assert production_rows(settings, mapping.client, "patients", "last_name")["P5"] == ("Name5-two",)


def test_the_dbt_tests_stop_a_row_the_staging_models_missed(settings: Any, staging_owner: str) -> None:
    """dbt's tests are the last line: here an orphan appointment that reached dummy production by a
    path the staging models do not see (its foreign key dropped, the row written directly). It is
    dated after the batch, so the batch's full snapshot leaves it alone (an older batch never
    writes over a newer row) and it never enters the change set, whose foreign keys the merge
    checks itself: only the test finds it."""
    mapping = mapping_for("dbt_gate")
    found = Practice(settings, mapping.client).write(DAY, "r1", tables(3))
    batch = pipeline.ingest(settings, mapping, found, airflow_run_id="t")
    transform(settings, mapping, batch)  # the batch as it is passes
    with psycopg.connect(staging_owner) as conn:  # a change of dummy production's DDL: its owner's
        conn.execute("alter table practice.appointments drop constraint appointments_client_id_patient_id_fkey")
        conn.execute(
            "insert into practice.appointments (client_id, appointment_id, patient_id, provider_id, starts_at, "
            "duration_minutes, status, ingestion_id, source_batch_date, job_id, source_file, source_row) values "
            "('dbt_gate', 'A99', 'P99', 'D0', now(), 30, 'completed', %s, %s, 'j', 'f', 1)",
            (batch.ingestion_id, DAY + timedelta(days=1)))
    try:
        with pytest.raises(TransformFailed) as failed:
            transform(settings, mapping, batch)
        assert "Failure in test has_parent_in_client_appointments_patient_id" in failed.value.output, \
            failed.value.output[-3000:]
        assert "refer to no parent row" not in failed.value.output  # not the merge's own check
    finally:
        pipeline.mark_failed(settings, batch, "dbt tests", airflow_run_id="t")
        with psycopg.connect(staging_owner) as conn:
            conn.execute("delete from practice.appointments where client_id = 'dbt_gate'")
            conn.execute("alter table practice.appointments add constraint appointments_client_id_patient_id_fkey "
                         "foreign key (client_id, patient_id) references practice.patients (client_id, patient_id)")
    assert production_rows(settings, mapping.client, "appointments") == {}


def _two_batches(settings: Any, client: str, first: dict[str, Any], second: dict[str, Any], **overrides: Any) -> Any:
    mapping = _mapping(client, **overrides)
    practice = Practice(settings, client)
    run_batch(settings, mapping, practice.write(DAY, "r1", first))
    before = production_rows(settings, client, "patients", "last_name", "date_of_birth", "sex")
    found = practice.write(DAY + timedelta(days=1), "r2", second)
    with pytest.raises(ValidationFailed) as stopped:
        run_batch(settings, mapping, found)
    assert production_rows(settings, client, "patients", "last_name", "date_of_birth", "sex") == before
    assert_dummy_equals_production(settings, client)
    return mapping, found, str(stopped.value)


def test_a_full_snapshot_that_shrank_stops(settings: Any) -> None:
    _, _, message = _two_batches(settings, "gate_drop", tables(40), tables(12, "b", visits=12))
    assert "gate row_drop: patients: the full snapshot holds 12 rows, the previous one 40" in message


def test_an_incremental_batch_is_no_shrunk_snapshot_and_deletes_nothing(settings: Any) -> None:
    """A file of changed rows is not judged against the last full snapshot's size and deletes
    nothing; the next full snapshot is compared with the last full one, not with the increment."""
    mapping = _mapping("gate_incr")
    practice = Practice(settings, mapping.client)
    run_batch(settings, mapping, practice.write(DAY, "r1", tables(40)))
    changed = tables(40)
    changed[TABLES["patients"]] = changed[TABLES["patients"]][:12]
    for row in changed[TABLES["patients"]]:
        row["pt_last"] = "Changed"
    batch = run_batch(settings, mapping, practice.write(DAY + timedelta(days=1), "r2", changed,
                                                        incremental={TABLES["patients"]: "pt_id"}))
    patients = production_rows(settings, mapping.client, "patients", "last_name", "deleted_at")
    assert len(patients) == 40 and all(deleted is None for _, deleted in patients.values())
    assert sum(name == "Changed" for name, _ in patients.values()) == 12
    with psycopg.connect(settings.staging.conninfo()) as conn:
        profiled = conn.execute("select entity, full_snapshot from pipeline.batch_profiles where ingestion_id = %s "
                                "order by entity", (batch.ingestion_id,)).fetchall()
    assert dict(profiled) == {"appointments": True, "patients": False, "providers": True}
    found = practice.write(DAY + timedelta(days=2), "r3", tables(12, "c", visits=12))
    with pytest.raises(ValidationFailed) as stopped:
        run_batch(settings, mapping, found)
    assert "gate row_drop: patients: the full snapshot holds 12 rows, the previous one 40" in str(stopped.value)
    assert_dummy_equals_production(settings, mapping.client)


def test_a_phantom_null_stops(settings: Any) -> None:
    second = tables(30, "b")
    for row in second[TABLES["patients"]][:12]:
        row["patient_dob"] = None
    _, _, message = _two_batches(settings, "gate_null", tables(30), second)
    assert "gate null_rate: patients.date_of_birth: NULL in 40.0% of the kept rows, previously 0.0%" in message


def test_a_coded_column_with_new_unmapped_values_stops(settings: Any) -> None:
    second = tables(30, "b")
    second[TABLES["patients"]][7]["gender"] = "x"  # one row: below the reject threshold
    _, _, message = _two_batches(settings, "gate_unmapped", tables(30), second, anomalies={"max_reject_share_increase": 1})
    assert "gate unmapped_values: patients.sex: 1 value(s) the mapping's `values` does not list" in message


def test_a_rising_reject_share_stops_and_an_accepted_batch_promotes(settings: Any) -> None:
    second = tables(30, "b")
    for row in second[TABLES["patients"]][:6]:
        row["patient_dob"] = "later"
    mapping, found, message = _two_batches(settings, "gate_accept", tables(30), second)
    assert "gate reject_share: patients: 20.0% of the rows refused, previously 0.0%" in message
    ingestion_id = _ingestion_of(settings, "gate_accept", found)

    accepted = _clientflow("accept", ingestion_id, "--by", "dana.engineer", "--reason", "six bad dates, client fixing")
    assert accepted.returncode == 0, accepted.stderr
    assert "airflow dags trigger client_gate_accept" in accepted.stdout
    run_batch(settings, mapping, found)  # the batch again: now it promotes, without the refused rows

    assert _state(settings, ingestion_id) == "SUCCESS"
    patients = production_rows(settings, "gate_accept", "patients", "last_name")
    assert patients["P10"] == ("Name10-b",) and patients["P0"] == ("Name0-a",)  # refused rows keep their old values
    with psycopg.connect(settings.staging.conninfo()) as conn:
        event = conn.execute("select detail from pipeline.batch_events where ingestion_id = %s and state = 'ACCEPTED'",
                             (ingestion_id,)).fetchone()
    assert event == ("by dana.engineer: six bad dates, client fixing (gates: *)",)
    assert_dummy_equals_production(settings, "gate_accept")


def _ingestion_of(settings: Any, client: str, found: Any) -> str:
    with psycopg.connect(settings.staging.conninfo()) as conn:
        return conn.execute("select ingestion_id from pipeline.batches where client_name = %s and batch_date = %s "
                            "and run_id = %s", (client, found.day, found.run_id)).fetchone()[0]


def test_a_promoted_batch_is_reoffered_once_its_mapping_is_fixed(settings: Any) -> None:
    mapping = _mapping("reoffer")
    data = tables(10)
    data[TABLES["patients"]][4]["gender"] = "x"
    practice = Practice(settings, "reoffer")
    batch = run_batch(settings, mapping, practice.write(DAY, "r1", data))
    assert "P4" not in production_rows(settings, "reoffer", "patients")

    fixed_specs = {n: s.model_dump(exclude_none=True) for n, s in mapping.tables.items()}
    fixed_specs[TABLES["patients"]]["columns"]["sex"]["values"]["x"] = "other"
    fixed = mapping_for("reoffer", tables=fixed_specs, anomalies={"min_rows": 5})
    offered = _clientflow("reoffer", batch.ingestion_id, "--by", "dana.engineer", "--reason", "x means other")
    assert offered.returncode == 0, offered.stderr
    run_batch(settings, fixed, practice.write(DAY, "r1", data))

    assert production_rows(settings, "reoffer", "patients", "sex")["P4"] == ("other",)
    assert "A4" in production_rows(settings, "reoffer", "appointments")
    with psycopg.connect(settings.staging.conninfo()) as conn:
        assert conn.execute("select count(*) from pipeline.rejects where ingestion_id = %s",
                            (batch.ingestion_id,)).fetchone() == (0,)
    assert _state(settings, batch.ingestion_id) == "SUCCESS"


def test_a_reoffered_batch_stopped_after_dbt_fails_and_is_not_taken_for_its_earlier_promotion(settings: Any) -> None:
    """Production's promotions row of the batch's first run must not make its re-offered run's
    failure pass for a success: the failure is recorded, and dummy production undone."""
    mapping = _mapping("reoffer_stop")
    data = tables(10)
    data[TABLES["patients"]][4]["gender"] = "x"
    practice = Practice(settings, "reoffer_stop")
    batch = run_batch(settings, mapping, practice.write(DAY, "r1", data))
    before = production_rows(settings, "reoffer_stop", "patients", "sex")
    fixed_specs = {n: s.model_dump(exclude_none=True) for n, s in mapping.tables.items()}
    fixed_specs[TABLES["patients"]]["columns"]["sex"]["values"]["x"] = "other"
    fixed = mapping_for("reoffer_stop", tables=fixed_specs, anomalies={"min_rows": 5})
    offered = _clientflow("reoffer", batch.ingestion_id, "--by", "dana.engineer", "--reason", "x means other")
    assert offered.returncode == 0, offered.stderr

    again = pipeline.ingest(settings, fixed, practice.write(DAY, "r1", data), airflow_run_id="manual__again")
    transform(settings, fixed, again)  # P4 merged into dummy production
    pipeline.mark_failed(settings, again, "a gate stopped it", airflow_run_id="manual__again")  # the callback

    assert _state(settings, batch.ingestion_id) == "FAILED"
    assert production_rows(settings, "reoffer_stop", "patients", "sex") == before
    assert_dummy_equals_production(settings, "reoffer_stop")
