"""Failure simulations on the running local stack (``make failure-suite``): Airflow's real scheduler,
triggerer and executor, the extractor binary uploading to moto's S3, bucket events, real
PostgreSQL and Redis. Each scenario injects one fault the way it happens (an upload cut off, a
file altered after its manifest, a re-run of the extractor, batches out of date order, a
PostgreSQL backend terminated in the middle of a COPY or of the promotion's transaction) and ends
with ``clientflow reconcile``: nothing lost, nothing duplicated.

Two clients of their own (EHR Logic's practice system under other names): ``failco`` with a small
source for the arrival faults, ``failbig`` with one large enough (150,000 patients, 450,000 rows)
that a load and a promotion last long enough to be cut.
"""

from __future__ import annotations

import subprocess
import time

import psycopg
import pytest

from tests.failure.stack import (
    BIG,
    BUCKET,
    INCOMPLETE_AFTER,
    LOCK_TIMEOUT,
    MAIL,
    PG,
    REDIS_PORT,
    SMALL,
    SOURCES,
    _airflow,
    _aws,
    _batches,
    _day,
    _extract,
    _failure_mails,
    _fingerprint,
    _meta,
    _production,
    _quietly,
    _reconciled,
    _settled,
    _source,
    _terminate,
    _tries,
    _trigger,
    _wait_state,
    _watchdog_once,
)
from tests.support.mail import body_of, read_mail

pytestmark = pytest.mark.failure


def test_an_upload_cut_off_mid_transfer_runs_nothing_and_its_finished_retry_runs_once() -> None:
    day = _day(13)
    runs_before = len(_meta("select 1 from dag_run where dag_id = %s", f"client_{SMALL}"))
    # The client's first attempt dies half way through the data file: no manifest is ever written.
    key = f"client={SMALL}/table=dim_patient/date={day:%Y%m%d}/run_id=cutoff/data.json"
    _aws("s3").put_object(Bucket=BUCKET, Key=key, Body=b'[{"pt_id": 1, "pt_first_nm": "Ad')
    time.sleep(30)  # longer than the triggerer's poll and a scheduler loop
    assert len(_meta("select 1 from dag_run where dag_id = %s", f"client_{SMALL}")) == runs_before
    assert _batches(SMALL, day) == []
    _extract(SMALL, day, "retried")  # the finished retry: its manifest's event starts the run
    _wait_state(SMALL, day, "SUCCESS")
    _settled(SMALL)
    assert _batches(SMALL, day) == [("retried", "SUCCESS")]
    with psycopg.connect(f"{PG}/clientflow_staging") as conn:
        events = [r[0] for r in conn.execute(
            "select e.state from pipeline.batch_events e join pipeline.batches b using (ingestion_id) "
            "where b.client_name = %s and b.batch_date = %s order by event_id", (SMALL, day))]
    assert events.count("SUCCESS") == 1, events
    _reconciled(SMALL)


def test_a_data_file_without_its_manifest_waits_and_after_its_deadline_alerts_once() -> None:
    day = _day(7)
    alerts_before = [m for m in read_mail(MAIL, "ALERT") if f"ALERT {SMALL}:" in m["Subject"]]
    key = f"client={SMALL}/table=dim_patient/date={day:%Y%m%d}/run_id=nomanifest/data.json"
    _aws("s3").put_object(Bucket=BUCKET, Key=key, Body=b"[]")
    _airflow("dags", "unpause", "clientflow_watchdog")
    _watchdog_once()  # within the deadline: nothing to say yet
    time.sleep(INCOMPLETE_AFTER + 5)
    _watchdog_once()
    _watchdog_once()  # the same incident: no second alert
    alerts = [m for m in read_mail(MAIL, "ALERT") if f"ALERT {SMALL}:" in m["Subject"]][len(alerts_before):]
    assert [m["Subject"] for m in alerts] == [f"[clientflow] ALERT {SMALL}: uploads left incomplete"], alerts
    assert f"{day} run nomanifest, missing" in body_of(alerts[0]) and "docs/runbook.md#incomplete-upload" in body_of(
        alerts[0])
    assert _batches(SMALL, day) == []  # the batch waits: nothing ran
    _reconciled(SMALL)


