"""DAG integrity: every DAG imports, is tagged, retries, and parsing touches no network or database.

Astro's generated DAG tests, plus clientflow's own rules for client DAGs.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DAGS = ROOT / "dags"


@pytest.fixture(scope="module")
def dagbag():  # type: ignore[no-untyped-def]
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS))


def test_no_import_errors(dagbag) -> None:  # type: ignore[no-untyped-def]
    assert dagbag.import_errors == {}


def test_one_dag_per_mapping_file(dagbag) -> None:  # type: ignore[no-untyped-def]
    clients = sorted(p.stem for p in (ROOT / "include" / "mappings").glob("*.yaml"))
    assert sorted(dagbag.dag_ids) == [f"client_{c}" for c in clients]


def test_dags_are_tagged_and_retry(dagbag) -> None:  # type: ignore[no-untyped-def]
    for dag_id, dag in dagbag.dags.items():
        assert dag.tags, dag_id
        for task in dag.tasks:
            if task.task_id.startswith("transform."):
                continue  # dbt tasks fail fast: a failing model or test is not transient
            assert task.retries >= 2, (dag_id, task.task_id)
            assert task.retry_exponential_backoff, (dag_id, task.task_id)


def test_client_dags_run_one_at_a_time(dagbag) -> None:  # type: ignore[no-untyped-def]
    for dag_id, dag in dagbag.dags.items():
        if dag_id.startswith("client_"):
            assert dag.max_active_runs == 1, dag_id
            assert dag.catchup is False


def test_client_dag_shape(dagbag) -> None:  # type: ignore[no-untyped-def]
    dag = dagbag.dags["client_ehrlogic"]
    ids = {t.task_id for t in dag.tasks}
    assert {"plan", "wait_for_batch", "find_batch", "ingest", "validate", "promote"} <= ids
    assert {"transform.patients.run", "transform.patients.test", "transform.appointments.run"} <= ids
    wait = dag.get_task("wait_for_batch")
    assert wait.deferrable
    # Appointments are merged only after the patients and providers they reference passed their tests.
    upstream = dag.get_task("transform.appointments.run").upstream_task_ids
    assert {"transform.patients.test", "transform.providers.test"} <= upstream
    assert dag.get_task("promote").upstream_task_ids == {"validate", "ingest"}


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
