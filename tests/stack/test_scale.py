"""The same DAGs on the CeleryExecutor (``make test-scale``): ``scripts/stack.sh up-celery`` runs an
api-server, scheduler, dag-processor, triggerer and two Celery workers, each its own process.

Three clients' batches land at once; each client's run starts from its bucket event. One worker
is killed with SIGKILL while it loads a client's raw tables. The scheduler fails that try once its
heartbeat stops, and the retry runs on the other worker (the only one left). All three batches are
promoted exactly once, and no two writers of one client overlap: the ledger's timestamps and the
fencing tokens show it. Raw loads go through the ``clientflow_staging_copy`` pool.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from clientflow.sample import ehrlogic, iriscare
from tests.stack.test_bucket_events import BUCKET, PG, ROOT, _stack_env
from tests.support import procs
from tests.support.extractor import build_binary

pytestmark = pytest.mark.scale

CLIENTS = ("ehrlogic", "brightsmile", "iriscare")
DAG_IDS = [f"client_{c}" for c in CLIENTS]
"""This module's DAGs. The stack's metadata database may hold other suites' client DAGs (the failure
suite's, whose mapping files are not this stack's, so their runs never end): every query names ours."""
MAPPINGS = ROOT / ".stack" / "scale-mappings"
STATE = ROOT / ".stack"
PG_SOURCE, MARIADB_SOURCE = "scale_source_pg", "scale_source_mariadb"
PATIENTS = 20_000
DAY = datetime.now(UTC).date() - timedelta(days=2)


def _env() -> dict[str, str]:
    return {**_stack_env(), "CLIENTFLOW_MAPPINGS_DIR": str(MAPPINGS)}


def _stack(command: str) -> None:
    subprocess.run([str(ROOT / "scripts" / "stack.sh"), command], cwd=ROOT, env=_env(), check=True)


def _airflow(*args: str) -> str:
    return subprocess.run(["bash", "-c", 'eval "$(scripts/stack.sh airflow-env)"; exec .venv/bin/airflow "$@"',
                           "airflow", *args], cwd=ROOT, env=_env(), check=True, capture_output=True,
                          text=True).stdout


def _meta(query: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(f"{PG}/clientflow_airflow") as conn:
        return [tuple(r) for r in conn.execute(query, params).fetchall()]


def _staging(query: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(f"{PG}/clientflow_staging") as conn:
        return [tuple(r) for r in conn.execute(query, params).fetchall()]


def _forget(client: str) -> None:
    """The client's earlier batches, rows and schemas, and its incidents and stage times (the
    bucket is emptied by the restart)."""
    from bench.bench_e2e import reset_client

    reset_client(client)
    with psycopg.connect(f"{PG}/clientflow_staging") as conn:
        for table in ("incidents", "stage_runs"):
            conn.execute(f"delete from pipeline.{table} where client_name = %s", (client,))  # noqa: S608


@pytest.fixture(scope="module")
def celery_stack() -> None:
    shutil.rmtree(MAPPINGS, ignore_errors=True)
    MAPPINGS.mkdir(parents=True)
    for name in ("ehrlogic.yaml", "iriscare.yaml"):
        shutil.copy(ROOT / "include" / "mappings" / name, MAPPINGS / name)
    # A second dental group on EHR Logic's practice system: the same tables, its own client name.
    text = (ROOT / "include" / "mappings" / "ehrlogic.yaml").read_text(encoding="utf-8")
    (MAPPINGS / "brightsmile.yaml").write_text(
        text.replace("client: ehrlogic", "client: brightsmile").replace(
            "display_name: EHR Logic Dental Group", "display_name: Bright Smile Dental"), encoding="utf-8")
    _stack("down")
    _stack("up-celery")
    for client in CLIENTS:
        _forget(client)
    deadline = time.time() + 240
    while True:
        known = dict(_meta("select dag_id, is_paused from dag where dag_id = any(%s)", DAG_IDS))
        if all(dag_id in known for dag_id in DAG_IDS):
            for dag_id in DAG_IDS:
                if known[dag_id]:
                    _airflow("dags", "unpause", dag_id)
            watching = _meta(
                "select count(distinct d.dag_id) from dag d join dag_schedule_asset_reference r using (dag_id) "
                "join asset_watcher w on w.asset_id = r.asset_id join trigger t on t.id = w.trigger_id "
                "where not d.is_paused and t.triggerer_id is not null and d.dag_id = any(%s)", DAG_IDS)[0][0]
            if watching >= len(CLIENTS):
                break
        assert time.time() < deadline, f"the three clients' DAGs did not come up with their watchers: {known}"
        time.sleep(3)
    _settle()  # each DAG's scheduled run of today (no batch) ends skipped
    ehrlogic.create(f"{PG}/postgres", PG_SOURCE, PATIENTS)
    iriscare.create(MARIADB_SOURCE, PATIENTS)


def _settle(timeout: float = 600) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        active = _meta("select dag_id, run_id from dag_run where dag_id = any(%s) and state in ('queued', 'running')",
                       DAG_IDS)
        if not active:
            return
        time.sleep(3)
    raise AssertionError(f"client runs still active after {timeout} s: {active}")


def _extract(client: str) -> None:
    if client == "iriscare":
        source, password = f"mysql://{iriscare.READER}@127.0.0.1:3306/{MARIADB_SOURCE}", iriscare.READER_PASSWORD
    else:
        source, password = f"postgresql://{ehrlogic.READER_ROLE}@127.0.0.1:5432/{PG_SOURCE}", "local-trust"
    env = {**_stack_env(), "EXTRACTOR_DB_PASSWORD": password, "AWS_ACCESS_KEY_ID": "local-access-key",
           "AWS_SECRET_ACCESS_KEY": "local-secret-key", "AWS_DEFAULT_REGION": "us-east-1"}
    subprocess.run([str(build_binary()), "--source", source, "--client", client, "--date", DAY.isoformat(),
                    "--run-id", f"r{DAY:%Y%m%d}", "--output", f"s3://{BUCKET}",
                    "--endpoint-url", "http://127.0.0.1:5055"], env=env, check=True, capture_output=True)


def _worker_of(pid: int) -> str | None:
    """Which of the two workers a task process descends from (the task runner has its own
    process group, so the worker is found by its ancestors)."""
    workers = {int((STATE / f"{n}.pid").read_text()): n for n in ("worker1", "worker2")}
    parents = procs.parents()
    while pid in parents and pid > 1:
        if pid in workers:
            return workers[pid]
        pid = parents[pid]
    return None


def _kill_tree(root: int) -> None:
    """SIGKILL a worker and everything under it, as if its machine died."""
    parents = procs.parents()
    doomed = {root}
    grew = True
    while grew:
        grew = False
        for child, parent in parents.items():
            if parent in doomed and child not in doomed:
                doomed.add(child)
                grew = True
    for pid in doomed:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _kill_a_loading_worker(client: str, timeout: float = 600) -> tuple[str, int]:
    """SIGKILL the worker running ``client``'s ingest, with its task processes; the fence token then."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        running = _meta("select pid from task_instance where dag_id = %s and task_id = 'ingest' and state = 'running' "
                        "and pid is not null", f"client_{client}")
        for (pid,) in running:
            worker = _worker_of(pid)
            loading = _staging("select count(*) from pipeline.batches where client_name = %s", client)[0][0]
            if worker and loading:  # the load has begun: the batch is in the ledger
                token = _staging("select token from pipeline.client_fence where client_name = %s", client)[0][0]
                _kill_tree(int((STATE / f"{worker}.pid").read_text()))
                return worker, int(token)
        time.sleep(0.2)
    raise AssertionError(f"{client}'s ingest never ran on a worker")


