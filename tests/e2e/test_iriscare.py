"""The iriscare client end to end: MariaDB practice database -> extractor binary -> S3 -> DAG ->
production, value by value.

A second client on another database, onboarded by its mapping file alone: other table and column
names, DATETIME in local time, TINYINT(1) booleans, DECIMAL fees, fees in cents, ENUM codes, a
patient table with several versions per patient (the latest by UpdatedOn wins), E.164 phones.
"""

from __future__ import annotations

import os
import uuid
from datetime import date
from pathlib import Path
from typing import Any

import psycopg
import pymysql
import pytest

from clientflow.mapping import load_all
from clientflow.sample import iriscare
from tests.support import e2e
from tests.support.oracle import expected_rows, mariadb_reader

pytestmark = pytest.mark.e2e

DAY = date(2026, 11, 24)
PATIENTS = 200
MARIADB_PORT = int(os.environ.get("CLIENTFLOW_MARIADB_PORT", "3306"))


@pytest.fixture(scope="module")
def mapping() -> Any:
    return next(m for m in load_all() if m.client == "iriscare")


@pytest.fixture(scope="module")
def source_db() -> Any:
    name = f"cf_iris_{uuid.uuid4().hex[:8]}"
    iriscare.create(name, PATIENTS, port=MARIADB_PORT)
    yield name
    conn = pymysql.connect(host="127.0.0.1", port=MARIADB_PORT, user="root", password="", autocommit=True)
    with conn.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
    conn.close()


def _expected(mapping: Any, source_db: str) -> Any:
    conn = pymysql.connect(host="127.0.0.1", port=MARIADB_PORT, user="root", password="", database=source_db)
    try:
        return expected_rows(mapping, mariadb_reader(conn))
    finally:
        conn.close()


def test_mariadb_client_reaches_production_value_by_value(mapping: Any, source_db: str, settings: Any,
                                                           airflow_db: Path) -> None:
    from clientflow.dag_factory import build_client_dag

    url = f"mysql://{iriscare.READER}@127.0.0.1:{MARIADB_PORT}/{source_db}"
    run_id = e2e.extract(settings, "iriscare", url, DAY, password=iriscare.READER_PASSWORD)

    dag_run = build_client_dag(mapping).test(run_conf={"batch_date": DAY.isoformat()})

    assert dag_run.state == "success"
    expected = _expected(mapping, source_db)
    e2e.assert_production_equals(settings, "iriscare", expected)
    sizes = iriscare.sizes(PATIENTS)
    assert {e: len(rows) for e, rows in expected.items()} == {
        "providers": sizes["doctors"], "patients": PATIENTS, "appointments": sizes["exams"],
        "procedures": sizes["lines"]}
    patients = e2e.production_snapshot(settings, "iriscare")["patients"]
    # patient 33 has two versions; the newer (a changed family name) is the one kept
    assert patients[("iriscare", "33")]["last_name"].endswith("-Moved")
    assert all(p["phone"] is None or p["phone"].startswith("+1") for p in patients.values())
    assert [s for _, s in e2e.ledger_events(settings, "iriscare")] == ["PENDING", "PROCESSING", "SUCCESS"]
    with psycopg.connect(settings.staging.conninfo()) as conn:
        collapsed = conn.execute("select count(*) from stg_iriscare.stg_patients where occurrence > 1").fetchone()
        files = conn.execute("select table_name from pipeline.jobs where client_name = 'iriscare' order by 1").fetchall()
    assert collapsed == (sizes["records"] - PATIENTS,)
    assert [t for (t,) in files] == sorted(mapping.source_tables)
    assert run_id
