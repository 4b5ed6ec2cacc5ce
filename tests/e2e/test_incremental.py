"""Incremental extraction end to end, from a PostgreSQL source (the ehrlogic sample) and a MariaDB
source (the iriscare sample): the real extractor binary with a state file and an ``[incremental]``
cursor on the patients and appointments tables, and the client's DAG.

Day 1 is a full snapshot (no state yet). Between day 1 and day 2 the source inserts, updates and
deletes; day 2's batch carries only the changed patients and appointments (and, the window's start
being inclusive, the one row at each table's previous high mark), while the two other tables stay
full snapshots. Production gets the inserts and updates value by value, and the deleted
appointment stays, because an incremental file never soft-deletes (its procedures go: they come
in a full snapshot). Day 3 is a ``--full-refresh``: the deleted appointment is soft-deleted, and
production's live rows equal the source, value by value.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import psycopg
import pymysql
import pytest
from psycopg import sql

from clientflow.db import set_tenant
from clientflow.mapping import ClientMapping, load_all
from tests.support import e2e
from tests.support.dags import test_client_dag
from tests.support.oracle import expected_rows, mariadb_reader, postgres_reader

pytestmark = pytest.mark.e2e

PATIENTS = 120
MARIADB_PORT = int(os.environ.get("CLIENTFLOW_MARIADB_PORT", "3306"))
DAYS = (date(2026, 10, 1), date(2026, 10, 2), date(2026, 10, 3))


@dataclass
class Source:
    """One client database, and how the scenario changes it."""

    client: str  # the sample's mapping under a client name of its own: a ledger of its own
    sample: str
    url: str
    password: str
    cursors: dict[str, str]  # incremental table -> its cursor column
    full_tables: dict[str, int]  # the tables that stay full snapshots -> their rows on day 2
    rows: Callable[[], AbstractContextManager[Callable[[str], Iterator[dict[str, Any]]]]]  # the oracle's reader
    change: Callable[[], int]  # inserts, updates, deletes; returns the deleted appointment's id


def _postgres(admin_dsn: str) -> Iterator[Source]:
    from clientflow.sample import ehrlogic

    name = f"{os.environ['CLIENTFLOW_STAGING_DB'].removesuffix('_staging')}_ehrinc_src"
    ehrlogic.create(admin_dsn, name, PATIENTS)
    dsn = psycopg.conninfo.make_conninfo(admin_dsn, dbname=name)
    cursors = {"dim_patient": "updated_at", "fact_appointment": "updated_at"}
    with psycopg.connect(dsn) as conn:
        for table, key in zip(cursors, ("pt_id", "appt_id"), strict=True):
            # one second apart: the high mark is one row's, and each run re-reads only the rows at it
            conn.execute(sql.SQL("alter table {} add column updated_at timestamptz").format(sql.Identifier(table)))
            conn.execute(sql.SQL("update {} set updated_at = timestamptz '2026-09-01 00:00:00+00' + {} * interval '1 s'")
                         .format(sql.Identifier(table), sql.Identifier(key)))

    @contextmanager
    def rows() -> Iterator[Callable[[str], Iterator[dict[str, Any]]]]:
        with psycopg.connect(dsn) as conn:
            yield postgres_reader(conn)

    def change() -> int:
        with psycopg.connect(dsn) as conn:
            gone = 1
            conn.execute("delete from fact_procedure where appt_id = %s", (gone,))
            conn.execute("delete from fact_appointment where appt_id = %s", (gone,))
            conn.execute("update fact_appointment set appt_status = 'Completed', reason_txt = 'Follow-up', "
                         "updated_at = timestamptz '2026-10-01 15:00:00+00' where appt_id = 2")
            conn.execute("update dim_patient set pt_last_nm = 'Renamed', "
                         "updated_at = timestamptz '2026-10-01 16:00:00+00' where pt_id = 5")
            conn.execute("insert into dim_patient (pt_id, pt_last_nm, patient_dob, gender, updated_at) "
                         "values (9001, 'Newcomer', '1990-05-05', 'F', timestamptz '2026-10-01 17:00:00+00')")
            conn.execute("insert into fact_appointment (appt_id, pt_id, prov_id, appt_start, appt_len_min, "
                         "appt_status, updated_at) values (90001, 9001, 1, timestamptz '2026-10-05 09:00:00+00', 30, "
                         "'Booked', timestamptz '2026-10-01 17:30:00+00')")
            procedures = conn.execute("select count(*) from fact_procedure").fetchone()[0]
        source.full_tables["fact_procedure"] = procedures
        return gone

    info = psycopg.conninfo.conninfo_to_dict(dsn)
    source = Source("ehrinc", "ehrlogic",
                    f"postgresql://ehrlogic_reader@{info['host']}:{info.get('port', 5432)}/{info['dbname']}",
                    "unused-with-trust-auth", cursors, {"dim_provider": 5}, rows, change)
    yield source
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))


def _mariadb() -> Iterator[Source]:
    from clientflow.sample import iriscare

    name = f"cf_irisinc_{uuid.uuid4().hex[:8]}"
    counts = iriscare.create(name, PATIENTS, port=MARIADB_PORT)

    def connect() -> Any:
        return pymysql.connect(host="127.0.0.1", port=MARIADB_PORT, user="root", password="", database=name,
                               autocommit=True, charset="utf8mb4")

    conn = connect()
    with conn.cursor() as cur:
        cur.execute("SET time_zone = '+00:00'")
        # PatientRecords' own UpdatedOn is the cursor (a second apart per record); Exams gets one
        cur.execute("UPDATE PatientRecords SET UpdatedOn = TIMESTAMP '2026-09-01 00:00:00' + INTERVAL RecordID SECOND")
        cur.execute("ALTER TABLE Exams ADD COLUMN UpdatedAt DATETIME(6)")
        cur.execute("UPDATE Exams SET UpdatedAt = TIMESTAMP '2026-09-01 00:00:00' + INTERVAL ExamID SECOND")
    conn.close()

    @contextmanager
    def rows() -> Iterator[Callable[[str], Iterator[dict[str, Any]]]]:
        conn = connect()
        try:
            yield mariadb_reader(conn)
        finally:
            conn.close()

    def change() -> int:
        gone = 1
        conn = connect()
        with conn.cursor() as cur:
            cur.execute("DELETE FROM ExamLines WHERE ExamID = %s", (gone,))
            cur.execute("DELETE FROM Exams WHERE ExamID = %s", (gone,))
            cur.execute("UPDATE Exams SET StatusCode = 'CMP', UpdatedAt = '2026-10-01 15:00:00' WHERE ExamID = 2")
            # this client keeps every version of a patient: a new one for patient 5, and a new patient
            cur.execute("INSERT INTO PatientRecords SELECT 900001, PatientNo, GivenName, 'Renamed', BirthDate, SexCode, "
                        "EmailAddr, MobilePhone, PostCode, CreatedOn, '2026-10-01 16:00:00' FROM PatientRecords "
                        "WHERE PatientNo = 5 ORDER BY RecordID DESC LIMIT 1")
            cur.execute("INSERT INTO PatientRecords SELECT 900002, 9001, GivenName, 'Newcomer', BirthDate, SexCode, "
                        "EmailAddr, MobilePhone, PostCode, CreatedOn, '2026-10-01 17:00:00' FROM PatientRecords "
                        "WHERE RecordID = 1")
            cur.execute("INSERT INTO Exams SELECT 90001, 9001, DoctorID, ExamStart, LengthMins, 'SCH', VisitReason, "
                        "FeeAmount, '2026-10-01 17:30:00' FROM Exams WHERE ExamID = 4")
            cur.execute("SELECT COUNT(*) FROM ExamLines")
            source.full_tables["ExamLines"] = cur.fetchone()[0]
        conn.close()
        return gone

    source = Source("irisinc", "iriscare", f"mysql://{iriscare.READER}@127.0.0.1:{MARIADB_PORT}/{name}",
                    iriscare.READER_PASSWORD, {"PatientRecords": "UpdatedOn", "Exams": "UpdatedAt"},
                    {"Doctors": counts["doctors"]}, rows, change)
    yield source
    conn = pymysql.connect(host="127.0.0.1", port=MARIADB_PORT, user="root", password="", autocommit=True)
    with conn.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
    conn.close()


@pytest.fixture(params=["postgresql", "mariadb"])
def source(request: pytest.FixtureRequest, admin_dsn: str) -> Iterator[Source]:
    yield from (_postgres(admin_dsn) if request.param == "postgresql" else _mariadb())


def _mapping(source: Source) -> ClientMapping:
    sample = next(m for m in load_all() if m.client == source.sample)
    return ClientMapping.model_validate({**sample.model_dump(exclude_none=True), "client": source.client})


def _extract(settings: Any, source: Source, tmp: Path, day: date, *extra: str) -> str:
    config = tmp / "extract.toml"
    config.write_text(f'state_file = "{tmp / "state.json"}"\n\n[incremental]\n'
                      + "".join(f'{t} = "{c}"\n' for t, c in source.cursors.items()), encoding="utf-8")
    return e2e.extract(settings, source.client, source.url, day, password=source.password,
                       extra=("--config", str(config), *extra))


def _live(settings: Any, client: str) -> dict[str, set[Any]]:
    """entity -> keys of production's rows that are not soft-deleted."""
    out = {}
    with psycopg.connect(settings.production.conninfo()) as conn:
        set_tenant(conn, client, local=False)  # production's row-level security
        for entity, key in (("patients", "patient_id"), ("appointments", "appointment_id"),
                            ("procedures", "procedure_id"), ("providers", "provider_id")):
            out[entity] = {r[0] for r in conn.execute(sql.SQL(
                "select {} from practice.{} where client_id = %s and deleted_at is null").format(
                sql.Identifier(key), sql.Identifier(entity)), (client,))}
    return out


