"""Bucket events on the running local stack (``make test-stack``, which restarts the stack): Airflow's
real scheduler and triggerer, moto's S3 sending notifications to its SQS, the extractor binary uploading.

Nobody triggers anything: the manifest's upload starts the client's DAG run through the asset
watcher. A duplicated message and a message for an unknown client change nothing; a batch whose
message was lost is promoted by the sweep of the next run. The upload-to-run latency is printed.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.parse
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import psycopg
import pytest

from client_extractor.contract import batch_key
from clientflow.arrival import events
from clientflow.sample import ehrlogic
from tests.support.extractor import build_binary

pytestmark = pytest.mark.stack

ROOT = Path(__file__).resolve().parents[2]
CLIENT, DAG = "ehrlogic", "client_ehrlogic"
SOURCE_DB = "stack_events_source"
PG = "postgresql://postgres@127.0.0.1:5432"
S3_URL, BUCKET = "http://127.0.0.1:5055", "clientflow-landing"
LATENCY_TARGET = 60.0


def _stack_env() -> dict[str, str]:
    """The environment of a shell outside the test session (its conftest points elsewhere)."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "CLIENTFLOW", "AWS_"))}


def _airflow(*args: str) -> str:
    return subprocess.run(["bash", "-c", 'eval "$(scripts/stack.sh airflow-env)"; exec .venv/bin/airflow "$@"',
                           "airflow", *args], cwd=ROOT, env=_stack_env(), check=True, capture_output=True,
                          text=True).stdout


def _aws(service: str) -> Any:
    return boto3.client(service, endpoint_url=S3_URL, region_name="us-east-1", aws_access_key_id="local-access-key",
                        aws_secret_access_key="local-secret-key")


@pytest.fixture(scope="module")
def stack() -> None:
    """A fresh stack: moto keeps its bucket in memory, so a restart empties it; the client's
    ledger and tables are reset. The stack keeps running afterwards (make down stops it)."""
    for command in ("down", "up"):
        subprocess.run([str(ROOT / "scripts" / "stack.sh"), command], cwd=ROOT, env=_stack_env(), check=True)
    from bench.bench_e2e import reset_client

    _forget_dag(DAG)  # earlier runs of the DAG, queued ones too
    reset_client()
    _unpause_and_watch()  # the dag-processor parses the file again; then the watcher starts
    _wait_idle(-1, quiet=20)  # the scheduled run of today, created at the unpause, ends skipped (no batch)
    ehrlogic.create(f"{PG}/postgres", SOURCE_DB, 30)


def _quiesce(*dag_ids: str, timeout: float = 300) -> set[str]:
    """Pause the DAGs and wait until no task of theirs runs; returns the ones the metadata database
    knows. That database outlives a stack of the same checkout, and with it a DAG an earlier suite
    left unpaused (test-scale's): the new stack's scheduler starts its runs at once, and a test that
    resets the client, or deletes the DAG's runs (which Airflow refuses while a task runs), would
    race them."""
    with psycopg.connect(f"{PG}/clientflow_airflow") as meta:
        known = {row[0] for row in meta.execute("select dag_id from dag where dag_id = any(%s)", (list(dag_ids),))}
    for dag_id in sorted(known):  # a DAG the metadata database does not know yet has run nothing
        _airflow("dags", "pause", dag_id)
    deadline = time.time() + timeout
    while True:
        with psycopg.connect(f"{PG}/clientflow_airflow") as meta:
            running = meta.execute("select dag_id, task_id from task_instance where dag_id = any(%s) and state in "
                                   "('running', 'queued', 'restarting')", (list(dag_ids),)).fetchall()
        if not running:
            return known
        assert time.time() < deadline, f"tasks still running {timeout} s after their DAGs were paused: {running}"
        time.sleep(3)


def _forget_dag(dag_id: str) -> None:
    """Delete what Airflow's metadata database holds of the DAG (its runs, backfills and the DAG
    itself, which comes back paused at its next parse): that database outlives a stack of the same
    checkout, and an earlier run's records would stand in for this one's (a backfill skips the
    dates that already have a run)."""
    if _quiesce(dag_id):
        _airflow("dags", "delete", dag_id, "--yes")


def _unpause_and_watch(timeout: float = 180) -> None:
    """Unpause the client's DAG once the dag-processor knows it, and wait for its asset watcher."""
    deadline = time.time() + timeout
    while not _watching():
        assert time.time() < deadline, "the client's DAG did not come up with its asset watcher"
        with psycopg.connect(f"{PG}/clientflow_airflow") as meta:
            known = meta.execute("select is_paused from dag where dag_id = %s", (DAG,)).fetchone()
        if known and known[0]:
            _airflow("dags", "unpause", DAG)
        time.sleep(3)


def _watching() -> bool:
    """Whether the DAG is unpaused and its asset's watcher has a trigger in the triggerer."""
    with psycopg.connect(f"{PG}/clientflow_airflow") as meta:
        return meta.execute(
            "select 1 from dag d join dag_schedule_asset_reference r using (dag_id) join asset_watcher w "
            "on w.asset_id = r.asset_id join trigger t on t.id = w.trigger_id where d.dag_id = %s and not d.is_paused "
            "and t.triggerer_id is not null", (DAG,)).fetchone() is not None


