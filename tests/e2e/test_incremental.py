"""Incremental extraction end to end: the ehrlogic sample with an ``updated_at`` cursor on its
patients and appointments, the real extractor binary with a state file, and the client's DAG.

Day 1 is a full snapshot (no state yet). Between day 1 and day 2 the source inserts, updates and
deletes; day 2's batch carries only the changed patients and appointments (the other two tables
stay full snapshots), production gets the inserts and updates, and the deleted appointment stays,
because an incremental file never soft-deletes. Day 3 is a ``--full-refresh``: the deleted
appointment is soft-deleted, and production's live rows equal the source, value by value.
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import date
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from clientflow.mapping import ClientMapping, load_all
from tests.support import e2e
from tests.support.dags import test_client_dag
from tests.support.oracle import expected_rows, postgres_reader

pytestmark = pytest.mark.e2e

CLIENT = "ehrinc"  # the ehrlogic mapping under a client name of its own: a ledger of its own
PATIENTS = 120
DAYS = (date(2026, 10, 1), date(2026, 10, 2), date(2026, 10, 3))
INCREMENTAL = ("dim_patient", "fact_appointment")


@pytest.fixture(scope="module")
def mapping() -> ClientMapping:
    ehrlogic = next(m for m in load_all() if m.client == "ehrlogic")
    return ClientMapping.model_validate({**ehrlogic.model_dump(exclude_none=True), "client": CLIENT})


@pytest.fixture(scope="module")
def source_dsn(admin_dsn: str) -> Any:
    from clientflow.sample import ehrlogic

    name = f"{os.environ['CLIENTFLOW_STAGING_DB'].removesuffix('_staging')}_ehrinc_src"
    ehrlogic.create(admin_dsn, name, PATIENTS)
    dsn = psycopg.conninfo.make_conninfo(admin_dsn, dbname=name)
    with psycopg.connect(dsn) as conn:
        for table, key in zip(INCREMENTAL, ("pt_id", "appt_id"), strict=True):
            # one second apart: the high mark is one row's, and each run re-reads only the rows at it
            conn.execute(sql.SQL("alter table {} add column updated_at timestamptz").format(sql.Identifier(table)))
            conn.execute(sql.SQL("update {} set updated_at = timestamptz '2026-09-01 00:00:00+00' + {} * interval '1 s'")
                         .format(sql.Identifier(table), sql.Identifier(key)))
    yield dsn
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))


def _extract(settings: Any, source_dsn: str, tmp: Path, day: date, *extra: str) -> str:
    config = tmp / "extract.toml"
    config.write_text(f'state_file = "{tmp / "state.json"}"\n\n[incremental]\n'
                      + "".join(f'{t} = "updated_at"\n' for t in INCREMENTAL), encoding="utf-8")
    info = psycopg.conninfo.conninfo_to_dict(source_dsn)
    url = f"postgresql://ehrlogic_reader@{info['host']}:{info.get('port', 5432)}/{info['dbname']}"
    return e2e.extract(settings, CLIENT, url, day, password="unused-with-trust-auth",
                       extra=("--config", str(config), *extra))


def _live(settings: Any) -> dict[str, set[Any]]:
    """entity -> keys of production's rows that are not soft-deleted."""
    out = {}
    with psycopg.connect(settings.production.conninfo()) as conn:
        for entity, key in (("patients", "patient_id"), ("appointments", "appointment_id"),
                            ("procedures", "procedure_id"), ("providers", "provider_id")):
            out[entity] = {r[0] for r in conn.execute(sql.SQL(
                "select {} from practice.{} where client_id = %s and deleted_at is null").format(
                sql.Identifier(key), sql.Identifier(entity)), (CLIENT,))}
    return out


def _expected(mapping: ClientMapping, source_dsn: str) -> Any:
    with psycopg.connect(source_dsn) as conn:
        return expected_rows(mapping, postgres_reader(conn))


def _assert_values(settings: Any, expected: Any) -> None:
    """Every source row is in production with the oracle's values."""
    production = e2e.production_snapshot(settings, CLIENT)
    for entity, rows in expected.items():
        for key, want in rows.items():
            assert {k: production[entity][key][k] for k in want} == want, (entity, key)


def _jobs(settings: Any, day: date) -> dict[str, tuple[str, int]]:
    with psycopg.connect(settings.staging.conninfo()) as conn:
        rows = conn.execute(
            "select j.table_name, j.extraction_mode, j.row_count from pipeline.jobs j join pipeline.batches b "
            "using (ingestion_id) where b.client_name = %s and b.batch_date = %s", (CLIENT, day)).fetchall()
    return {r[0]: (r[1], r[2]) for r in rows}


