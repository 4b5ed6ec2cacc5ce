"""The ehrlogic client end to end: sample database -> extractor -> S3 -> DAG -> production.

Runs the real extractor CLI, the real client DAG with dag.test(), real PostgreSQL, Redis, moto's
S3 server and an SMTP server. Asserts what users care about: production holds exactly the mapped
source rows, a replayed batch changes nothing, and a corrupted batch fails loudly with nothing lost.
"""

from __future__ import annotations

import os
from datetime import date
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from clientflow.mapping import load_all
from tests.support import e2e
from tests.support.mail import body_of, read_mail
from tests.support.oracle import expected_rows, postgres_reader

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]

DAY = date(2026, 11, 20)
PATIENTS = 300


@pytest.fixture(scope="module")
def mapping() -> Any:
    return next(m for m in load_all() if m.client == "ehrlogic")


@pytest.fixture(scope="module")
def source_dsn(admin_dsn: str) -> Any:
    from clientflow.sample import ehrlogic

    name = f"{os.environ['CLIENTFLOW_STAGING_DB'].removesuffix('_staging')}_ehrlogic_src"
    ehrlogic.create(admin_dsn, name, PATIENTS)
    yield psycopg.conninfo.make_conninfo(admin_dsn, dbname=name)
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))


def extract(source_dsn: str, settings: Any, day: date, run_id: str | None = None) -> str:
    info = psycopg.conninfo.conninfo_to_dict(source_dsn)
    url = f"postgresql://ehrlogic_reader@{info['host']}:{info.get('port', 5432)}/{info['dbname']}"
    return e2e.extract(settings, "ehrlogic", url, day, password="unused-with-trust-auth", run_id=run_id)


def production_snapshot(settings: Any) -> Any:
    return e2e.production_snapshot(settings, "ehrlogic")


def run_dag(mapping: Any, conf: dict[str, Any]) -> Any:
    from clientflow.dag_factory import build_client_dag

    return build_client_dag(mapping).test(run_conf=conf)


def ledger_events(settings: Any) -> list[tuple[str, str]]:
    return e2e.ledger_events(settings, "ehrlogic")


def expected(mapping: Any, source_dsn: str) -> Any:
    with psycopg.connect(source_dsn) as conn:
        return expected_rows(mapping, postgres_reader(conn))


def test_batch_reaches_production_exactly(mapping: Any, source_dsn: str, settings: Any,
                                          airflow_db: Path, smtp_mailbox: Path) -> None:
    run_id = extract(source_dsn, settings, DAY)

    dag_run = run_dag(mapping, {"batch_date": DAY.isoformat()})

    assert dag_run.state == "success"
    e2e.assert_production_equals(settings, "ehrlogic", expected(mapping, source_dsn))
    assert len(production_snapshot(settings)["patients"]) == PATIENTS
    assert len(production_snapshot(settings)["procedures"]) == PATIENTS
    states = [s for _, s in ledger_events(settings)]
    assert states == ["PENDING", "PROCESSING", "SUCCESS"]
    with psycopg.connect(settings.staging.conninfo()) as conn:
        files = conn.execute("select table_name, source_file from pipeline.jobs where client_name = 'ehrlogic' "
                             "order by 1").fetchall()
    assert [t for t, _ in files] == sorted(mapping.source_tables)
    assert all(f"run_id={run_id}/data.json" in f for _, f in files)


def test_replayed_batch_changes_nothing(mapping: Any, source_dsn: str, settings: Any, airflow_db: Path) -> None:
    before = production_snapshot(settings)

    again = run_dag(mapping, {"batch_date": DAY.isoformat()})
    # The client runs the extractor again "because it seemed stuck": same content, new run id.
    extract(source_dsn, settings, DAY, run_id="20261120T235959Z-rerun1")
    rerun = run_dag(mapping, {"batch_date": DAY.isoformat(), "run_id": "20261120T235959Z-rerun1"})

    assert again.state == "success" and rerun.state == "success"
    assert production_snapshot(settings) == before  # xmin included: no row was even rewritten
    states = [s for _, s in ledger_events(settings)]
    assert states[-2:] == ["DUPLICATE", "DUPLICATE"]
    assert states.count("SUCCESS") == 1


def test_corrupted_batch_fails_loudly_and_keeps_everything(
    mapping: Any, source_dsn: str, settings: Any, airflow_db: Path, smtp_mailbox: Path
) -> None:
    day = date(2026, 11, 21)
    run_id = extract(source_dsn, settings, day)
    s3 = settings.s3.client()
    key = f"client=ehrlogic/table=dim_patient/date={day:%Y%m%d}/run_id={run_id}/data.json"
    body = s3.get_object(Bucket=settings.s3.bucket, Key=key)["Body"].read()
    # An upload that "completed" with one byte flipped in the middle.
    middle = len(body) // 2
    s3.put_object(Bucket=settings.s3.bucket, Key=key,
                  Body=body[:middle] + (b"X" if body[middle:middle + 1] != b"X" else b"Y") + body[middle + 1:])
    before = production_snapshot(settings)
    mail_before = len(read_mail(smtp_mailbox))

    dag_run = run_dag(mapping, {"batch_date": day.isoformat()})

    assert dag_run.state == "failed"
    assert production_snapshot(settings) == before
    with psycopg.connect(settings.staging.conninfo()) as conn:
        state, error = conn.execute(
            "select state, error from pipeline.batches where batch_date = %s", (day,)).fetchone()
        raw_rows = conn.execute(
            "select count(*) from raw_ehrlogic.dim_patient b join pipeline.batches p using (ingestion_id) "
            "where p.batch_date = %s", (day,)).fetchone()[0]
        earlier = conn.execute(
            "select count(*) from raw_ehrlogic.dim_patient b join pipeline.batches p using (ingestion_id) "
            "where p.batch_date = %s", (DAY,)).fetchone()[0]
    assert state == "FAILED" and "checksum mismatch" in error
    assert raw_rows == 0 and earlier == PATIENTS
    mails = read_mail(smtp_mailbox)[mail_before:]
    assert len(mails) == 1
    text = body_of(mails[0])
    assert mails[0]["To"] == ", ".join(mapping.owners)
    for needle in ("ehrlogic", day.isoformat(), run_id, "table=dim_patient", "checksum mismatch",
                   "nothing was committed for this batch; earlier batches are untouched"):
        assert needle in text, needle
    with psycopg.connect(source_dsn) as conn:
        some_names = [r[0] for r in conn.execute("select pt_last_nm from dim_patient limit 20")]
        some_emails = [r[0] for r in conn.execute("select pt_email from dim_patient where pt_email is not null limit 20")]
    assert not any(v in text for v in some_names + some_emails)
    # The files stay in the bucket for a re-run.
    assert s3.head_object(Bucket=settings.s3.bucket, Key=key)
