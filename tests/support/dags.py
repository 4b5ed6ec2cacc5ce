"""Run a client DAG built from an in-memory mapping with ``dag.test()``.

``dag.test()`` only runs DAGs that the metadata database knows (it re-parses the dags folder to
find them). A test client's DAG is not in the dags folder, so it is written to the database
first, exactly as the DAG processor would write it, under the dags-folder bundle.
"""

from __future__ import annotations

import tempfile
from datetime import datetime
from typing import Any


def test_client_dag(mapping: Any, *, logical_date: datetime | None = None,
                    conf: dict[str, Any] | None = None) -> Any:
    from clientflow.dag_factory import build_client_dag

    return run_test_dag(build_client_dag(mapping), logical_date=logical_date, conf=conf)


def run_test_dag(dag: Any, *, logical_date: datetime | None = None, conf: dict[str, Any] | None = None) -> Any:
    """``dag.test()`` of any DAG object, written to the metadata database first."""
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.dagbag import DagBag, sync_bag_to_db

    DagBundlesManager().sync_bundles_to_db()
    with tempfile.TemporaryDirectory() as empty:
        bag = DagBag(dag_folder=empty)
        bag.bag_dag(dag)
        sync_bag_to_db(bag, "dags-folder", None)
    return dag.test(logical_date=logical_date, run_conf=conf)


test_client_dag.__test__ = False  # type: ignore[attr-defined]  # not a pytest test
