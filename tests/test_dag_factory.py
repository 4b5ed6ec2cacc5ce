"""DAG integrity: every DAG imports, is tagged, retries, and parsing touches no network or database.

Astro's generated DAG tests, plus clientflow's own rules for client DAGs.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from clientflow import airflow_edge as edge
from clientflow.mapping import load_mapping

ROOT = Path(__file__).resolve().parent.parent
DAGS = ROOT / "dags"
MAPPINGS = ROOT / "include" / "mappings"


@pytest.fixture(scope="module")
def dagbag():  # type: ignore[no-untyped-def]
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS))


def test_no_import_errors(dagbag) -> None:  # type: ignore[no-untyped-def]
    assert dagbag.import_errors == {}


def test_one_dag_per_mapping_file(dagbag) -> None:  # type: ignore[no-untyped-def]
    clients = sorted(p.stem for p in (ROOT / "include" / "mappings").glob("*.yaml"))
    assert sorted(dagbag.dag_ids) == sorted(["clientflow_watchdog", *(f"client_{c}" for c in clients)])


def test_watchdog_runs_every_quarter_hour_alone(dagbag) -> None:  # type: ignore[no-untyped-def]
    dag = dagbag.dags["clientflow_watchdog"]
    assert dag.timetable.expression == "*/15 * * * *" and dag.max_active_runs == 1 and dag.catchup is False
    assert [t.task_id for t in dag.tasks] == ["watch"]


def test_client_dags_alert_through_notifiers(dagbag) -> None:  # type: ignore[no-untyped-def]
    from airflow.sdk import BaseNotifier

    from clientflow.operations.notify import BatchFailureEmail, EscalationNotifier, RecoveryNotifier

    dag = dagbag.dags["client_ehrlogic"]
    for t in dag.tasks:
        callbacks = t.on_failure_callback
        assert isinstance(callbacks, list) and len(callbacks) >= 3, t.task_id
        assert [type(c) for c in callbacks[1:3]] == [BatchFailureEmail, EscalationNotifier], t.task_id
        assert all(isinstance(c, BaseNotifier) for c in callbacks[1:])
    assert [type(c) for c in dag.get_task("promote").on_success_callback] == [RecoveryNotifier]


def test_dags_are_tagged_and_retry(dagbag) -> None:  # type: ignore[no-untyped-def]
    for dag_id, dag in dagbag.dags.items():
        assert dag.tags, dag_id
        for task in dag.tasks:
            # dbt's task too, for transient database errors only (BatchDbtBuild fails data errors for good)
            assert task.retries >= 2, (dag_id, task.task_id)
            assert task.retry_exponential_backoff, (dag_id, task.task_id)


def test_client_dags_run_one_at_a_time(dagbag) -> None:  # type: ignore[no-untyped-def]
    for dag_id, dag in dagbag.dags.items():
        if dag_id.startswith("client_"):
            assert dag.max_active_runs == 1, dag_id
            assert dag.catchup is False


def test_client_dag_shape(dagbag) -> None:  # type: ignore[no-untyped-def]
    dag = dagbag.dags["client_ehrlogic"]
    assert {t.task_id: sorted(t.upstream_task_ids) for t in dag.tasks} == {
        "plan": [], "wait_for_batch": ["plan"], "find_batch": ["plan", "wait_for_batch"], "ingest": ["find_batch"],
        # one dbt build of the whole batch (every model, then its tests), in the transform group
        "transform.dbt_build": ["ingest"],
        "validate": ["ingest", "transform.dbt_build"], "promote": ["ingest", "validate"],
        # the sweep, beside the batch: the next unprocessed batch in the bucket gets its own run
        "next_batch": ["plan"], "run_next_batch": ["next_batch"],
    }
    assert dag.get_task("wait_for_batch").deferrable
    build = dag.get_task("transform.dbt_build")
    assert build.retries == 2 and build.retry_exponential_backoff
    assert build.before_retry is edge.undo_before_retry  # a retry starts from dummy production as it was
    assert build.env["PGOPTIONS"] == "-c jit=off -c random_page_cost=1.1"  # dbt plans as the pipeline does
    # the batch reaches dbt as session settings (added when the task runs), not as vars: the vars
    # are the same for every batch of the client, and dbt parses the project partially
    assert build.vars == load_mapping(MAPPINGS / "ehrlogic.yaml").dbt_vars()


_NO_IO = r"""
import socket, sys
def refuse(*args, **kwargs):
    raise RuntimeError("network or database call during DAG parsing")
