"""Every command of docs/runbook.md, run as written on the running local stack (``make test-stack``).

One story, in the order an operator meets the tasks, with a client onboarded for it (``runbookco``:
EHR Logic's practice system under another name): onboard it (mapping, upload key, bucket events,
unpause) and let its first batch arrive with the new key; trigger one batch; backfill two dates,
one without files; rotate the upload key; a mapped column renamed at the source fails a batch,
whose email is read, whose mapping is fixed and which is reprocessed; production loses the
client's rows and is restored from the bucket's newest full snapshot. Each command is the runbook's, its placeholders
filled in; it must exit 0, and what it should have done is checked in the ledger, the bucket,
IAM, the mailbox and production. The last check: every command of the runbook was run.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta

import psycopg
import pytest

from tests.stack.test_bucket_events import BUCKET, PG, ROOT, S3_URL, _airflow, _aws, _forget_dag, _stack_env
from tests.support import runbook
from tests.support.mail import body_of, read_mail

pytestmark = pytest.mark.stack

CLIENT, DAG = "runbookco", "client_runbookco"
SOURCE_DB = "stack_runbook_source"
MAPPINGS = ROOT / ".stack" / "runbook-mappings"
WORK = ROOT / ".stack" / "runbook-work"  # where the operator's commands run (the key files land here)
MAIL = ROOT / ".stack" / "mail"
TODAY = datetime.now(UTC).date()
# Inside the sweep's window (14 days), oldest first.
ONBOARD, TRIGGERED, BACKFILLED, EMPTY, ROTATED, DRIFTED = (TODAY - timedelta(days=d) for d in (13, 12, 11, 10, 9, 8))
PATIENTS = 30

SECTIONS: dict[str, tuple[str, ...]] = {
    "backlog": (),
    "trigger-one-batch": ("client", "date", "run"),
    "backfill-a-range": ("client", "from", "to"),
    "reprocess-a-failed-batch": ("client", "date"),
    "read-a-failure-email": ("client", "ingestion id"),
    "schema-drift": ("client",),
    "onboard-a-client": ("client",),
    "offboard-a-client": ("client",),
    "rotate-a-clients-credentials": ("client", "old key id"),
    "restore-from-the-kept-json-files": ("client", "date", "you", "why"),
}
"""The runbook's sections with commands, and the placeholders this test fills in each."""

RAN: list[tuple[str, str]] = []


