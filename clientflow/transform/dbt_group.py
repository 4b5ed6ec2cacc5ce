"""The transform task group: one Cosmos ``dbt build`` of the batch, with dbt's threads.

Cosmos's ``DbtBuildLocalOperator`` runs every model of the project and each model's tests, in
dependency order, in one dbt process (``--threads``): the client's staging tables, the change
sets, and the merge into dummy production. One dbt start-up per batch instead of one per model
(a task per model cost about 10 s each, even on 5,000 rows; ``ExecutionMode.WATCHER``, which keeps
a task per model, is experimental in Cosmos 1.15 and its sensors hang when a test fails). dbt's
log, which the task log shows, names every model and test with its timing. A build that lost its
database connection is retried (with the DAG's exponential backoff), and the retry first undoes
the batch's partial changes in dummy production; one that failed on the data is not retried.

dbt lives in its own virtualenv; Cosmos calls it through :mod:`clientflow.transform.dbt_scrubbed`,
which keeps the row values PostgreSQL quotes in its errors out of the task log.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from airflow.sdk import TaskGroup
from cosmos import ProfileConfig
from cosmos import settings as cosmos_settings
from cosmos.constants import InvocationMode
from cosmos.operators.local import DbtBuildLocalOperator
from cosmos.profiles import PostgresUserPasswordProfileMapping

from clientflow.config import ConnectionIds
from clientflow.db import pg_options
from clientflow.mapping import ClientMapping
from clientflow.transform.dbt_scrubbed import TRANSIENT_EXIT

PROJECT_DIR = Path(__file__).resolve().parent.parent.parent
DBT_DIR = PROJECT_DIR / "dbt"
DBT_EXECUTABLE = Path(__file__).resolve().with_name("dbt_scrubbed.py")
"""Runs the real dbt (CLIENTFLOW_DBT_EXECUTABLE, default .venv-dbt/bin/dbt) with its output scrubbed."""
THREADS = int(os.environ.get("CLIENTFLOW_DBT_THREADS", "4"))
"""dbt threads of a batch's build: models that do not depend on each other run at once."""


def batch_settings(batch: Mapping[str, Any]) -> dict[str, str]:
    """The batch's session settings of dbt (dbt/macros/batch.sql), from the XCom of ``ingest``:
    its ingestion id, its date and the fencing token of the client's lock. They reach dbt's
    sessions through PGOPTIONS rather than as dbt vars, which would make dbt parse the project from
    scratch for every batch (its vars changed): about 1.1 s of an incremental batch."""
    return {
        "clientflow.ingestion_id": str(batch["ingestion_id"]),
        "clientflow.batch_date": str(batch["date"]),
        "clientflow.fence_token": str(batch["lock"]["token"]),
    }


def profile(ids: ConnectionIds) -> ProfileConfig:
    """dbt logs in as the transformer role (its own connection): it reads raw, writes dbt's schemas
    and merges into dummy production, and cannot write the ledger or the raw tables."""
    return ProfileConfig(
        profile_name="clientflow",
        target_name="staging",
        profile_mapping=PostgresUserPasswordProfileMapping(
            conn_id=ids.transformer, profile_args={"schema": "dbt", "threads": THREADS}),
    )


class BatchDbtBuild(DbtBuildLocalOperator):  # type: ignore[misc]
    """The batch's ``dbt build``: a run that lost its database (``dbt_scrubbed`` says so with
    ``TRANSIENT_EXIT``) fails for a retry; a run that failed on the data fails for good (the batch
    is recorded FAILED and waits for its cause to be fixed). A retry first undoes what the earlier
    try merged into dummy production (``before_retry``), so it computes the batch's change set
    against dummy production as it was. That happens in the retry itself, not in a retry callback:
    a try whose process was killed runs no callback, and Airflow ends a callback that outlasts
    ``task_success_overtime`` (undoing a first load of 450,000 rows took longer).

    dbt's sessions get the batch's settings (:func:`batch_settings`) from the XCom of
    ``upstream`` (the task that loaded the batch), beside the pipeline's planner settings."""

    def __init__(self, *, before_retry: Callable[[dict[str, Any]], None] | None = None, upstream: str = "ingest",
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.before_retry = before_retry
        self.upstream = upstream

    def execute(self, context: Any) -> Any:
        if self.before_retry is not None and context["ti"].try_number > 1:
            self.before_retry(context)
        batch = context["ti"].xcom_pull(task_ids=self.upstream)
        if not batch:
            from airflow.sdk.exceptions import AirflowFailException

            raise AirflowFailException(f"no batch to build: task {self.upstream} returned none")
        env: dict[str, Any] = dict(getattr(self, "env", None) or {})
        self.env = {**env, "PGOPTIONS": pg_options(batch_settings(batch))}
        # Cosmos copies dbt's environment (the profile's password, the batch's PGOPTIONS) into
        # os.environ for its OpenLineage parsing; the process keeps its own environment.
        saved = dict(os.environ)
        try:
            return super().execute(context)
        finally:
            os.environ.clear()
            os.environ.update(saved)

    def handle_exception_subprocess(self, result: Any) -> None:
        from airflow.sdk.exceptions import AirflowException, AirflowFailException

        if result.exit_code == TRANSIENT_EXIT:
            raise AirflowException("dbt lost its database connection (a transient error): the batch's partial "
                                   "changes in dummy production are undone and the build is retried")
        if result.exit_code != 0:
            self.log.error("\n".join(result.full_output))
            raise AirflowFailException(f"dbt build failed (exit code {result.exit_code}): a model or test refused "
                                       "the batch; see dbt's lines above")


def dbt_task_group(mapping: ClientMapping, ids: ConnectionIds, group_id: str = "transform",
                   before_retry: Callable[[dict[str, Any]], None] | None = None) -> TaskGroup:
    """The batch's dbt build (every model, then its tests), in a task group of its own.
    ``before_retry``: what a retry after a transient database error does first (undo the partial build)."""
    with TaskGroup(group_id=group_id, tooltip="dbt build of the batch: staging, change sets, dummy production") as group:
        BatchDbtBuild(
            # dbt's partial-parse file of the client's last build, kept where Cosmos keeps its cache
            # (AIRFLOW__COSMOS__CACHE_DIR), one per DAG: a batch's build parses only the files that
            # changed (0.4 s), not the whole project (1.5 s). Cosmos finds this directory by itself
            # only for its DbtDag and DbtTaskGroup.
            cache_dir=Path(cosmos_settings.cache_dir) / f"{group.dag_id}__{group_id}",
            task_id="dbt_build",
            project_dir=str(DBT_DIR),
            profile_config=profile(ids),
            dbt_executable_path=str(DBT_EXECUTABLE),
            invocation_mode=InvocationMode.SUBPROCESS,
            select=["path:models"],
            vars=mapping.dbt_vars(),
            install_deps=False,
            retries=2,  # transient database errors only (BatchDbtBuild): a failure on the data is final
            before_retry=before_retry,
            emit_datasets=False,
            # The pipeline's planner settings (clientflow.db.SESSION_SETTINGS: no JIT compilation,
            # SSD costs for random reads): a batch of 14,000 appointments checks its patients by
            # index lookups, not by reading the client's 1,000,000 patients. execute() adds the
            # batch's settings (batch_settings).
            env={"PGOPTIONS": pg_options()},
        )
    return group