def test_three_clients_at_once_a_worker_killed_mid_load(celery_stack: None) -> None:
    began = datetime.now(UTC)
    uploads = [threading.Thread(target=_extract, args=(c,)) for c in CLIENTS]
    for t in uploads:
        t.start()
    killed, token_at_kill = _kill_a_loading_worker("ehrlogic")
    killed_at = datetime.now(UTC)
    for t in uploads:
        t.join()
    survivor = "worker2" if killed == "worker1" else "worker1"
    _settle()

    # Each batch promoted exactly once, and every patient of each client in production.
    batches = dict(_staging("select client_name, state from pipeline.batches where client_name = any(%s) "
                            "and batch_date = %s", list(CLIENTS), DAY))
    assert batches == {c: "SUCCESS" for c in CLIENTS}, batches
    successes = _staging("select b.client_name, count(*) from pipeline.batch_events e join pipeline.batches b "
                         "using (ingestion_id) where e.state = 'SUCCESS' and b.batch_date = %s "
                         "and b.client_name = any(%s) group by 1", DAY, list(CLIENTS))
    assert dict(successes) == {c: 1 for c in CLIENTS}, successes
    with psycopg.connect(f"{PG}/clientflow_production") as conn:
        for client in CLIENTS:
            found = conn.execute("select count(*) from practice.patients where client_id = %s", (client,)).fetchone()
            assert found == (PATIENTS,), (client, found)

    # The killed try was failed by its lost heartbeat and retried; the retry wrote under a newer token.
    promoted_by = _staging("select airflow_run_id from pipeline.batches where client_name = 'ehrlogic' "
                           "and batch_date = %s", DAY)[0][0]
    tries = _meta("select try_number, state from task_instance where dag_id = 'client_ehrlogic' and "
                  "task_id = 'ingest' and run_id = %s", promoted_by)
    assert tries and tries[0][0] >= 2 and tries[0][1] == "success", tries
    final = _staging("select fence_token from pipeline.batches where client_name = 'ehrlogic' and batch_date = %s", DAY)
    assert final[0][0] > token_at_kill, (final, token_at_kill)
    assert subprocess.run(["kill", "-0", (STATE / f"{killed}.pid").read_text().strip()],
                          capture_output=True).returncode != 0, f"{killed} should be dead"
    assert subprocess.run(["kill", "-0", (STATE / f"{survivor}.pid").read_text().strip()],
                          capture_output=True).returncode == 0, f"{survivor} should be alive"

    # No two writers of one client overlapped: the killed try's last event precedes the kill, the
    # retry began after it, and raw holds each row of the batch once (nothing of the killed try).
    events = _staging("select e.state, e.at from pipeline.batch_events e join pipeline.batches b using (ingestion_id) "
                      "where b.client_name = 'ehrlogic' and b.batch_date = %s order by e.event_id", DAY)
    pendings = [at for state, at in events if state == "PENDING"]
    assert len(pendings) == 2 and pendings[0] < killed_at < pendings[1], (events, killed_at)
    with psycopg.connect(f"{PG}/clientflow_staging") as conn:
        raw = conn.execute('select count(*), count(distinct "pt_id") from raw_ehrlogic.dim_patient').fetchone()
    assert raw == (PATIENTS, PATIENTS), raw
    for client in CLIENTS[1:]:
        states = [state for state, _ in _staging(
            "select e.state, e.at from pipeline.batch_events e join pipeline.batches b using (ingestion_id) "
            "where b.client_name = %s and b.batch_date = %s order by e.event_id", client, DAY)]
        # Loaded once; or, if its load ran on the killed worker too, failed there and retried once.
        # A later run that found the batch promoted (its event's, or a sweep's) records a DUPLICATE
        # delivery after the SUCCESS and changes nothing.
        success = states.index("SUCCESS")
        assert set(states[success + 1:]) <= {"DUPLICATE"}, (client, states)
        states = states[:success + 1]
        assert states in (["PENDING", "PROCESSING", "SUCCESS"],
                          ["PENDING", "PROCESSING", "PENDING", "PROCESSING", "SUCCESS"]), (client, states)
        if len(states) == 5:
            first = _meta("select state, start_date from task_instance_history where dag_id = %s and "
                          "task_id = 'ingest' and try_number = 1", f"client_{client}")
            assert first and first[0][0] == "failed" and first[0][1] < killed_at, (client, first)

    # Raw loads went through the COPY pool.
    pools = set(_meta("select distinct pool from task_instance where task_id = 'ingest' and dag_id = any(%s) "
                      "and start_date >= %s", DAG_IDS, began))
    assert pools == {("clientflow_staging_copy",)}, pools
    print(f"killed {killed} during ehrlogic's load (token {token_at_kill}); {survivor} retried it; "
          f"tries of ingest: {tries}")


@pytest.fixture(scope="module", autouse=True)
def _back_to_local() -> Any:
    yield
    subprocess.run([str(ROOT / "scripts" / "stack.sh"), "down"], cwd=ROOT, env=_env(), check=False)
    Path(STATE / "executor").unlink(missing_ok=True)