def test_data_altered_after_its_manifest_is_refused_with_one_alert() -> None:
    day = _day(12)
    before = _fingerprint(SMALL)
    key = f"client={SMALL}/table=dim_patient/date={day:%Y%m%d}/run_id=altered/data.json"
    with _quietly():
        _extract(SMALL, day, "altered")
        s3 = _aws("s3")
        body = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
        s3.put_object(Bucket=BUCKET, Key=key, Body=body.replace(b"1", b"2", 1))  # still JSON, another checksum
        _trigger(SMALL, day, "altered")
        _wait_state(SMALL, day, "FAILED")
        _settled(SMALL)
    time.sleep(20)  # the test event's run sweeps: a FAILED batch waits for a person, it is not retried
    _settled(SMALL)
    mails = _failure_mails(SMALL, day)
    assert len(mails) == 1, [m["Subject"] for m in mails]
    assert "checksum" in body_of(mails[0]) and key in body_of(mails[0])
    assert _fingerprint(SMALL) == before  # nothing committed
    _reconciled(SMALL)


def test_the_same_extraction_uploaded_twice_is_processed_once() -> None:
    day = _day(11)
    _extract(SMALL, day, "first")
    _wait_state(SMALL, day, "SUCCESS")
    _settled(SMALL)
    after_first = _fingerprint(SMALL)
    _extract(SMALL, day, "again")  # the extractor re-run on unchanged data: the same job ids
    time.sleep(15)
    _settled(SMALL)
    assert [s for _r, s in _batches(SMALL, day)] == ["SUCCESS"]
    assert _fingerprint(SMALL) == after_first  # not a row rewritten
    _reconciled(SMALL)


def test_batches_arriving_out_of_date_order_end_with_the_newest_values() -> None:
    older, newer = _day(10), _day(9)
    with _quietly():
        _extract(SMALL, older, "late")  # extracted on time, delivered after the next day's batch
        _source(SMALL, "update dim_patient set pt_last_nm = 'Newest' where pt_id = (select min(pt_id) from dim_patient)")
        _extract(SMALL, newer, "ontime")
        _trigger(SMALL, newer, "ontime")
        _wait_state(SMALL, newer, "SUCCESS")
        _settled(SMALL)  # its sweep may have run the late batch already: after it, as it arrived
        if not _batches(SMALL, older):
            _trigger(SMALL, older, "late")
        _wait_state(SMALL, older, "SUCCESS")
        _settled(SMALL)
    rows = _production(SMALL, "select last_name, source_batch_date from practice.patients where client_id = %s "
                              "and last_name = 'Newest'")
    assert rows == [("Newest", newer)], rows
    _reconciled(SMALL)


def test_postgres_killed_mid_copy_is_retried_and_promoted_exactly_once() -> None:
    day = _day(13)
    with _quietly():
        _extract(BIG, day, "big1")
        run = _trigger(BIG, day, "big1")
        killed = _terminate("clientflow_staging", "copy %raw%from stdin%")
        print(f"terminated the raw load's backend during: {killed}")
        _wait_state(BIG, day, "SUCCESS", timeout=900)
        _settled(BIG)
    assert _tries(BIG, run, "ingest") >= 2  # Airflow retried the load after the transient error
    counts = {r[0]: r[1] for r in _fingerprint(BIG)}
    assert counts["patients"] == SOURCES[BIG][1] and counts["appointments"] == 2 * SOURCES[BIG][1]
    _reconciled(BIG)