def _expected(mapping: ClientMapping, source: Source) -> Any:
    with source.rows() as read:
        return expected_rows(mapping, read)


def _assert_values(settings: Any, client: str, expected: Any) -> None:
    """Every source row is in production with the oracle's values."""
    production = e2e.production_snapshot(settings, client)
    for entity, rows in expected.items():
        for key, want in rows.items():
            assert {k: production[entity][key][k] for k in want} == want, (entity, key)


def _jobs(settings: Any, client: str, day: date) -> dict[str, tuple[str, int]]:
    with psycopg.connect(settings.staging.conninfo()) as conn:
        rows = conn.execute(
            "select j.table_name, j.extraction_mode, j.row_count from pipeline.jobs j join pipeline.batches b "
            "using (ingestion_id) where b.client_name = %s and b.batch_date = %s", (client, day)).fetchall()
    return {r[0]: (r[1], r[2]) for r in rows}


def _snapshots(settings: Any, client: str) -> dict[str, tuple[Any, ...]]:
    with psycopg.connect(settings.staging.conninfo()) as conn:
        rows = conn.execute(
            "select table_name, last_mode, last_full_batch_date, last_full_state, incremental_since_full "
            "from pipeline.table_snapshots where client_name = %s", (client,)).fetchall()
    return {r[0]: tuple(r[1:]) for r in rows}


