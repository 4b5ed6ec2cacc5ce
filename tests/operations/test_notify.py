"""Alerts through Airflow's notifier interface, on real DAG runs and a real SMTP server: one failure
email per failed batch, one escalation per incident after N failures in a row, one recovery notice,
and a provider's notifier added in the mapping alone (the smtp provider's SmtpNotifier stands in
for Slack or PagerDuty: same interface, and its server is on loopback)."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any

import psycopg
import pytest

from clientflow.dag_factory import build_client_dag
from tests.support.dags import test_client_dag
from tests.support.mail import body_of, read_mail
from tests.support.practice import Practice, mapping_for, tables

pytestmark = pytest.mark.e2e
EXTRA = {"notifier": "airflow.providers.smtp.notifications.smtp.SmtpNotifier",
         "args": {"to": "pager@clientflow.example", "from_email": "clientflow@localhost",
                  "subject": "[pager] {{ dag.dag_id }} {{ ti.task_id }} failed",
                  "html_content": "run {{ run_id }}", "smtp_conn_id": "smtp_default"}}


def _incidents(settings: Any, client: str) -> list[tuple[str, bool]]:
    with psycopg.connect(settings.staging.conninfo()) as conn:
        return conn.execute("select kind, closed_at is not null from pipeline.incidents where client_name = %s "
                            "order by incident_id", (client,)).fetchall()


def test_failures_escalate_once_and_recover_once(settings: Any, airflow_db: Path, smtp_mailbox: Path) -> None:
    mapping = mapping_for("alerting", alerts={"escalate_after": 2, "escalation": ["lead@clientflow.example"],
                                             "notifiers": [EXTRA]})
    practice = Practice(settings, mapping.client)
    before = len(read_mail(smtp_mailbox))
    for n in (1, 2, 3):  # three batches refused at ingest (their data does not match the manifest)
        day = date(2026, 7, n)
        practice.write(day, "r1", tables(3, f"v{n}"), corrupt=("person",))
        assert test_client_dag(mapping, conf={"batch_date": day.isoformat()}).state == "failed"

    mails = read_mail(smtp_mailbox)[before:]
    failed = [m for m in mails if m["X-Clientflow-Alert"] == "FAILED"]
    escalated = [m for m in mails if m["X-Clientflow-Alert"] == "ESCALATED"]
    paged = [m for m in mails if m["Subject"].startswith("[pager]")]
    assert len(failed) == 3 and len(escalated) == 1 and len(paged) == 3
    assert all(m["To"] == "oncall@clientflow.example" for m in failed)
    assert escalated[0]["To"] == "lead@clientflow.example"
    assert "2 batches failed in a row" in body_of(escalated[0])
    assert "docs/runbook.md#failing-repeatedly" in body_of(escalated[0])
    assert paged[0]["Subject"] == "[pager] client_alerting ingest failed"
    first = body_of(failed[0])
    assert "docs/runbook.md#failed-batch" in first and "What was kept" in first
    assert "job " in failed[0]["Subject"] and "2026-07-01" in failed[0]["Subject"]
    assert _incidents(settings, mapping.client) == [("failing", False)]

    practice.write(date(2026, 7, 4), "r1", tables(3, "v4"))
    assert test_client_dag(mapping, conf={"batch_date": "2026-07-04"}).state == "success"
    recovered = read_mail(smtp_mailbox, "RECOVERED")
    recovered = [m for m in recovered if "alerting" in m["Subject"]]
    assert len(recovered) == 1
    assert set(recovered[0]["To"].split(", ")) == {"oncall@clientflow.example", "lead@clientflow.example"}
    assert _incidents(settings, mapping.client) == [("failing", True)]
    assert len(read_mail(smtp_mailbox)) == before + 3 + 1 + 3 + 1  # nothing else was sent
    with psycopg.connect(settings.staging.conninfo()) as conn:  # each stage's time, by the worker's clock
        stages = conn.execute(
            "select s.stage, s.outcome, s.finished_at >= s.started_at from pipeline.stage_runs s "
            "join pipeline.batches b using (ingestion_id) where b.client_name = %s and b.batch_date = '2026-07-04' "
            "order by s.started_at, s.stage_run_id", (mapping.client,)).fetchall()
        refused = conn.execute("select count(*) from pipeline.stage_runs where client_name = %s and stage = 'ingest' "
                               "and outcome = 'failed'", (mapping.client,)).fetchone()[0]
    assert stages == [("ingest", "success", True), ("transform", "success", True), ("validate", "success", True),
                      ("promote", "success", True)]
    assert refused == 3


def test_a_notifier_that_does_not_import_names_the_field() -> None:
    mapping = mapping_for("alerting_bad", alerts={"notifiers": [
        {"notifier": "airflow.providers.nonexistent.notifications.Pager", "args": {}}]})
    with pytest.raises(ValueError, match=r"alerts\.notifiers\[0\]\.notifier: cannot import"):
        build_client_dag(mapping)
    mapping = mapping_for("alerting_bad", alerts={"notifiers": [{"notifier": "clientflow.mapping.ClientMapping"}]})
    with pytest.raises(ValueError, match="is not an Airflow notifier"):
        build_client_dag(mapping)