socket.socket.connect = refuse
socket.create_connection = refuse
socket.getaddrinfo = refuse
import psycopg
psycopg.connect = refuse
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder=sys.argv[1])
print("ERRORS", bag.import_errors)
print("DAGS", sorted(bag.dag_ids))
sys.exit(1 if bag.import_errors or not bag.dag_ids else 0)
"""


def test_parsing_makes_no_network_or_database_call() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", _NO_IO, str(DAGS)], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "client_ehrlogic" in done.stdout


_BAG = r"""
import json, sys
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder=sys.argv[1])
print("RESULT " + json.dumps({
    "errors": {k: str(v) for k, v in bag.import_errors.items()},
    "dags": {d: {"tags": sorted(dag.tags), "description": dag.description, "doc": dag.doc_md or "",
                 "tasks": len(dag.tasks)} for d, dag in bag.dags.items()},
}))
"""


def _parse(mappings: Path, only: str | None = None) -> dict:  # type: ignore[type-arg]
    import json

    env = {**os.environ, "CLIENTFLOW_MAPPINGS_DIR": str(mappings)}
    if only:
        env["_AIRFLOW_PARSING_CONTEXT_DAG_ID"] = only
    done = subprocess.run([sys.executable, "-c", _BAG, str(DAGS)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def three_clients(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """alpha and gamma are fine; beta's file has a typo in a field name on line 12."""
    folder = tmp_path_factory.mktemp("mappings")
    text = (ROOT / "include" / "mappings" / "ehrlogic.yaml").read_text()
    for client in ("alpha", "beta", "gamma"):
        body = text.replace("client: ehrlogic", f"client: {client}")
        if client == "beta":
            body = body.replace("raw_retention_batches: 2", "raw_retension_batches: 2")
        (folder / f"{client}.yaml").write_text(body)
    return folder


def test_a_malformed_mapping_costs_only_its_own_client(three_clients: Path) -> None:
    parsed = _parse(three_clients)
    assert parsed["errors"] == {}
    assert sorted(parsed["dags"]) == ["client_alpha", "client_beta", "client_gamma", "clientflow_watchdog"]
    assert parsed["dags"]["client_alpha"]["tasks"] == parsed["dags"]["client_gamma"]["tasks"] == 9
    beta = parsed["dags"]["client_beta"]
    line = next(i for i, x in enumerate((three_clients / "beta.yaml").read_text().splitlines(), 1) if "retension" in x)
    assert "broken-mapping" in beta["tags"] and beta["tasks"] == 1
    assert f"beta.yaml:{line}: raw_retension_batches: Extra inputs are not permitted" in beta["description"]
    assert "raw_retension_batches" in beta["doc"] and "clientflow check-mapping beta.yaml" in beta["doc"]


def test_a_task_process_builds_only_its_own_dag(three_clients: Path) -> None:
    assert sorted(_parse(three_clients, only="client_gamma")["dags"]) == ["client_gamma"]


def test_the_placeholder_fails_with_the_mapping_error(three_clients: Path) -> None:
    from airflow.sdk.exceptions import AirflowFailException

    from clientflow.dag_factory import broken_mapping_dag
    from clientflow.mapping import MappingError, load_mapping

    path = three_clients / "beta.yaml"
    with pytest.raises(MappingError) as error:
        load_mapping(path)
    dag = broken_mapping_dag("client_beta", path, error.value)
    task = dag.get_task("mapping_error")
    with pytest.raises(AirflowFailException, match="raw_retension_batches: Extra inputs are not permitted"):
        task.python_callable()  # type: ignore[attr-defined]
