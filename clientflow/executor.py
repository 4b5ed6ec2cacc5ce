"""The local stack's executor: Airflow's LocalExecutor, whose workers start with the third-party
modules every clientflow task imports already imported.

A LocalExecutor worker forks a process for each task, and that process parses the client's DAG
file before it runs the task: 0.26-0.34 s on the local stack, most of it importing boto3 and the
Amazon provider's S3 sensor, psycopg, Cosmos (its profile mappings) and the standard provider's
operators. The workers are forked from the scheduler when the executor starts, so what is imported
then is in every task's process from its first instruction: the parse falls to about 0.08 s. A
batch runs seven tasks one after the other, so that is more than a second of every batch (an
incremental batch takes about 18 s from its last manifest to production).

Only third-party modules are preloaded, never clientflow's own: a task still reads the pipeline's
code from disk, so a change to it reaches the next task without a restart of the scheduler, and
the DAGs the dag-processor shows are built by the same code as the tasks that run them.

``scripts/stack.sh`` selects it (``AIRFLOW__CORE__EXECUTOR=clientflow.executor.PreloadingLocalExecutor``).
"""

from __future__ import annotations

import importlib

from airflow.executors.local_executor import LocalExecutor

PRELOADED = (
    "boto3",
    "psycopg",
    "pydantic",
    "redis",
    "yaml",
    "packaging.requirements",
    "airflow.dag_processing.dagbag",
    "airflow.providers.amazon.aws.sensors.s3",
    "airflow.providers.common.messaging.triggers.msg_queue",
    "airflow.providers.standard.decorators.python",
    "airflow.providers.standard.operators.trigger_dagrun",
    "airflow.sdk.definitions.decorators.setup_teardown",
    "cosmos.operators.local",
    "cosmos.profiles",
)
"""What parsing a client's DAG file imports besides clientflow (tests/test_executor.py keeps the
list complete)."""


def preload() -> None:
    for name in PRELOADED:
        importlib.import_module(name)


class PreloadingLocalExecutor(LocalExecutor):
    """``LocalExecutor`` that imports :data:`PRELOADED` before it forks its workers."""

    def start(self) -> None:
        preload()
        super().start()