def _shell(command: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    env = {**_stack_env(), "CLIENTFLOW_MAPPINGS_DIR": str(MAPPINGS), "CLIENTFLOW_AIRFLOW_USER": "admin",
           "CLIENTFLOW_AIRFLOW_PASSWORD": "admin"}
    return subprocess.run(["bash", "-c", f'eval "$({ROOT}/scripts/stack.sh airflow-env)"; {command}'], cwd=WORK,
                          env=env, capture_output=True, text=True, timeout=timeout)


def _section(section: str, values: dict[str, str],
             after: dict[int, Callable[[str], None]] | None = None) -> list[str]:
    """Run the section's commands in order; ``after[i](output)`` checks (or waits) after command i."""
    outputs = []
    for i, command in enumerate(runbook.commands()[section]):
        text = runbook.fill(command, {k: values[k] for k in SECTIONS[section] if k in values} | {"client": CLIENT})
        text = text.replace("include/mappings/", f"{MAPPINGS}/")
        if text.startswith("scripts/"):
            text = f"{ROOT}/{text}"
        done = _shell(text)
        assert done.returncode == 0, f"runbook {section}: `{text}` exited {done.returncode}: {done.stderr[-3000:]}"
        print(f"runbook {section}: $ {text}\n{done.stdout.rstrip()}")
        RAN.append((section, command))
        outputs.append(done.stdout)
        if after and i in after:
            after[i](done.stdout)
    return outputs


def _state(day: date) -> str | None:
    with psycopg.connect(f"{PG}/clientflow_staging") as conn:
        row = conn.execute("select state from pipeline.batches where client_name = %s and batch_date = %s "
                           "order by created_at desc limit 1", (CLIENT, day)).fetchone()
    return row[0] if row else None


def _wait_state(day: date, state: str, timeout: float = 480) -> None:
    deadline = time.time() + timeout
    while (found := _state(day)) != state:
        assert time.time() < deadline, f"batch {day} of {CLIENT} is {found}, not {state}, after {timeout} s"
        time.sleep(3)


def _ingestion_id(day: date) -> str:
    with psycopg.connect(f"{PG}/clientflow_staging") as conn:
        row = conn.execute("select ingestion_id from pipeline.batches where client_name = %s and batch_date = %s "
                           "order by created_at desc limit 1", (CLIENT, day)).fetchone()
    assert row, day
    return str(row[0])


def _runs_settled(timeout: float = 600) -> None:
    deadline = time.time() + timeout
    while True:
        with psycopg.connect(f"{PG}/clientflow_airflow") as meta:
            active = meta.execute("select count(*) from dag_run where dag_id = %s and state not in "
                                  "('success', 'failed')", (DAG,)).fetchone()
        if active and active[0] == 0:
            return
        assert time.time() < deadline, f"{DAG}'s runs did not end within {timeout} s"
        time.sleep(3)


def _credentials(path_name: str) -> dict[str, str]:
    pairs = [line.split("=", 1) for line in (WORK / path_name).read_text(encoding="utf-8").splitlines()
             if line and not line.startswith("#")]
    return dict(pairs)


def _extract(day: date, credentials: dict[str, str]) -> None:
    """The client's side: the extractor binary, with the upload key handed over."""
    from tests.support.extractor import build_binary

    env = {**_stack_env(), "EXTRACTOR_DB_PASSWORD": "local-trust", "AWS_DEFAULT_REGION": "us-east-1", **credentials}
    subprocess.run([str(build_binary()), "--source", f"postgresql://ehrlogic_reader@127.0.0.1:5432/{SOURCE_DB}",
                    "--client", CLIENT, "--date", day.isoformat(), "--run-id", f"r{day:%Y%m%d}",
                    "--output", f"s3://{BUCKET}", "--endpoint-url", S3_URL], env=env, check=True, capture_output=True)


def _quietly(day: date, credentials: dict[str, str]) -> None:
    """Upload with the bucket's notifications off: only the runbook's command takes the batch up
    (or a scheduled sweep; the ledger makes either exactly once)."""
    s3 = _aws("s3")
    configured = s3.get_bucket_notification_configuration(Bucket=BUCKET)
    s3.put_bucket_notification_configuration(Bucket=BUCKET, NotificationConfiguration={})
    try:
        _extract(day, credentials)
    finally:
        s3.put_bucket_notification_configuration(Bucket=BUCKET, NotificationConfiguration={
            "QueueConfigurations": configured.get("QueueConfigurations", [])})


def _dag_parsed_after(moment: datetime, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while True:
        with psycopg.connect(f"{PG}/clientflow_airflow") as meta:
            row = meta.execute("select last_parsed_time from dag where dag_id = %s", (DAG,)).fetchone()
        if row and row[0] and row[0] > moment:
            return
        assert time.time() < deadline, f"{DAG} was not parsed again within {timeout} s"
        time.sleep(3)


def _production_counts() -> dict[str, int]:
    with psycopg.connect(f"{PG}/clientflow_production") as conn:
        return {name: conn.execute(f"select count(*) from practice.{name} where client_id = %s",  # noqa: S608
                                   (CLIENT,)).fetchone()[0]  # type: ignore[index]
                for name in ("providers", "patients", "appointments", "procedures")}


@pytest.fixture(scope="module")
def stack() -> None:
    shutil.rmtree(MAPPINGS, ignore_errors=True)
    shutil.rmtree(WORK, ignore_errors=True)
    MAPPINGS.mkdir(parents=True)
    WORK.mkdir(parents=True)
    for path in (ROOT / "include" / "mappings").glob("*.yaml"):
        shutil.copy(path, MAPPINGS / path.name)
    env = {**_stack_env(), "CLIENTFLOW_MAPPINGS_DIR": str(MAPPINGS)}
    for command in ("down", "up"):
        subprocess.run([str(ROOT / "scripts" / "stack.sh"), command], cwd=ROOT, env=env, check=True)
    from bench.bench_e2e import reset_client
    from clientflow.sample import ehrlogic

    _forget_dag(DAG)  # a run of this test on the same checkout left its runs and backfills
    reset_client(CLIENT)
    ehrlogic.create(f"{PG}/postgres", SOURCE_DB, PATIENTS)


def test_every_runbook_command_on_the_stack(stack: None) -> None:
    values: dict[str, str] = {"you": "dana.oncall", "why": "runbook drill: production lost the client's rows"}
    _section("backlog", values)

    # Onboard a client: its mapping file, then the section's commands.
    text = (ROOT / "include" / "mappings" / "ehrlogic.yaml").read_text(encoding="utf-8")
    (MAPPINGS / f"{CLIENT}.yaml").write_text(text.replace("client: ehrlogic", f"client: {CLIENT}"), encoding="utf-8")
    deadline = time.time() + 180
    while "client_runbookco" not in _airflow("dags", "list", "-o", "plain"):
        assert time.time() < deadline, "the new client's DAG did not appear"
        time.sleep(5)
    onboarding = _section("onboard-a-client", values)
    first_key = next(line.split()[3] for line in onboarding[2].splitlines() if line.startswith("created upload key"))
    first = _credentials(f"{CLIENT}-upload.env")
    assert first["AWS_ACCESS_KEY_ID"] == first_key
    assert (WORK / f"{CLIENT}-upload.env").stat().st_mode & 0o777 == 0o600
    _extract(ONBOARD, first)  # nobody triggers: the bucket event starts the run
    _wait_state(ONBOARD, "SUCCESS")

    _quietly(TRIGGERED, first)
    values |= {"date": TRIGGERED.isoformat(), "run": f"r{TRIGGERED:%Y%m%d}"}
    _section("trigger-one-batch", values, after={0: lambda _out: _wait_state(TRIGGERED, "SUCCESS")})

    _quietly(BACKFILLED, first)
    values |= {"from": BACKFILLED.isoformat(), "to": EMPTY.isoformat()}

    def backfilled(_out: str) -> None:
        _wait_state(BACKFILLED, "SUCCESS")
        _runs_settled()
        with psycopg.connect(f"{PG}/clientflow_airflow") as meta:
            runs = meta.execute(
                "select r.logical_date::date, r.state, t.state from dag_run r left join task_instance t on "
                "t.dag_id = r.dag_id and t.run_id = r.run_id and t.task_id = 'wait_for_batch' "
                "where r.dag_id = %s and r.run_type = 'backfill' order by 1", (DAG,)).fetchall()
        assert [(r[0], r[1]) for r in runs] == [(BACKFILLED, "success"), (EMPTY, "success")], runs
        assert runs[1][2] == "skipped" and _state(EMPTY) is None  # no files: no batch, and no long wait

    _section("backfill-a-range", values, after={0: backfilled})

    # Rotate the client's upload key: the next batch arrives with the new one, then the old goes.
    values["old key id"] = first_key

    def rotated(_out: str) -> None:
        _extract(ROTATED, _credentials(f"{CLIENT}-upload-new.env"))
        _wait_state(ROTATED, "SUCCESS")

    rotation = _section("rotate-a-clients-credentials", values, after={1: rotated})
    assert first_key in rotation[0]
    assert f"{ROTATED}" in rotation[2]
    new_key = _credentials(f"{CLIENT}-upload-new.env")["AWS_ACCESS_KEY_ID"]
    held = _aws("iam").list_access_keys(UserName=f"clientflow-upload-{CLIENT}")["AccessKeyMetadata"]
    assert [k["AccessKeyId"] for k in held] == [new_key]

    # A mapped column renamed at the source: the batch fails before dbt, one email names the rename.
    with psycopg.connect(f"{PG}/{SOURCE_DB}", autocommit=True) as source:
        source.execute("alter table dim_patient rename column pt_email to pt_email_addr")
    mails_before = len(read_mail(MAIL, "FAILED"))
    produced = _production_counts()
    _extract(DRIFTED, _credentials(f"{CLIENT}-upload-new.env"))
    _wait_state(DRIFTED, "FAILED")
    deadline = time.time() + 120
    while not (failed := [m for m in read_mail(MAIL, "FAILED")[mails_before:] if CLIENT in m["Subject"]]):
        assert time.time() < deadline, "no failure email"
        time.sleep(2)
    values["ingestion id"] = _ingestion_id(DRIFTED)
    assert values["ingestion id"] in failed[0]["Subject"] and str(DRIFTED) in failed[0]["Subject"]
    assert "pt_email" in body_of(failed[0]) and "docs/runbook.md#failed-batch" in body_of(failed[0])
    assert _production_counts() == produced
    traced = _section("read-a-failure-email", values)
    assert values["ingestion id"] in traced[0] and "FAILED" in traced[0]

    mapping = MAPPINGS / f"{CLIENT}.yaml"
    assert "email: pt_email\n" in mapping.read_text(encoding="utf-8")
    edited = datetime.now(UTC)
    mapping.write_text(mapping.read_text(encoding="utf-8").replace("email: pt_email\n", "email: pt_email_addr\n"),
                       encoding="utf-8")
    _section("schema-drift", values)
    _dag_parsed_after(edited)
    values["date"] = DRIFTED.isoformat()
    reprocessed = _section("reprocess-a-failed-batch", values, after={0: lambda _o: _wait_state(DRIFTED, "SUCCESS")})
    assert "nothing lost, nothing duplicated" in reprocessed[1]

    # Production loses the client's rows. The drifted batch is the newest full snapshot of every table
    # (and the only one the fixed mapping reads: the earlier files still have the old column name).
    _runs_settled()
    kept = _production_counts()
    assert kept["patients"] == PATIENTS
    with psycopg.connect(f"{PG}/clientflow_production") as conn:
        for name in ("procedures", "appointments", "patients", "providers"):
            conn.execute(f"delete from practice.{name} where client_id = %s", (CLIENT,))  # noqa: S608
    restored = _section("restore-from-the-kept-json-files", values)
    assert f"would replay {DAG} batch {DRIFTED}" in restored[0] and f"batch {ROTATED}" not in restored[0]
    assert "1 batch(es) replayed" in restored[1]
    assert "nothing lost, nothing duplicated" in restored[2]
    assert _production_counts() == kept

    # The client leaves: its uploads stop, what arrived has finished, the DAG is paused and its
    # mapping removed. Nothing of its data goes. A run started for a date without files waits in
    # its sensor (two minutes on this stack): offboarding ends it rather than waiting.
    _runs_settled()
    _airflow("dags", "trigger", DAG, "--run-id", "manual__offboard_drill", "--conf",
             f'{{"batch_date": "{EMPTY.isoformat()}"}}')

    def still_held(_out: str) -> None:
        assert [k["AccessKeyId"] for k in _aws("iam").list_access_keys(
            UserName=f"clientflow-upload-{CLIENT}")["AccessKeyMetadata"]] == [new_key]

    began = time.time()
    offboarding = _section("offboard-a-client", values, after={0: still_held, 1: lambda _out: mapping.unlink()})
    assert f"would retire upload key(s) of clientflow-upload-{CLIENT}: {new_key}" in offboarding[0]
    assert f"retired upload key {new_key}" in offboarding[1]
    assert "ended run manual__offboard_drill" in offboarding[1]
    assert f"paused {DAG}: no batch of {CLIENT} in flight" in offboarding[1]
    assert time.time() - began < 110, "offboarding waited out the sensor's own timeout instead of ending the run"
    with psycopg.connect(f"{PG}/clientflow_airflow") as meta:
        drill = meta.execute(
            "select r.state, t.state, n.content from dag_run r join task_instance t on t.dag_id = r.dag_id and "
            "t.run_id = r.run_id and t.task_id = 'wait_for_batch' left join task_instance_note n on n.ti_id = t.id "
            "where r.dag_id = %s and r.run_id = 'manual__offboard_drill'", (DAG,)).fetchone()
    assert drill is not None and drill[:2] == ("success", "skipped") and "offboard" in (drill[2] or ""), drill
    assert _state(EMPTY) is None  # no batch came of it
    assert CLIENT not in offboarding[2] and "ehrlogic" in offboarding[2]  # the other clients' notifications stay
    assert offboarding[3].splitlines()[1].startswith(f"{CLIENT} ") and str(DRIFTED) in offboarding[3]
    assert _aws("iam").list_access_keys(UserName=f"clientflow-upload-{CLIENT}")["AccessKeyMetadata"] == []
    # Stale once its file was parsed without it for stale_dag_threshold (50 s), at the dag
    # processor's next cleanup (every 60 s).
    deadline = time.time() + 300
    while True:
        with psycopg.connect(f"{PG}/clientflow_airflow") as meta:
            row = meta.execute("select is_paused, is_stale from dag where dag_id = %s", (DAG,)).fetchone()
        if row == (True, True):
            break
        assert time.time() < deadline, f"{DAG} is not paused and stale after its mapping went: {row}"
        time.sleep(5)
    _runs_settled(timeout=1)  # and no run was left behind
    assert _production_counts() == kept
    assert _aws("s3").list_objects_v2(Bucket=BUCKET, Prefix=f"client={CLIENT}/")["KeyCount"] > 0

    assert sorted(RAN) == sorted((s, c) for s, cs in runbook.commands().items() for c in cs)
