"""A value PostgreSQL refuses inside dbt never reaches the task log or the failure email.

PostgreSQL quotes the value in its message ('invalid input syntax for type timestamp: "..."',
'Failing row contains (...)'); dbt prints that message and Cosmos copies dbt's output into the
Airflow task log. The client DAG runs with dag.test() on real PostgreSQL, Redis, S3 and SMTP.
"""

from __future__ import annotations

import logging
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from tests.support.dags import test_client_dag
from tests.support.mail import read_mail
from tests.support.practice import Practice, mapping_for, production_rows, tables

SECRET = "Zelmira-Quocknell"  # stands for a patient's value


@pytest.mark.parametrize(("case", "table", "patch", "error"), [
    # A date of birth that no format reads: the staging model refuses the value, and the test of
    # refused values fails the batch (it names the model, counts rows, never shows a value).
    ("refused", "person", {"patient_dob": f"born {SECRET}"}, "no_rejected_values_stg_patients"),
    # An appointment of a patient the batch does not hold: dummy production's foreign key
    # refuses the merge, and PostgreSQL's message quotes the key.
    ("foreign_key", "visit", {"pt_id": SECRET}, "violates foreign key constraint"),
])
def test_refused_value_stays_out_of_logs_and_email(
    settings: Any, airflow_db: Path, smtp_mailbox: Path, caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str], case: str, table: str, patch: dict[str, str], error: str,
) -> None:
    mapping = mapping_for(f"privacy_{case}")
    data = tables(3)
    data[table][1].update(patch)
    Practice(settings, mapping.client).write(date(2026, 9, 1), "r1", data)
    mail_before = len(read_mail(smtp_mailbox))

    with caplog.at_level(logging.DEBUG):
        dag_run = test_client_dag(mapping, conf={"batch_date": "2026-09-01"})

    assert dag_run.state == "failed"
    assert production_rows(settings, mapping.client, "patients") == {}
    # Task logs reach stdout (structlog) and the logging module; both are read.
    out, err = capfd.readouterr()
    logged = "\n".join([out, err, *(record.getMessage() for record in caplog.records)])
    assert error in logged  # on-call still learns what kind of value was refused, and where
    assert SECRET not in logged
    mails = read_mail(smtp_mailbox)[mail_before:]
    assert len(mails) == 1
    assert SECRET not in mails[0].get_payload(decode=True).decode()
