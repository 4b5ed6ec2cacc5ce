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

import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from typing import Any

import psycopg
import pytest

from clientflow.operations import oncall
from tests.stack.test_bucket_events import BUCKET, PG, ROOT, S3_URL, _airflow, _aws, _stack_env
from tests.support.mail import body_of, read_mail

pytestmark = pytest.mark.failure

SMALL, BIG = "failco", "failbig"
SOURCES = {SMALL: ("stack_failure_small", 40), BIG: ("stack_failure_big", 150_000)}
MAPPINGS = ROOT / ".stack" / "failure-mappings"
MAIL = ROOT / ".stack" / "mail"
UI = "http://127.0.0.1:8080"
TODAY = datetime.now(UTC).date()
INCOMPLETE_AFTER = 60  # seconds an upload may lack a file before the watchdog alerts
LOCK_TIMEOUT = 12  # seconds a client's lock outlives its last renewal, on this suite's stack


def _day(days_ago: int) -> date:
    return TODAY - timedelta(days=days_ago)  # inside the sweep's window (14 days)


def _env() -> dict[str, str]:
    return {**_stack_env(), "CLIENTFLOW_MAPPINGS_DIR": str(MAPPINGS), "CLIENTFLOW_LOCK_TIMEOUT_SECONDS": str(LOCK_TIMEOUT)}


