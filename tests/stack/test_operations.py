"""Operating the pipeline on the running local stack (``make test-stack``): Airflow's real scheduler
and triggerer, the SMTP server's Maildir (.stack/mail), the metrics server and Prometheus, the
status page inside the Airflow UI in headless Chromium, and ``airflow backfill create``.

The sample client ``ehrlogic``: one good batch, then three that fail (their data no longer match
their manifests), then a good one again. On-call gets one failure email per failed batch, one
escalation when the third fails in a row, and one recovery notice at the next promotion.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from typing import Any

import psycopg
import pytest

from clientflow.sample import ehrlogic
from tests.stack.test_bucket_events import (
    BUCKET,
    CLIENT,
    DAG,
    PG,
    ROOT,
    _airflow,
    _aws,
    _batch,
    _forget_dag,
    _quiesce,
    _stack_env,
    _unpause_and_watch,
    _wait_promoted,
)
from tests.support.mail import body_of, read_mail

pytestmark = pytest.mark.stack

SOURCE_DB = "stack_operations_source"
UI = "http://127.0.0.1:8080"
PROMETHEUS = "http://127.0.0.1:9090"
MAIL = ROOT / ".stack" / "mail"
ARTIFACTS = ROOT / "test-artifacts"
# Past dates inside the sweep's window (sweep_days: 14), so a run's sweep finds any batch whose
# bucket event was folded away (Airflow drops events that arrive while the DAG is at max_active_runs
# and its asset run is queued: docs/events.md).
TODAY = datetime.now(UTC).date()
GOOD, BAD, RECOVER = TODAY - timedelta(days=12), [TODAY - timedelta(days=11 - i) for i in range(3)], \
    TODAY - timedelta(days=8)
BACKFILL = [TODAY - timedelta(days=6 - i) for i in range(3)]  # the middle one has no files
BACKLOG = TODAY - timedelta(days=2)
# The sample mappings, except that a batch waiting a minute in the bucket is ehrlogic's backlog.
MAPPINGS = ROOT / ".stack" / "operations-mappings"
BACKLOG_AFTER = 90


def _mail(kind: str | None = None) -> list[Any]:
    return read_mail(MAIL, kind)


def _write_mappings() -> None:
    shutil.rmtree(MAPPINGS, ignore_errors=True)
    MAPPINGS.mkdir(parents=True)
    for path in (ROOT / "include" / "mappings").glob("*.yaml"):
        shutil.copy(path, MAPPINGS / path.name)
    text = (MAPPINGS / f"{CLIENT}.yaml").read_text(encoding="utf-8")
    assert "\nalerts:" not in text
    (MAPPINGS / f"{CLIENT}.yaml").write_text(text + f"alerts:\n  backlog_after: PT{BACKLOG_AFTER}S\n", encoding="utf-8")


@pytest.fixture(scope="module")
def stack() -> None:
    _write_mappings()
    env = {**_stack_env(), "CLIENTFLOW_MAPPINGS_DIR": str(MAPPINGS)}
    for command in ("down", "up", "chromium"):
        subprocess.run([str(ROOT / "scripts" / "stack.sh"), command], cwd=ROOT, env=env, check=True)
    from bench.bench_e2e import reset_client

    _forget_dag(DAG)  # the runs an earlier suite left (a backfill would skip their dates)
    _quiesce("client_iriscare")
    reset_client()
    reset_client("iriscare")  # the stale-client check counts on iriscare never promoted on this stack
    with psycopg.connect(f"{PG}/clientflow_staging") as conn:
        conn.execute("delete from pipeline.incidents")
        conn.execute("delete from pipeline.stage_runs where client_name = %s", (CLIENT,))
    _unpause_and_watch()
    ehrlogic.create(f"{PG}/postgres", SOURCE_DB, 30)
    time.sleep(5)
    _settle()  # today's scheduled run (no batch) ends skipped after the sensor's short wait


@contextmanager
def _notifications_off() -> Iterator[None]:
    """No bucket event while the block runs (moto sends S3's test event when they come back on,
    whose run sweeps the bucket: by then the block's batches are in the ledger)."""
    s3 = _aws("s3")
    configured = s3.get_bucket_notification_configuration(Bucket=BUCKET)
    s3.put_bucket_notification_configuration(Bucket=BUCKET, NotificationConfiguration={})
    try:
        yield
    finally:
        s3.put_bucket_notification_configuration(Bucket=BUCKET, NotificationConfiguration={
            "QueueConfigurations": configured["QueueConfigurations"]})


def _extract_db(day: date) -> None:
    env = {**_stack_env(), "EXTRACTOR_DB_PASSWORD": "local-trust", "AWS_ACCESS_KEY_ID": "local-access-key",
           "AWS_SECRET_ACCESS_KEY": "local-secret-key", "AWS_DEFAULT_REGION": "us-east-1"}
    from tests.support.extractor import build_binary

    subprocess.run([str(build_binary()), "--source", f"postgresql://ehrlogic_reader@127.0.0.1:5432/{SOURCE_DB}",
                    "--client", CLIENT, "--date", day.isoformat(), "--run-id", f"r{day:%Y%m%d}",
                    "--output", f"s3://{BUCKET}", "--endpoint-url", "http://127.0.0.1:5055"],
                   env=env, check=True, capture_output=True)


def _corrupt(day: date) -> None:
    """The uploaded data of one table no longer match its manifest (a file altered after upload)."""
    s3 = _aws("s3")
    key = f"client={CLIENT}/table=dim_patient/date={day:%Y%m%d}/run_id=r{day:%Y%m%d}/data.json"
    body = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    s3.put_object(Bucket=BUCKET, Key=key, Body=body + b" ")  # still valid JSON; another checksum


def _wait_state(day: date, state: str, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = _batch(day)
        if found and found[0] == state:
            return
        time.sleep(2)
    raise AssertionError(f"batch {day} is {_batch(day)}, not {state}, after {timeout} s")


def _trigger(day: date) -> None:
    _airflow("dags", "trigger", DAG, "--conf", json.dumps({"batch_date": day.isoformat()}))


def _settle(dag_id: str = DAG, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        with psycopg.connect(f"{PG}/clientflow_airflow") as meta:
            active = meta.execute("select count(*) from dag_run where dag_id = %s and state in ('queued', 'running')",
                                  (dag_id,)).fetchone()[0]
        if not active:
            return
        time.sleep(2)
    raise AssertionError(f"runs of {dag_id} still active after {timeout} s")


@pytest.fixture(scope="module")
def history(stack: None) -> dict[str, Any]:
    """One promoted batch, three failed in a row, one promoted again; the mail each caused."""
    before = len(_mail())
    _extract_db(GOOD)
    _wait_promoted(GOOD)
    # every run of GOOD's events ended: a run still active would sweep a bad batch up between its
    # upload and its corruption, and that batch would fail twice (two runs, two emails)
    _settle()
    time.sleep(5)
    _settle()
    for day in BAD:
        with _notifications_off():
            _extract_db(day)
            _corrupt(day)
            _trigger(day)
            _wait_state(day, "FAILED")
            _settle()
        # notifications back on: moto's test event reaches the triggerer within a poll (10 s) and
        # its wait (5 s); that run sweeps the bucket, and must end before the next batch is uploaded
        time.sleep(20)
        _settle()
    failed_mail = _mail()[before:]
    _extract_db(RECOVER)
    _wait_promoted(RECOVER)
    _settle()
    time.sleep(5)  # the promote task's success callback sends the recovery notice
    return {"before": before, "after_failures": failed_mail, "all": _mail()[before:]}


def test_one_failure_email_per_batch_one_escalation_one_recovery(history: dict[str, Any]) -> None:
    kinds = [m["X-Clientflow-Alert"] for m in history["all"]]
    failed = [m for m in history["all"] if m["X-Clientflow-Alert"] == "FAILED"]
    assert sorted(m["Subject"].split(" run ")[0] for m in failed) == [
        f"[clientflow] FAILED {CLIENT} batch {d}" for d in BAD]
    assert kinds.count("ESCALATED") == 1 and kinds.count("RECOVERED") == 1, kinds
    assert kinds.index("ESCALATED") > kinds.index("FAILED")
    assert all("checksum mismatch" in body_of(m) and "docs/runbook.md#failed-batch" in body_of(m) for m in failed)


def test_status_page_in_the_airflow_ui(history: dict[str, Any]) -> None:
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{UI}/clientflow/api/clients", timeout=10)
    assert refused.value.code == 401  # plugin apps are mounted without Airflow's auth: ours refuses

    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        page.goto(f"{UI}/")
        page.fill("input[name=username]", "admin")
        page.fill("input[name=password]", "admin")
        page.keyboard.press("Enter")
        page.wait_for_url(lambda url: "login" not in url, timeout=30_000)
        page.get_by_role("button", name="Browse").click()
        page.get_by_role("menuitem", name="Clientflow status").click()
        frame = page.frame_locator("iframe")
        row = frame.locator(f"tr[data-client={CLIENT}]")
        row.wait_for(timeout=30_000)
        frame.locator(f"a[href='/clientflow/clients/{CLIENT}']").click()
        frame.locator("table#batches").wait_for(timeout=30_000)
        states = frame.locator("table#batches tr[data-state]").evaluate_all("rows => rows.map(r => r.dataset.state)")
        page.screenshot(path=str(ARTIFACTS / "status-page.png"), full_page=True)
        browser.close()
    assert states.count("SUCCESS") == 2 and states.count("FAILED") == 3, states


def test_prometheus_scrapes_the_metrics(history: dict[str, Any]) -> None:
    query = urllib.parse.urlencode({"query": f'clientflow_batches{{client="{CLIENT}",state="FAILED"}}'})
    deadline, value = time.time() + 60, None
    while time.time() < deadline:
        answer = json.loads(urllib.request.urlopen(f"{PROMETHEUS}/api/v1/query?{query}", timeout=10).read())
        result = answer["data"]["result"]
        if result and float(result[0]["value"][1]) == 3:
            value = 3.0
            break
        time.sleep(3)
    assert value == 3.0, "Prometheus did not return the failed batches"
    stale = urllib.parse.urlencode({"query": "time() - clientflow_last_success_timestamp_seconds > 86400"})
    answer = json.loads(urllib.request.urlopen(f"{PROMETHEUS}/api/v1/query?{stale}", timeout=10).read())
    assert answer["status"] == "success"
    assert CLIENT not in {r["metric"].get("client") for r in answer["data"]["result"]}  # promoted minutes ago


def test_the_watchdog_alerts_a_stale_client_once(history: dict[str, Any]) -> None:
    """The alert is counted over the whole module's mail: the stack keeps Airflow's metadata, so a
    watchdog unpaused by an earlier run of these tests also runs on its schedule (every 15
    minutes), and such a run may have taken the alert before this test's own checks."""
    before = len(_mail())
    for _ in range(2):  # two checks, one alert: iriscare has never been promoted on this stack
        _airflow("dags", "unpause", "clientflow_watchdog")
        _airflow("dags", "trigger", "clientflow_watchdog")
        time.sleep(3)
        _settle("clientflow_watchdog")
    since_module = [m["Subject"] for m in _mail()[history["before"]:]]
    assert since_module.count("[clientflow] ALERT iriscare: no fresh data") == 1, since_module
    new = [m["Subject"] for m in _mail()[before:]]
    assert not any(CLIENT in s for s in new), new


def _watchdog_once() -> list[str]:
    """One run of the watchdog; the subjects of the mail it sent."""
    before = len(_mail())
    _airflow("dags", "unpause", "clientflow_watchdog")
    _airflow("dags", "trigger", "clientflow_watchdog")
    time.sleep(3)
    _settle("clientflow_watchdog")
    return [m["Subject"] for m in _mail()[before:]]


def test_the_watchdog_alerts_a_backlog_once_and_its_end(history: dict[str, Any]) -> None:
    alert = f"[clientflow] ALERT {CLIENT}: batches waiting unprocessed"
    with _notifications_off():  # nothing announces the batch: it waits in the bucket
        _extract_db(BACKLOG)
        uploaded = time.time()
        assert alert not in _watchdog_once()  # complete, but younger than backlog_after
        time.sleep(max(0.0, BACKLOG_AFTER + 5 - (time.time() - uploaded)))
        assert _watchdog_once().count(alert) == 1
        assert alert not in _watchdog_once()  # once per incident, not per check
        _trigger(BACKLOG)
        _wait_promoted(BACKLOG)
        _settle()
    assert _watchdog_once().count(f"[clientflow] RECOVERED {CLIENT}: batches waiting unprocessed") == 1


def _task_log(airflow_run_id: str, task_id: str) -> list[dict[str, Any]]:
    found = sorted((ROOT / ".stack" / "airflow" / "logs" / f"dag_id={DAG}" / f"run_id={airflow_run_id}" /
                    f"task_id={task_id}").glob("attempt=*.log"))
    assert found, f"no log of {task_id} in run {airflow_run_id}"
    return [json.loads(line) for line in found[-1].read_text(encoding="utf-8").splitlines() if line.strip()]


def test_task_log_lines_name_client_job_and_stage(history: dict[str, Any]) -> None:
    state, airflow_run_id = _batch(RECOVER) or (None, None)
    assert state == "SUCCESS" and airflow_run_id
    with psycopg.connect(f"{PG}/clientflow_staging") as conn:
        job_id = conn.execute("select ingestion_id from pipeline.batches where client_name = %s and batch_date = %s",
                              (CLIENT, RECOVER)).fetchone()[0]
    for task_id, expected_job in (("find_batch", "pending"), ("ingest", job_id), ("promote", job_id)):
        lines = _task_log(airflow_run_id, task_id)
        first = next(i for i, line in enumerate(lines) if "stage" in line)  # the task's on_execute_callback
        ours = lines[first:]
        assert len(ours) >= 2, (task_id, lines)
        assert all(line.get("client") == CLIENT and line.get("stage") == task_id for line in ours), (task_id, ours)
        assert ours[-1]["job_id"] == expected_job, (task_id, ours[-1])
        # before it, only the task runner's start-up (the DAG file parsed, the bundle found)
        assert first <= 5 and all("stage" not in line for line in lines[:first]), (task_id, lines[:first])


def test_a_backfill_reprocesses_dates_from_the_bucket(history: dict[str, Any]) -> None:
    with _notifications_off():  # uploaded unannounced: the backfill finds them in the bucket
        for day in (BACKFILL[0], BACKFILL[2]):
            _extract_db(day)
        started = time.time()
        _airflow("backfill", "create", "--dag-id", DAG, "--from-date", BACKFILL[0].isoformat(),
                 "--to-date", BACKFILL[2].isoformat())
        _wait_promoted(BACKFILL[0])
        _wait_promoted(BACKFILL[2])
        _settle(timeout=600)
    with psycopg.connect(f"{PG}/clientflow_airflow") as meta:
        runs = meta.execute(
            "select r.logical_date::date, r.state, r.run_type, t.state from dag_run r left join task_instance t "
            "on t.dag_id = r.dag_id and t.run_id = r.run_id and t.task_id = 'wait_for_batch' "
            "where r.dag_id = %s and r.run_type = 'backfill' order by 1", (DAG,)).fetchall()
    assert [r[0] for r in runs] == BACKFILL, runs
    assert all(r[1] == "success" for r in runs), runs
    assert runs[1][3] == "skipped"  # the date without files: no batch, no 20-hour wait
    assert _batch(BACKFILL[1]) is None
    print(f"backfill of three dates finished in {time.time() - started:.0f} s")


def test_a_failed_batch_is_reprocessed_by_one_command_and_everything_reconciles(history: dict[str, Any]) -> None:
    day = BAD[0]
    s3 = _aws("s3")
    key = f"client={CLIENT}/table=dim_patient/date={day:%Y%m%d}/run_id=r{day:%Y%m%d}/data.json"
    body = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    assert body.endswith(b" ")
    s3.put_object(Bucket=BUCKET, Key=key, Body=body[:-1])  # the cause fixed: the file as the extractor wrote it
    _settle()
    failed = _batch(day)
    assert failed is not None and failed[0] == "FAILED", failed
    cli = str(ROOT / ".venv" / "bin" / "clientflow")
    done = subprocess.run([cli, "reprocess", CLIENT, day.isoformat()], cwd=ROOT, capture_output=True, text=True,
                          env={**_stack_env(), "CLIENTFLOW_AIRFLOW_PASSWORD": "admin"}, timeout=60)
    assert done.returncode == 0, done.stderr
    assert f"for batch {day} run r{day:%Y%m%d}" in done.stdout
    deadline = time.time() + 300
    while (now := _batch(day)) == failed:  # the ledger says FAILED until the reprocessing run takes the batch up
        assert time.time() < deadline, f"no run took batch {day} up after the reprocess: {now}"
        time.sleep(2)
    _wait_promoted(day)
    _settle()
    reconciled = subprocess.run([cli, "reconcile", CLIENT, "--mappings-dir", str(MAPPINGS)], cwd=ROOT,
                                capture_output=True, text=True, env=_stack_env(), timeout=300)
    print(reconciled.stdout[-4000:])
    assert reconciled.returncode == 0, reconciled.stdout[-4000:] + reconciled.stderr[-2000:]
    assert "0 difference(s): nothing lost, nothing duplicated" in reconciled.stdout
