"""A value the pipeline refuses never reaches a task log, the ledger or the failure email.

Two ways a value is refused inside the transform, both run through the client DAG with
dag.test() on real PostgreSQL, Redis, S3 and SMTP:

- the staging models refuse it (a date no format reads): it is recorded in pipeline.rejects by
  row, column and rule, and the batch stops at the rejects gate;
- PostgreSQL refuses it inside dbt (a CHECK that dummy production has and the staging models do
  not know of, the way a production change made outside the project would be): PostgreSQL quotes
  the row in its message ('Failing row contains (...)'), dbt prints it, Cosmos copies dbt's
  output into the task log; the scrubber removes it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.support.dags import test_client_dag
from tests.support.mail import body_of, read_mail
from tests.support.practice import Practice, mapping_for, production_rows, tables

SECRET = "Zelmira-Quocknell"  # stands for a patient's value


@pytest.fixture
def unknown_check(settings: Any) -> Iterator[None]:
    """A CHECK on dummy production the declaration does not have (only for new rows: NOT VALID)."""
    with psycopg.connect(settings.staging.conninfo()) as conn:
        conn.execute("alter table practice.patients add constraint outside_rule "
                     "check (last_name not like 'Zelmira%') not valid")
    yield
    with psycopg.connect(settings.staging.conninfo()) as conn:
        conn.execute("alter table practice.patients drop constraint outside_rule")


def _run_and_read(settings: Any, client: str, data: dict[str, Any], smtp_mailbox: Path,
                  caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]) -> tuple[Any, str, list[Any]]:
    mapping = mapping_for(client)
    Practice(settings, mapping.client).write(date(2026, 9, 1), "r1", data)
    mail_before = len(read_mail(smtp_mailbox))
    with caplog.at_level(logging.DEBUG):
        dag_run = test_client_dag(mapping, conf={"batch_date": "2026-09-01"})
    out, err = capfd.readouterr()  # task logs reach stdout (structlog) and the logging module
    logged = "\n".join([out, err, *(record.getMessage() for record in caplog.records)])
    return dag_run, logged, read_mail(smtp_mailbox)[mail_before:]


def _ledger_and_rejects(settings: Any, client: str) -> str:
    with psycopg.connect(settings.staging.conninfo()) as conn:
        rows = conn.execute(
            "select b.error, e.detail from pipeline.batches b join pipeline.batch_events e using (ingestion_id) "
            "where b.client_name = %s", (client,)).fetchall()
        rejects = conn.execute("select * from pipeline.rejects where client_name = %s", (client,)).fetchall()
    return repr(rows) + repr(rejects)


def test_a_refused_value_is_recorded_by_row_and_rule_only(settings: Any, airflow_db: Path, smtp_mailbox: Path,
                                                          caplog: pytest.LogCaptureFixture,
                                                          capfd: pytest.CaptureFixture[str]) -> None:
    data = tables(3)
    data["person"][1]["patient_dob"] = f"born {SECRET}"
    dag_run, logged, mails = _run_and_read(settings, "privacy_rejects", data, smtp_mailbox, caplog, capfd)

    assert dag_run.state == "failed"
    assert production_rows(settings, "privacy_rejects", "patients") == {}
    assert "gate rejects: person: 1 of 3 rows refused" in logged and "date_of_birth date_format" in logged
    with psycopg.connect(settings.staging.conninfo()) as conn:
        assert conn.execute("select table_name, source_row, column_name, rule from pipeline.rejects "
                            "where client_name = %s order by 1", ("privacy_rejects",)).fetchall() == [
            ("person", 2, "date_of_birth", "date_format"),
            ("visit", 2, "patient_id", "parent_missing"),  # that patient's appointment: its parent is refused
        ]
    assert len(mails) == 1
    for text in (logged, body_of(mails[0]), _ledger_and_rejects(settings, "privacy_rejects")):
        assert SECRET not in text


def test_a_value_postgresql_refuses_stays_out_of_logs_and_email(settings: Any, airflow_db: Path, smtp_mailbox: Path,
                                                                caplog: pytest.LogCaptureFixture,
                                                                capfd: pytest.CaptureFixture[str],
                                                                unknown_check: None) -> None:
    data = tables(3)
    data["person"][1]["pt_last"] = SECRET
    dag_run, logged, mails = _run_and_read(settings, "privacy_check", data, smtp_mailbox, caplog, capfd)

    assert dag_run.state == "failed"
    assert production_rows(settings, "privacy_check", "patients") == {}
    assert "violates check constraint" in logged  # on-call still learns what kind of value was refused
    assert len(mails) == 1
    for text in (logged, body_of(mails[0]), _ledger_and_rejects(settings, "privacy_check")):
        assert SECRET not in text
    with psycopg.connect(settings.staging.conninfo()) as conn:  # the failed batch left nothing behind
        assert conn.execute("select count(*) from practice.patients where client_id = 'privacy_check'").fetchone() == (0,)