def _meta(query: str, *args: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(f"{PG}/clientflow_airflow") as meta:
        return meta.execute(query, args).fetchall()


def _batches(client: str, day: date) -> list[tuple[str, str]]:
    """(run id, state) of the client's batches of ``day`` in the ledger, oldest first."""
    with psycopg.connect(f"{PG}/clientflow_staging") as conn:
        return [(r[0], r[1]) for r in conn.execute(
            "select run_id, state from pipeline.batches where client_name = %s and batch_date = %s "
            "order by created_at", (client, day))]


def _wait_state(client: str, day: date, state: str, timeout: float = 600) -> None:
    deadline = time.time() + timeout
    while not (found := _batches(client, day)) or found[-1][1] != state:
        assert time.time() < deadline, f"{client} {day}: {found}, not {state}, after {timeout} s"
        time.sleep(2)


def _settled(client: str, timeout: float = 600) -> None:
    deadline = time.time() + timeout
    while _meta("select 1 from dag_run where dag_id = %s and state not in ('success', 'failed')",
                f"client_{client}"):
        assert time.time() < deadline, f"client_{client}'s runs did not end within {timeout} s"
        time.sleep(3)


@contextmanager
def _quietly() -> Iterator[None]:
    """Bucket notifications off: an upload starts nothing until a trigger (or a run's sweep) finds it.
    When they come back on, moto sends S3's test event, whose run sweeps the bucket."""
    s3 = _aws("s3")
    queues = s3.get_bucket_notification_configuration(Bucket=BUCKET).get("QueueConfigurations", [])
    s3.put_bucket_notification_configuration(Bucket=BUCKET, NotificationConfiguration={})
    try:
        yield
    finally:
        s3.put_bucket_notification_configuration(Bucket=BUCKET, NotificationConfiguration={"QueueConfigurations": queues})


def _extract(client: str, day: date, run_id: str) -> None:
    from tests.support.extractor import build_binary

    env = {**_stack_env(), "EXTRACTOR_DB_PASSWORD": "local-trust", "AWS_ACCESS_KEY_ID": "local-access-key",
           "AWS_SECRET_ACCESS_KEY": "local-secret-key", "AWS_DEFAULT_REGION": "us-east-1"}
    subprocess.run([str(build_binary()), "--source", f"postgresql://ehrlogic_reader@127.0.0.1:5432/{SOURCES[client][0]}",
                    "--client", client, "--date", day.isoformat(), "--run-id", run_id, "--output", f"s3://{BUCKET}",
                    "--endpoint-url", S3_URL], env=env, check=True, capture_output=True, timeout=900)


def _trigger(client: str, day: date, run_id: str) -> str:
    return oncall.trigger(UI, oncall.login(UI, "admin", "admin"), f"client_{client}",
                          {"batch_date": day.isoformat(), "run_id": run_id},
                          kind="failure_suite")


def _source(client: str, statement: str) -> None:
    with psycopg.connect(f"{PG}/{SOURCES[client][0]}", autocommit=True) as conn:
        conn.execute(statement)


def _production(client: str, query: str, *args: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(f"{PG}/clientflow_production") as conn:
        return conn.execute(query, (client, *args)).fetchall()


def _fingerprint(client: str) -> list[tuple[Any, ...]]:
    """Every production row of the client, by entity: count and a hash of the rows with their versions."""
    return [row for name in ("providers", "patients", "appointments", "procedures") for row in _production(
        client, f"select '{name}', count(*), md5(coalesce(string_agg(t::text || x.v, ',' order by t::text), '')) "  # noqa: S608
                f"from practice.{name} t cross join lateral (select t.xmin::text as v) x where client_id = %s")]


def _reconciled(client: str) -> str:
    done = subprocess.run([str(ROOT / ".venv" / "bin" / "clientflow"), "reconcile", client], cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "nothing lost, nothing duplicated" in done.stdout
    return done.stdout


def _failure_mails(client: str, day: date) -> list[Any]:
    return [m for m in read_mail(MAIL, "FAILED") if f"FAILED {client} batch {day}" in m["Subject"]]


def _terminate(database: str, pattern: str, timeout: float = 300, *, kill: bool = True) -> str:
    """Terminate the first backend of ``database`` whose query matches ``pattern`` (polled every
    50 ms; with ``kill=False`` only wait for it); the query it was running."""
    deadline = time.time() + timeout
    with psycopg.connect(f"{PG}/postgres", autocommit=True) as admin:
        while time.time() < deadline:
            row = admin.execute("select pid, left(query, 80) from pg_stat_activity where datname = %s and "
                                "pid <> pg_backend_pid() and state = 'active' and query ilike %s limit 1",
                                (database, pattern)).fetchone()
            if row:
                if kill:
                    admin.execute("select pg_terminate_backend(%s)", (row[0],))
                return str(row[1])
            time.sleep(0.05)
    raise AssertionError(f"no backend of {database} ran {pattern!r} within {timeout} s")


def _tries(client: str, airflow_run_id: str, task_id: str) -> int:
    rows = _meta("select try_number from task_instance where dag_id = %s and run_id = %s and task_id = %s",
                 f"client_{client}", airflow_run_id, task_id)
    return int(rows[0][0]) if rows else 0


@pytest.fixture(scope="module", autouse=True)
def stack() -> None:
    shutil.rmtree(MAPPINGS, ignore_errors=True)
    MAPPINGS.mkdir(parents=True)
    text = (ROOT / "include" / "mappings" / "ehrlogic.yaml").read_text(encoding="utf-8")
    for client in (SMALL, BIG):
        (MAPPINGS / f"{client}.yaml").write_text(text.replace("client: ehrlogic", f"client: {client}")
                                                 + f"alerts:\n  incomplete_after: PT{INCOMPLETE_AFTER}S\n", encoding="utf-8")
    for command in ("down", "up"):
        subprocess.run([str(ROOT / "scripts" / "stack.sh"), command], cwd=ROOT, env=_env(), check=True)
    from bench.bench_e2e import reset_client
    from clientflow.sample import ehrlogic

    for client, (database, patients) in SOURCES.items():
        reset_client(client)
        ehrlogic.create(f"{PG}/postgres", database, patients)
    deadline = time.time() + 240
    for client in (SMALL, BIG):
        while not _meta("select 1 from dag where dag_id = %s", f"client_{client}"):
            assert time.time() < deadline, f"client_{client} did not appear"
            time.sleep(3)
        _airflow("dags", "unpause", f"client_{client}")
    time.sleep(20)  # today's scheduled runs (no batch) start, sweep an empty bucket and end
    for client in (SMALL, BIG):
        _settled(client)


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


def _watchdog_once() -> None:
    before = len(_meta("select 1 from dag_run where dag_id = 'clientflow_watchdog'"))
    _airflow("dags", "trigger", "clientflow_watchdog")
    deadline = time.time() + 300
    while True:
        runs = _meta("select state from dag_run where dag_id = 'clientflow_watchdog' order by id")
        if len(runs) > before and all(r[0] in ("success", "failed") for r in runs):
            assert runs[-1][0] == "success", runs
            return
        assert time.time() < deadline, f"the watchdog's run did not end: {runs}"
        time.sleep(3)


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
        killed = subprocess.run(["redis-cli", "-p", "6379", "CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"],
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