def test_a_promotion_killed_mid_transaction_leaves_production_as_it_was() -> None:
    day = _day(12)
    _source(BIG, "update dim_patient set pt_last_nm = pt_last_nm || '-2'")  # every patient changes
    with _quietly():
        _extract(BIG, day, "big2")
        before = _fingerprint(BIG)
        run = _trigger(BIG, day, "big2")
        killed = _terminate("clientflow_production", "copy %from stdin%")
        print(f"terminated the promotion's backend during: {killed}")
        assert _fingerprint(BIG) == before  # rolled back: production as it was, to the row version
        _wait_state(BIG, day, "SUCCESS", timeout=900)
        _settled(BIG)
    assert _tries(BIG, run, "promote") >= 2
    changed = _production(BIG, "select count(*) from practice.patients where client_id = %s and last_name like '%%-2'")
    assert changed == [(SOURCES[BIG][1],)]
    _reconciled(BIG)


def test_a_manual_run_and_a_backfill_of_the_same_batch_at_once_have_one_writer() -> None:
    day = _day(6)
    with _quietly():
        _extract(SMALL, day, "both")
        _trigger(SMALL, day, "both")
        _airflow("backfill", "create", "--dag-id", f"client_{SMALL}", "--from-date", day.isoformat(),
                 "--to-date", day.isoformat())
        _wait_state(SMALL, day, "SUCCESS")
        _settled(SMALL)
    with psycopg.connect(f"{PG}/clientflow_staging") as conn:
        events = [r[0] for r in conn.execute(
            "select e.state from pipeline.batch_events e join pipeline.batches b using (ingestion_id) "
            "where b.client_name = %s and b.batch_date = %s order by event_id", (SMALL, day))]
    assert events.count("SUCCESS") == 1 and events.count("PROCESSING") == 1, events  # one writer
    backfilled = _meta("select state from dag_run where dag_id = %s and run_type = 'backfill' and "
                       "logical_date::date = %s", f"client_{SMALL}", day)
    assert backfilled == [("success",)], backfilled  # the other run found the batch done: a DUPLICATE
    _reconciled(SMALL)


def test_redis_connections_killed_mid_load_cost_nothing() -> None:
    day = _day(11)
    _source(BIG, "update dim_patient set pt_last_nm = pt_last_nm || '-3' where pt_id % 100 = 0")
    with _quietly():
        _extract(BIG, day, "big3")
        _trigger(BIG, day, "big3")
        _terminate("clientflow_staging", "copy %raw%from stdin%", kill=False)
        killed = subprocess.run(["redis-cli", "-p", str(REDIS_PORT), "CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"],
                                capture_output=True, text=True, check=True).stdout.strip()
        print(f"killed {killed} Redis client connection(s) during the raw load")
        _wait_state(BIG, day, "SUCCESS", timeout=900)
        _settled(BIG)
    assert [s for _r, s in _batches(BIG, day)] == ["SUCCESS"]
    _reconciled(BIG)


def test_a_batch_outlasting_the_lock_timeout_keeps_its_lock_while_its_tasks_run() -> None:
    day = _day(10)
    _source(BIG, "update dim_patient set pt_last_nm = pt_last_nm || '-4' where pt_id % 10 = 0")
    with _quietly():
        _extract(BIG, day, "big4")
        run = _trigger(BIG, day, "big4")
        _wait_state(BIG, day, "SUCCESS", timeout=900)
        _settled(BIG)
    with psycopg.connect(f"{PG}/clientflow_staging") as conn:
        (began, ended) = conn.execute(
            "select min(e.at), max(e.at) filter (where e.state = 'SUCCESS') from pipeline.batch_events e "
            "join pipeline.batches b using (ingestion_id) where b.client_name = %s and b.batch_date = %s",
            (BIG, day)).fetchone()
    held = (ended - began).total_seconds()
    print(f"the batch held the client's lock {held:.0f} s with a lock timeout of {LOCK_TIMEOUT} s")
    assert held > LOCK_TIMEOUT
    tries = _meta("select task_id, try_number from task_instance where dag_id = %s and run_id = %s "
                  "and try_number > 1", f"client_{BIG}", run)
    assert tries == [], tries  # nothing lost the lock and had to try again
    _reconciled(BIG)