def _extract(day: date) -> float:
    """Upload the sample client's batch of ``day`` with the binary; when its last manifest landed."""
    env = {**_stack_env(), "EXTRACTOR_DB_PASSWORD": "local-trust", "AWS_ACCESS_KEY_ID": "local-access-key",
           "AWS_SECRET_ACCESS_KEY": "local-secret-key", "AWS_DEFAULT_REGION": "us-east-1"}
    subprocess.run([str(build_binary()), "--source", f"postgresql://ehrlogic_reader@127.0.0.1:5432/{SOURCE_DB}",
                    "--client", CLIENT, "--date", day.isoformat(), "--run-id", f"r{day:%Y%m%d}",
                    "--output", f"s3://{BUCKET}", "--endpoint-url", S3_URL], env=env, check=True, capture_output=True)
    return time.time()


def _batch(day: date) -> tuple[str, str | None] | None:
    with psycopg.connect(f"{PG}/clientflow_staging") as conn:
        row = conn.execute("select state, airflow_run_id from pipeline.batches where client_name = %s and "
                           "batch_date = %s", (CLIENT, day)).fetchone()
    return (row[0], row[1]) if row else None


def _wait_promoted(day: date, timeout: float = 420) -> str:
    """The Airflow run id that promoted the batch of ``day``."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = _batch(day)
        if found and found[0] == "SUCCESS" and found[1]:
            return found[1]
        assert found is None or found[0] != "FAILED", f"batch {day} failed: see .stack/airflow/logs"
        time.sleep(2)
    raise AssertionError(f"batch {day} was not promoted within {timeout} s")


def _runs() -> list[tuple[str, str, str, datetime | None]]:
    with psycopg.connect(f"{PG}/clientflow_airflow") as meta:
        return [tuple(r) for r in meta.execute(  # type: ignore[misc]
            "select run_id, run_type, state, start_date from dag_run where dag_id = %s order by id", (DAG,))]


def _wait_idle(after: int, timeout: float = 300, quiet: float = 30) -> list[tuple[str, str, str, datetime | None]]:
    """The runs created after the first ``after`` ones, once none is active and none has been
    created for ``quiet`` seconds (longer than a poll of the triggerer plus a scheduler loop)."""
    deadline, seen, since = time.time() + timeout, -1, time.time()
    while time.time() < deadline:
        runs = _runs()
        if len(runs) != seen or any(state not in ("success", "failed") for _, _, state, _ in runs):
            seen, since = len(runs), time.time()
        elif len(runs) > after and time.time() - since >= quiet:
            return runs[after:]
        time.sleep(2)
    raise AssertionError(f"the DAG's runs did not settle within {timeout} s: {_runs()[after:]}")


def _production_rows() -> int:
    with psycopg.connect(f"{PG}/clientflow_production") as conn:
        row = conn.execute("select (select count(*) from practice.patients where client_id = %s) + "
                           "(select count(*) from practice.appointments where client_id = %s)", (CLIENT, CLIENT)
                           ).fetchone()
    return int(row[0]) if row else 0


def _notification(key: str) -> str:
    record = {"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": BUCKET},
                                                       "object": {"key": urllib.parse.quote_plus(key)}}}
    return json.dumps({"Records": [record]})


def test_an_upload_starts_its_run_duplicates_change_nothing_and_the_sweep_finds_a_lost_one(stack: None) -> None:
    today = datetime.now(UTC).date()
    first, lost, later = (today + timedelta(days=n) for n in (20, 21, 22))

    uploaded = _extract(first)
    run_id = _wait_promoted(first)
    runs = {r[0]: r for r in _runs()}
    assert runs[run_id][1] == "asset_triggered", runs[run_id]  # nobody triggered it
    started = runs[run_id][3]
    assert started is not None
    latency = started.timestamp() - uploaded
    print(f"latency from the last manifest's upload to the DAG run's start: {latency:.1f} s (target < {LATENCY_TARGET})")
    assert latency < LATENCY_TARGET
    promoted_rows = _production_rows()
    assert promoted_rows > 0

    # The same message again (a redelivery) and one naming a client that has no DAG.
    before = len(_runs())
    sqs = _aws("sqs")
    queue = sqs.get_queue_url(QueueName=events.queue_name(CLIENT))["QueueUrl"]
    sqs.send_message(QueueUrl=queue, MessageBody=_notification(
        batch_key(CLIENT, "dim_patient", first, f"r{first:%Y%m%d}", "manifest.json")))
    sqs.send_message(QueueUrl=queue, MessageBody=_notification(
        batch_key("nobody", "dim_patient", first, "r1", "manifest.json")))
    new_runs = _wait_idle(before)
    assert all(state == "success" for _, _, state, _ in new_runs), new_runs
    assert _production_rows() == promoted_rows and _batch(first) == ("SUCCESS", run_id)  # nothing changed

    # A batch uploaded while the bucket's notifications are off (its message lost), then one with them.
    s3 = _aws("s3")
    configured = s3.get_bucket_notification_configuration(Bucket=BUCKET)
    s3.put_bucket_notification_configuration(Bucket=BUCKET, NotificationConfiguration={})
    try:
        _extract(lost)
    finally:
        s3.put_bucket_notification_configuration(Bucket=BUCKET, NotificationConfiguration={
            "QueueConfigurations": configured["QueueConfigurations"]})
    # Nothing announced it. The next run's sweep finds it: the run that S3's test event (sent when
    # the notifications are configured again) starts, or the later batch's.
    _extract(later)
    assert _wait_promoted(later)
    swept = _wait_promoted(lost)
    assert swept == f"sweep__{lost.isoformat()}__r{lost:%Y%m%d}"  # a run that a sweep started
    assert _production_rows() == promoted_rows  # the same source each day: the same rows, none twice
