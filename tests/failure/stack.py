"""The failure suite's stack and the helpers its scenarios share (``make failure-suite``).

The suite runs the local stack with two clients of its own (EHR Logic's practice system under other
names): ``failco`` with a small source for the arrival faults, ``failbig`` with one large enough
(150,000 patients, 450,000 rows) that a load and a promotion last long enough to be cut. The stack
gets a Redis of its own (``REDIS_PORT``), so that a scenario can restart it without touching a
Redis the machine shares, and reaches S3 through :class:`tests.failure.proxy.S3Proxy`, so that a
scenario can make S3 answer 503. The extractor and the tests' own S3 calls go to moto directly.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from typing import Any

import psycopg

from clientflow.operations import oncall
from tests.stack.test_bucket_events import BUCKET, PG, ROOT, S3_URL, _airflow, _aws, _stack_env
from tests.support.mail import read_mail

SMALL, BIG = "failco", "failbig"
SOURCES = {SMALL: ("stack_failure_small", 40), BIG: ("stack_failure_big", 150_000)}
MAPPINGS = ROOT / ".stack" / "failure-mappings"
MAIL = ROOT / ".stack" / "mail"
UI = "http://127.0.0.1:8080"
TODAY = datetime.now(UTC).date()
SUITE_BEGAN = time.time()
"""The stack's Maildir keeps the mail of earlier runs, and a second run on the same day sends its
batches of the same dates: only mail delivered since this run began counts."""
INCOMPLETE_AFTER = 60  # seconds an upload may lack a file before the watchdog alerts
LOCK_TIMEOUT = 12  # seconds a client's lock outlives its last renewal, on this suite's stack
REDIS_PORT = 6390  # the suite's own Redis, started by the stack (scripts/stack.sh) and restarted by a scenario
MOTO_PORT, PROXY_PORT = 5055, 5056  # moto, and the proxy the stack's S3 connection goes through


def _day(days_ago: int) -> date:
    return TODAY - timedelta(days=days_ago)  # inside the sweep's window (14 days)


def _env() -> dict[str, str]:
    return {**_stack_env(), "CLIENTFLOW_MAPPINGS_DIR": str(MAPPINGS), "CLIENTFLOW_LOCK_TIMEOUT_SECONDS": str(LOCK_TIMEOUT),
            "CLIENTFLOW_REDIS_PORT": str(REDIS_PORT), "CLIENTFLOW_MOTO_PORT": str(MOTO_PORT),
            "CLIENTFLOW_S3_PORT": str(PROXY_PORT),
            # a task whose process was killed is failed (and retried) after a minute, not five
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "60"}


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
    return [m for m in read_mail(MAIL, "FAILED")
            if f"FAILED {client} batch {day}" in m["Subject"] and m.get_date() >= SUITE_BEGAN]


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


def _parsed_after(client: str, moment: datetime, timeout: float = 240) -> None:
    """Wait until the dag-processor has parsed the client's DAG again (a mapping file changed)."""
    deadline = time.time() + timeout
    while not _meta("select 1 from dag where dag_id = %s and last_parsed_time > %s", f"client_{client}", moment):
        assert time.time() < deadline, f"client_{client} was not parsed again within {timeout} s"
        time.sleep(3)


def _edit_mapping(client: str, old: str, new: str) -> None:
    """Fix the client's mapping file as its engineer would, and wait for the DAG to pick it up."""
    path = MAPPINGS / f"{client}.yaml"
    text = path.read_text(encoding="utf-8")
    assert old in text, f"{old!r} not in {path}"
    moment = datetime.now(UTC)
    path.write_text(text.replace(old, new), encoding="utf-8")
    _parsed_after(client, moment)


def _task_states(client: str, airflow_run_id: str, prefix: str = "") -> dict[str, str | None]:
    return {r[0]: r[1] for r in _meta("select task_id, state from task_instance where dag_id = %s and run_id = %s "
                                      "and task_id like %s", f"client_{client}", airflow_run_id, f"{prefix}%")}


def _raw_batches(client: str, table: str) -> dict[str, int]:
    """Rows per batch (ingestion id) in the client's raw table: the queue of batches kept."""
    with psycopg.connect(f"{PG}/clientflow_staging") as conn:
        return dict(conn.execute(f'select ingestion_id, count(*) from "raw_{client}"."{table}" '  # noqa: S608
                                 "group by ingestion_id").fetchall())
