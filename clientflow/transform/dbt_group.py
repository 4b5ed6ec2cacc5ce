"""The Cosmos task group that runs a client's dbt models for one batch.

Cosmos renders the group from the committed-at-build ``dbt/target/manifest.json``
(``LoadMode.DBT_MANIFEST``), so parsing a DAG never runs dbt. dbt lives in its own virtualenv;
Cosmos calls it through :mod:`clientflow.transform.dbt_scrubbed`, which keeps the row values
PostgreSQL quotes in its errors out of the task log.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, ClassVar

import cosmos.converter
from cosmos import DbtTaskGroup, ExecutionConfig, ProfileConfig, ProjectConfig, RenderConfig
from cosmos.constants import InvocationMode, LoadMode, TestBehavior
from cosmos.dbt.graph import DbtGraph
from cosmos.profiles import PostgresUserPasswordProfileMapping

from clientflow.config import ConnectionIds
from clientflow.mapping import ClientMapping

PROJECT_DIR = Path(__file__).resolve().parent.parent.parent
DBT_DIR = PROJECT_DIR / "dbt"
MANIFEST = DBT_DIR / "target" / "manifest.json"
DBT_EXECUTABLE = Path(__file__).resolve().with_name("dbt_scrubbed.py")
"""Runs the real dbt (CLIENTFLOW_DBT_EXECUTABLE, default .venv-dbt/bin/dbt) with its output scrubbed."""


class _ManifestGraph(DbtGraph):
    """Cosmos's graph of the dbt project, read from the manifest once per process.

    Every client's DAG renders the same project with the same selection (only the dbt vars
    differ), but Cosmos reads and filters the manifest again for each DAG: with 200 clients that
    was two of the five seconds a parse of the DAG folder took. The nodes are copied for each DAG,
    so no DAG can change another's. The key includes the manifest's mtime: a rebuilt manifest is
    read again.
    """

    _loaded: ClassVar[dict[tuple[str, ...], tuple[Any, ...]]] = {}

    def load(self, method: Any = LoadMode.AUTOMATIC, execution_mode: Any = None) -> None:
        path = str(self.project.manifest_path)
        rc = self.render_config
        key = (path, str(os.stat(path).st_mtime_ns), str(method), str(execution_mode), str(rc.test_behavior),
               repr(rc.select), repr(rc.exclude))
        fields = ("nodes", "filtered_nodes", "tests_per_model", "load_method")
        if key not in self._loaded:
            super().load(method=method, execution_mode=execution_mode)
            self._loaded[key] = tuple(getattr(self, name) for name in fields)
        for name, value in zip(fields, copy.deepcopy(self._loaded[key]), strict=True):
            setattr(self, name, value)


# Cosmos builds its graph through this name (cosmos.converter.DbtToAirflowConverter).
cosmos.converter.DbtGraph = _ManifestGraph  # type: ignore[misc]


def batch_vars(mapping: ClientMapping, upstream: str = "ingest") -> dict[str, Any]:
    """dbt vars: the mapping's, plus the batch's ingestion id, date and fencing token (templated
    from the XCom of the ``upstream`` task when the task runs)."""
    pull = f"ti.xcom_pull(task_ids='{upstream}')"
    return {
        **mapping.dbt_vars(),
        "ingestion_id": f"{{{{ {pull}['ingestion_id'] }}}}",
        "batch_date": f"{{{{ {pull}['date'] }}}}",
        "fence_token": f"{{{{ {pull}['lock']['token'] }}}}",
    }


def dbt_task_group(mapping: ClientMapping, ids: ConnectionIds, group_id: str = "transform") -> DbtTaskGroup:
    """One task per model (its `dbt build`: the model, then its tests), in dependency order."""
    return DbtTaskGroup(
        group_id=group_id,
        project_config=ProjectConfig(dbt_project_path=DBT_DIR, manifest_path=MANIFEST),
        profile_config=ProfileConfig(
            profile_name="clientflow",
            target_name="staging",
            profile_mapping=PostgresUserPasswordProfileMapping(conn_id=ids.staging, profile_args={"schema": "dbt"}),
        ),
        execution_config=ExecutionConfig(dbt_executable_path=str(DBT_EXECUTABLE),
                                         invocation_mode=InvocationMode.SUBPROCESS),
        render_config=RenderConfig(
            load_method=LoadMode.DBT_MANIFEST,
            dbt_executable_path=str(DBT_EXECUTABLE),
            invocation_mode=InvocationMode.SUBPROCESS,
            # One task per model runs `dbt build` of it: the model, then its tests, in one dbt
            # process (half the tasks and half the dbt start-ups of a run task plus a test task).
            test_behavior=TestBehavior.BUILD,
            select=["path:models/staging", "path:models/practice"],
        ),
        operator_args={"vars": batch_vars(mapping), "install_deps": False},
        default_args={"retries": 0},
    )