def test_incremental_batches_upsert_and_only_full_snapshots_delete(
    source: Source, settings: Any, airflow_db: Path, tmp_path: Path
) -> None:
    mapping, client = _mapping(source), source.client
    appointments = next(t for t in source.cursors if mapping.tables[t].entity == "appointments")

    # day 1: no state yet, so every table is a full snapshot
    _extract(settings, source, tmp_path, DAYS[0])
    assert test_client_dag(mapping, conf={"batch_date": DAYS[0].isoformat()}).state == "success"
    assert {t: m for t, (m, _) in _jobs(settings, client, DAYS[0]).items()} == dict.fromkeys(mapping.source_tables, "full")
    e2e.assert_production_equals(settings, client, _expected(mapping, source))

    gone = str(source.change())

    # day 2: the incremental tables carry their 2 changed rows and the one row at day 1's high mark
    _extract(settings, source, tmp_path, DAYS[1])
    assert test_client_dag(mapping, conf={"batch_date": DAYS[1].isoformat()}).state == "success"
    assert _jobs(settings, client, DAYS[1]) == {
        **{t: ("incremental", 3) for t in source.cursors}, **{t: ("full", n) for t, n in source.full_tables.items()}}
    live = _live(settings, client)
    expected = _expected(mapping, source)
    keys = {e: {k for _, k in rows} for e, rows in expected.items()}
    # production got the inserts and the updates, value by value; the deleted appointment stays,
    # because an incremental file never soft-deletes (its procedures, in a full snapshot, went)
    assert gone not in keys["appointments"]
    assert live == {**keys, "appointments": keys["appointments"] | {gone}}
    assert {"9001", "5"} <= live["patients"] and "90001" in live["appointments"]
    _assert_values(settings, client, expected)
    assert _snapshots(settings, client)[appointments] == ("incremental", DAYS[0], "SUCCESS", 1)
    listed = subprocess.run([sys.executable, "-m", "clientflow.cli", "snapshots", client],
                            capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr
    line = next(t for t in listed.stdout.splitlines() if t.startswith(appointments))
    assert line.split() == [appointments, "incremental", DAYS[1].isoformat(), "SUCCESS",
                            DAYS[0].isoformat(), "SUCCESS", DAYS[0].isoformat(), "1"]

    # day 3: a full refresh: the deleted appointment is soft-deleted, production equals the source
    _extract(settings, source, tmp_path, DAYS[2], "--full-refresh")
    assert test_client_dag(mapping, conf={"batch_date": DAYS[2].isoformat()}).state == "success"
    assert {t: m for t, (m, _) in _jobs(settings, client, DAYS[2]).items()} == dict.fromkeys(mapping.source_tables, "full")
    assert _live(settings, client) == keys
    _assert_values(settings, client, expected)
    assert _snapshots(settings, client)[appointments] == ("full", DAYS[2], "SUCCESS", 0)
