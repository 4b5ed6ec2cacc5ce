"""A value the pipeline refuses never reaches a task log, the ledger or the failure email.

Two ways a value is refused inside the transform, both run through the client DAG with
dag.test() on real PostgreSQL, Redis, S3 and SMTP:

- the staging models refuse it (a date no format reads): it is recorded in pipeline.rejects by
  row, column and rule, and the batch stops at the rejects gate;
- PostgreSQL refuses it inside dbt, by a rule dummy production has and the staging models do not
  know of (the way a production change made outside the project would be): a CHECK ('Failing row
  contains (...)'), a cast ('invalid input syntax for type integer: "..."'), a unique index and a
  foreign key ('Key (...)=(...)'). PostgreSQL quotes the value, dbt prints it, Cosmos copies dbt's
  output into the task log; the scrubber removes it. The task logs, the ledger, the XComs, the
  status page and the email hold none of it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from tests.support.dags import test_client_dag
from tests.support.mail import body_of, read_mail
from tests.support.practice import Practice, mapping_for, production_rows, tables

SECRET = "Zelmira-Quocknell"  # stands for a patient's value


# Rules dummy production has and the staging models do not know of, the way a change made outside
# the project would be; each makes PostgreSQL refuse the secret value with a message that quotes it.
OUTSIDE_RULES = {
    "check": (["alter table practice.patients add constraint outside_rule check (last_name not like 'Zelmira%') "
               "not valid"],
              ["alter table practice.patients drop constraint outside_rule"],
              "violates check constraint"),  # 'Failing row contains (...)'
    "cast": (["alter table practice.patients add constraint outside_cast check "
              "(client_id <> 'privacy_cast' or last_name::integer is not null) not valid"],
             ["alter table practice.patients drop constraint outside_cast"],
             "invalid input syntax for type integer"),  # '...: "<value>"'
    "unique": (["create unique index outside_unique on practice.patients (last_name) where client_id = 'privacy_unique'"],
               ["drop index practice.outside_unique"],
               "duplicate key value violates unique constraint"),  # 'Key (last_name)=(<value>) already exists.'
    "foreign_key": (["create table practice.outside_names (name text primary key)",
                     "alter table practice.patients add constraint outside_fk foreign key (last_name) "
                     "references practice.outside_names (name) not valid"],
                    ["alter table practice.patients drop constraint outside_fk", "drop table practice.outside_names"],
                    "violates foreign key constraint"),  # 'Key (last_name)=(<value>) is not present ...'
}


@pytest.fixture(params=sorted(OUTSIDE_RULES))
def outside_rule(request: pytest.FixtureRequest, settings: Any, admin_dsn: str,
                 staging_owner: str) -> Iterator[tuple[str, str]]:
    kind = request.param
    make, undo, message = OUTSIDE_RULES[kind]
    with psycopg.connect(staging_owner) as conn:
        for statement in make:
            conn.execute(statement)
    if kind == "foreign_key":  # dbt writes dummy production with per-row FK triggers off (replica):
        admin = psycopg.conninfo.make_conninfo(admin_dsn, dbname=settings.staging.dbname)
        with psycopg.connect(admin) as conn:  # this one fires anyway, as a production change might
            (trigger,) = conn.execute(
                "select tgname from pg_trigger where tgrelid = 'practice.patients'::regclass and tgconstraint = "
                "(select oid from pg_constraint where conname = 'outside_fk') and tgtype & 4 = 4").fetchone()
            conn.execute(sql.SQL("alter table practice.patients enable always trigger {}").format(
                sql.Identifier(trigger)))
    yield kind, message
    with psycopg.connect(staging_owner) as conn:
        for statement in undo:
            conn.execute(statement)


def _run_and_read(settings: Any, client: str, data: dict[str, Any], smtp_mailbox: Path,
                  caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]) -> tuple[Any, str, list[Any]]:
    mapping = mapping_for(client)
    Practice(settings, mapping.client).write(date(2026, 9, 1), "r1", data)
    mail_before = len(read_mail(smtp_mailbox))
    environ_before = dict(os.environ)
    with caplog.at_level(logging.DEBUG):
        dag_run = test_client_dag(mapping, conf={"batch_date": "2026-09-01"})
    # dbt's environment (the transformer's password, the batch's PGOPTIONS) stays in its task;
    # Airflow's own context variables (AIRFLOW_CTX_*) name the DAG run only
    changed = {k for k in {*os.environ, *environ_before} if os.environ.get(k) != environ_before.get(k)}
    assert {k for k in changed if not k.startswith("AIRFLOW_CTX_")} == set()
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


def _xcoms_and_status_page(settings: Any, client: str) -> str:
    """Every XCom of the client's DAG runs, and the status page's JSON and HTML of the client."""
    from airflow.utils.session import create_session
    from fastapi.testclient import TestClient
    from pydantic import SecretStr
    from sqlalchemy import text

    from clientflow.operations.status_page import create_app

    with create_session() as session:
        xcoms = session.execute(text("select value from xcom where dag_id = :dag"), {"dag": f"client_{client}"}).all()
    role = settings.staging.model_copy(update={"user": "clientflow_status", "password": SecretStr("local-only-status")})
    page = TestClient(create_app(database=lambda: role, auth=lambda: None))
    with psycopg.connect(settings.staging.conninfo()) as conn:
        (batch,) = conn.execute("select ingestion_id from pipeline.batches where client_name = %s", (client,)).fetchone()
    shown = [page.get(path).text for path in (f"/api/clients/{client}", f"/clients/{client}", f"/batches/{batch}",
                                             f"/api/batches/{batch}")]
    assert all(f"{client}" in text_ or batch in text_ for text_ in shown)
    return repr(xcoms) + "".join(shown)


def test_a_value_postgresql_refuses_stays_out_of_logs_xcoms_status_page_and_email(
        settings: Any, airflow_db: Path, smtp_mailbox: Path, caplog: pytest.LogCaptureFixture,
        capfd: pytest.CaptureFixture[str], outside_rule: tuple[str, str]) -> None:
    kind, message = outside_rule
    client = f"privacy_{kind}"
    data = tables(3)
    data["person"][1]["pt_last"] = SECRET
    if kind == "unique":
        data["person"][2]["pt_last"] = SECRET  # two rows with the same value: PostgreSQL quotes the key
    dag_run, logged, mails = _run_and_read(settings, client, data, smtp_mailbox, caplog, capfd)

    assert dag_run.state == "failed"
    assert production_rows(settings, client, "patients") == {}
    assert message in logged  # on-call still learns what kind of value was refused
    assert len(mails) == 1
    for where, text_ in (("task logs", logged), ("email", body_of(mails[0])),
                         ("ledger", _ledger_and_rejects(settings, client)),
                         ("xcoms and status page", _xcoms_and_status_page(settings, client))):
        assert SECRET not in text_, where
    with psycopg.connect(settings.staging.conninfo()) as conn:  # the failed batch left nothing behind
        assert conn.execute("select count(*) from practice.patients where client_id = %s", (client,)).fetchone() == (0,)
