"""The Cosmos task group that runs a client's dbt models for one batch.

Cosmos renders the group from the committed-at-build ``dbt/target/manifest.json``
(``LoadMode.DBT_MANIFEST``), so parsing a DAG never runs dbt. dbt lives in its own virtualenv;
Cosmos calls it through :mod:`clientflow.transform.dbt_scrubbed`, which keeps the row values
PostgreSQL quotes in its errors out of the task log.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cosmos import DbtTaskGroup, ExecutionConfig, ProfileConfig, ProjectConfig, RenderConfig
from cosmos.constants import InvocationMode, LoadMode, TestBehavior
from cosmos.profiles import PostgresUserPasswordProfileMapping

from clientflow.config import ConnectionIds
from clientflow.mapping import ClientMapping

PROJECT_DIR = Path(__file__).resolve().parent.parent.parent
DBT_DIR = PROJECT_DIR / "dbt"
DBT_EXECUTABLE = Path(__file__).resolve().with_name("dbt_scrubbed.py")
"""Runs the real dbt (CLIENTFLOW_DBT_EXECUTABLE, default .venv-dbt/bin/dbt) with its output scrubbed."""


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
    """One task per model and one per model's tests (tests after each model), in dependency order."""
    return DbtTaskGroup(
        group_id=group_id,
        project_config=ProjectConfig(dbt_project_path=DBT_DIR, manifest_path=DBT_DIR / "target" / "manifest.json"),
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
            test_behavior=TestBehavior.AFTER_EACH,
            select=["path:models/practice"],
        ),
        operator_args={"vars": batch_vars(mapping), "install_deps": False},
        default_args={"retries": 0},
    )
