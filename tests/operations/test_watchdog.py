"""The watchdog on real services (PostgreSQL, moto's S3, an SMTP server): a stale client, a backlog
in the bucket and failed batches left alone are each alerted once, however many checks see them,
and each ends with one recovery notice."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from clientflow.operations import alerts, watchdog
from tests.support.dags import run_test_dag, test_client_dag
from tests.support.mail import body_of, read_mail
from tests.support.practice import Practice, mapping_for, tables


def _send(recipients: Any, subject: str, body: str) -> None:
    alerts.send("smtp_default", recipients, subject, body)


def _mine(box: Path, before: int, client: str) -> list[tuple[str, str]]:
    return [(m["X-Clientflow-Alert"], m["Subject"]) for m in read_mail(box)[before:] if client in m["Subject"]]


def _age_ledger(settings: Any, client: str, by: timedelta) -> None:
    with psycopg.connect(settings.staging.conninfo()) as conn:
        conn.execute("update pipeline.batches set updated_at = updated_at - %s where client_name = %s", (by, client))


def test_schedule_interval_and_stale_limit() -> None:
    assert watchdog.schedule_interval("@daily") == timedelta(days=1)
    assert watchdog.schedule_interval("*/15 * * * *") == timedelta(minutes=15)
    assert watchdog.schedule_interval(None) is None
    assert watchdog.stale_limit(mapping_for("w")) == timedelta(hours=30)  # @daily + 6 h grace
    assert watchdog.stale_limit(mapping_for("w", alerts={"stale_after": "PT2H"})) == timedelta(hours=2)
    assert watchdog.stale_limit(mapping_for("w", schedule=None)) is None


@pytest.mark.e2e
def test_stale_and_failed_batches_alert_once_then_recover(settings: Any, airflow_db: Path,
                                                          smtp_mailbox: Path) -> None:
    mapping = mapping_for("watch_stale", alerts={"stale_after": "PT2H", "failed_after": "PT1H"})
    practice = Practice(settings, mapping.client)
    practice.write(date(2026, 8, 1), "r1", tables(3))
    assert test_client_dag(mapping, conf={"batch_date": "2026-08-01"}).state == "success"
    before = len(read_mail(smtp_mailbox))
    assert watchdog.watch(settings, [mapping], _send) == []  # fresh: nothing to say

    _age_ledger(settings, mapping.client, timedelta(hours=3))
    practice.write(date(2026, 8, 2), "r1", tables(3), corrupt=("person",))
    assert test_client_dag(mapping, conf={"batch_date": "2026-08-02"}).state == "failed"
    failed_mails = len(_mine(smtp_mailbox, before, mapping.client))  # the batch's own failure email
    now = datetime.now(UTC)
    said = watchdog.watch(settings, [mapping], _send, now=now)
    assert said == ["watch_stale: stale alert sent (newest promoted batch 3.0 h ago; the limit is 2.0 h)"]
    said = watchdog.watch(settings, [mapping], _send, now=now + timedelta(hours=2))  # the failure is old now
    assert [s.split(" (")[0] for s in said] == ["watch_stale: failed_unreprocessed alert sent"]
    for minutes in (15, 30, 45):  # later checks see the same conditions: no more mail
        assert watchdog.watch(settings, [mapping], _send, now=now + timedelta(hours=2, minutes=minutes)) == []
    mails = _mine(smtp_mailbox, before, mapping.client)[failed_mails:]
    assert mails == [("ALERT", "[clientflow] ALERT watch_stale: no fresh data"),
                     ("ALERT", "[clientflow] ALERT watch_stale: failed batches left unprocessed")]
    stale_body = body_of(read_mail(smtp_mailbox, "ALERT")[-2])
    assert "docs/runbook.md#stale-client" in stale_body and "newest promoted batch 3.0 h ago" in stale_body

    practice.write(date(2026, 8, 2), "r2", tables(3))  # the client re-sends the failed date, good this time
    assert test_client_dag(mapping, conf={"batch_date": "2026-08-02", "run_id": "r2"}).state == "success"
    with psycopg.connect(settings.staging.conninfo()) as conn:  # the failed run of that date stays FAILED:
        conn.execute("update pipeline.batches set state = 'SUCCESS' where client_name = %s and run_id = 'r1' "
                     "and batch_date = '2026-08-02'", (mapping.client,))  # a person reprocessed it
    said = watchdog.watch(settings, [mapping], _send)
    assert sorted(said) == ["watch_stale: failed_unreprocessed recovered", "watch_stale: stale recovered"]
    assert watchdog.watch(settings, [mapping], _send) == []
    recovered = [s for k, s in _mine(smtp_mailbox, before, mapping.client) if k == "RECOVERED"]
    assert sorted(recovered) == ["[clientflow] RECOVERED watch_stale: failed batches left unprocessed",
                                 "[clientflow] RECOVERED watch_stale: no fresh data"]


def test_backlog_in_the_bucket_alerts_once(settings: Any, smtp_mailbox: Path) -> None:
    mapping = mapping_for("watch_backlog", schedule=None, alerts={"backlog_after": "PT30M", "incomplete_after": "PT6H"})
    practice = Practice(settings, mapping.client)
    today = datetime.now(UTC).date()
    practice.write(today, "r1", tables(3))
    practice.write(today - timedelta(days=1), "r1", tables(3), skip_manifest=("visit",))  # incomplete: not a backlog
    before = len(read_mail(smtp_mailbox))
    now = datetime.now(UTC)
    assert watchdog.watch(settings, [mapping], _send, now=now) == []  # waiting 0 min: not yet
    said = watchdog.watch(settings, [mapping], _send, now=now + timedelta(hours=1))
    assert said == [f"watch_backlog: backlog alert sent (1 complete batch(es) waiting in the bucket longer than "
                    f"30 min, unseen by the ledger; oldest {today} run r1)"]
    assert watchdog.watch(settings, [mapping], _send, now=now + timedelta(hours=2)) == []
    assert _mine(smtp_mailbox, before, mapping.client) == [
        ("ALERT", "[clientflow] ALERT watch_backlog: batches waiting unprocessed")]


def test_an_upload_left_incomplete_alerts_once_and_recovers_when_the_retry_arrives(settings: Any,
                                                                                   smtp_mailbox: Path) -> None:
    mapping = mapping_for("watch_partial", schedule=None, alerts={"incomplete_after": "PT1H", "backlog_after": "PT12H"})
    practice = Practice(settings, mapping.client)
    day = datetime.now(UTC).date() - timedelta(days=1)
    practice.write(day, "r1", tables(3), skip_manifest=("visit",))  # the extractor died before this manifest
    before = len(read_mail(smtp_mailbox))
    now = datetime.now(UTC)
    assert watchdog.watch(settings, [mapping], _send, now=now) == []  # may still be uploading
    said = watchdog.watch(settings, [mapping], _send, now=now + timedelta(hours=2))
    assert said == [f"watch_partial: incomplete alert sent (1 upload(s) incomplete for longer than 1.0 h; "
                    f"oldest {day} run r1, missing visit/manifest.json)"]
    assert watchdog.watch(settings, [mapping], _send, now=now + timedelta(hours=3)) == []  # once per incident
    practice.write(day, "r2", tables(3))  # the client's finished retry supersedes the cut-off run
    said = watchdog.watch(settings, [mapping], _send, now=now + timedelta(hours=4))
    assert "watch_partial: incomplete recovered" in said
    mails = _mine(smtp_mailbox, before, mapping.client)
    assert mails[0] == ("ALERT", "[clientflow] ALERT watch_partial: uploads left incomplete")
    assert "docs/runbook.md#incomplete-upload" in body_of(read_mail(smtp_mailbox)[before])
    assert [kind for kind, _ in mails].count("ALERT") == 1 and mails[-1][0] == "RECOVERED"


def test_a_batch_left_processing_alerts_once_and_recovers_when_the_next_run_settles_it(settings: Any,
                                                                                     smtp_mailbox: Path) -> None:
    """A worker killed after dbt, its failure callback never run: the batch stays PROCESSING until a
    run of the client settles it; the watchdog says so once, and recovers once it is settled."""
    from clientflow import pipeline
    from clientflow.operations import locks
    from tests.support.practice import run_batch
    from tests.support.transform import transform

    mapping = mapping_for("watch_stuck", schedule=None, alerts={"stuck_after": "PT2H", "backlog_after": "PT12H",
                                                                "failed_after": "PT48H"})
    practice = Practice(settings, mapping.client)
    today = datetime.now(UTC).date()
    batch = pipeline.ingest(settings, mapping, practice.write(today - timedelta(days=1), "r1", tables(3)),
                            airflow_run_id="manual__killed")
    transform(settings, mapping, batch)
    locks.release(settings.redis, batch.require_lock())  # as the lock's timeout would
    before = len(read_mail(smtp_mailbox))
    now = datetime.now(UTC)
    assert watchdog.watch(settings, [mapping], _send, now=now) == []  # may still be running
    said = watchdog.watch(settings, [mapping], _send, now=now + timedelta(hours=3))
    assert [s.split(" (")[0] for s in said] == ["watch_stuck: stuck alert sent"]
    assert "1 batch(es) PENDING or PROCESSING, unchanged for longer than 2.0 h" in said[0]
    assert watchdog.watch(settings, [mapping], _send, now=now + timedelta(hours=4)) == []  # once per incident

    run_batch(settings, mapping, practice.write(today, "r1", tables(3, "next")))  # settles the stuck one first
    said = watchdog.watch(settings, [mapping], _send, now=now + timedelta(hours=5))
    assert said == ["watch_stuck: stuck recovered"]
    mails = _mine(smtp_mailbox, before, mapping.client)
    assert mails == [("ALERT", "[clientflow] ALERT watch_stuck: batches stuck in flight"),
                     ("RECOVERED", "[clientflow] RECOVERED watch_stuck: batches stuck in flight")]
    assert "docs/runbook.md#stuck-batch" in body_of(read_mail(smtp_mailbox)[before])


def test_an_alert_that_cannot_be_sent_is_tried_again_and_costs_no_other_client(settings: Any,
                                                                              smtp_mailbox: Path) -> None:
    first, second = (mapping_for(c, alerts={"stale_after": "PT1H"}) for c in ("watch_unsent", "watch_sent"))
    sent: list[str] = []

    def flaky(recipients: Any, subject: str, body: str) -> None:
        if "watch_unsent" in subject:
            raise ConnectionRefusedError("smtp down")
        sent.append(subject)

    with pytest.raises(watchdog.WatchdogIncomplete, match="could not check 1 client.*: watch_unsent$"):
        watchdog.watch(settings, [first, second], flaky)
    assert sent == ["[clientflow] ALERT watch_sent: no fresh data"]
    said = watchdog.watch(settings, [first, second], lambda r, s, b: sent.append(s))  # the mail server is back
    assert [s.split(" (")[0] for s in said] == ["watch_unsent: stale alert sent"]
    assert sent[-1] == "[clientflow] ALERT watch_unsent: no fresh data" and len(sent) == 2


@pytest.mark.e2e
def test_the_watchdog_dag_checks_every_client_mapping(settings: Any, airflow_db: Path, smtp_mailbox: Path) -> None:
    from clientflow.dag_factory import build_watchdog_dag
    from clientflow.mapping import mapping_files

    before = len(read_mail(smtp_mailbox))
    dag_run = run_test_dag(build_watchdog_dag())
    assert dag_run.state == "success"
    said = dag_run.get_task_instance("watch").xcom_pull(task_ids="watch")
    assert len(read_mail(smtp_mailbox)) - before == len(said)
    assert all(line.split(":")[0] in {p.stem for p in mapping_files()} for line in said)
    assert run_test_dag(build_watchdog_dag()).get_task_instance("watch").xcom_pull(task_ids="watch") == []