def _snapshots(settings: Any) -> dict[str, tuple[Any, ...]]:
    with psycopg.connect(settings.staging.conninfo()) as conn:
        rows = conn.execute(
            "select table_name, last_mode, last_full_batch_date, last_full_state, incremental_since_full "
            "from pipeline.table_snapshots where client_name = %s", (CLIENT,)).fetchall()
    return {r[0]: tuple(r[1:]) for r in rows}


def test_incremental_batches_upsert_and_only_full_snapshots_delete(
    mapping: ClientMapping, source_dsn: str, settings: Any, airflow_db: Path, tmp_path: Path
) -> None:
    # day 1: no state yet, so every table is a full snapshot
    _extract(settings, source_dsn, tmp_path, DAYS[0])
    assert test_client_dag(mapping, conf={"batch_date": DAYS[0].isoformat()}).state == "success"
    assert {t: m for t, (m, _) in _jobs(settings, DAYS[0]).items()} == dict.fromkeys(mapping.source_tables, "full")
    e2e.assert_production_equals(settings, CLIENT, _expected(mapping, source_dsn))

    with psycopg.connect(source_dsn) as conn:
        gone = conn.execute("select appt_id from fact_appointment where appt_id not in "
                            "(select appt_id from fact_procedure) order by appt_id limit 1").fetchone()[0]
        conn.execute("delete from fact_appointment where appt_id = %s", (gone,))
        conn.execute("update fact_appointment set appt_status = 'Completed', reason_txt = 'Follow-up', "
                     "updated_at = timestamptz '2026-10-01 15:00:00+00' where appt_id = 2")
        conn.execute("update dim_patient set pt_last_nm = 'Renamed', updated_at = timestamptz '2026-10-01 16:00:00+00' "
                     "where pt_id = 5")
        conn.execute("insert into dim_patient (pt_id, pt_last_nm, patient_dob, gender, updated_at) "
                     "values (9001, 'Newcomer', '1990-05-05', 'F', timestamptz '2026-10-01 17:00:00+00')")
        conn.execute("insert into fact_appointment (appt_id, pt_id, prov_id, appt_start, appt_len_min, appt_status, "
                     "updated_at) values (90001, 9001, 1, timestamptz '2026-10-05 09:00:00+00', 30, 'Booked', "
                     "timestamptz '2026-10-01 17:30:00+00')")

    # day 2: the incremental tables carry the changed rows and the one row at day 1's high mark
    _extract(settings, source_dsn, tmp_path, DAYS[1])
    assert test_client_dag(mapping, conf={"batch_date": DAYS[1].isoformat()}).state == "success"
    assert _jobs(settings, DAYS[1]) == {"dim_patient": ("incremental", 3), "fact_appointment": ("incremental", 3),
                                        "dim_provider": ("full", 5), "fact_procedure": ("full", PATIENTS)}
    live = _live(settings)
    expected = _expected(mapping, source_dsn)
    keys = {e: {k for _, k in rows} for e, rows in expected.items()}
    # production got the inserts and the updates, value by value; the deleted appointment stays,
    # because an incremental file never soft-deletes
    assert live == {**keys, "appointments": keys["appointments"] | {str(gone)}}
    assert {"9001", "5"} <= live["patients"] and "90001" in live["appointments"]
    _assert_values(settings, expected)
    assert _snapshots(settings)["fact_appointment"] == ("incremental", DAYS[0], "SUCCESS", 1)
    listed = subprocess.run([sys.executable, "-m", "clientflow.cli", "snapshots", CLIENT],
                            capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr
    line = next(t for t in listed.stdout.splitlines() if t.startswith("fact_appointment"))
    assert line.split() == ["fact_appointment", "incremental", DAYS[1].isoformat(), "SUCCESS",
                            DAYS[0].isoformat(), "SUCCESS", DAYS[0].isoformat(), "1"]

    # day 3: a full refresh: the deleted appointment is soft-deleted, production equals the source
    _extract(settings, source_dsn, tmp_path, DAYS[2], "--full-refresh")
    assert test_client_dag(mapping, conf={"batch_date": DAYS[2].isoformat()}).state == "success"
    assert {t: m for t, (m, _) in _jobs(settings, DAYS[2]).items()} == dict.fromkeys(mapping.source_tables, "full")
    live = _live(settings)
    assert str(gone) not in live["appointments"]
    assert live == keys
    _assert_values(settings, expected)
    assert _snapshots(settings)["fact_appointment"] == ("full", DAYS[2], "SUCCESS", 0)
