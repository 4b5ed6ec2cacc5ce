"""Every line of a client task's log names the client, the job and the stage.

Airflow 3 writes task logs through structlog, and its processors merge structlog's context
variables into every event: Airflow's own lines, ours, and those of any library that logs through
the standard library (``merge_contextvars`` in Airflow's logging configuration). :func:`bind`
sets ours when a task starts (the client DAG's ``on_execute_callback``, Cosmos's dbt tasks
included), and :func:`bind_job` again as soon as the raw load has named the job. The task body
runs in a copy of the context, so the ``post_execute`` hook binds the job once more from the
body's result, for the lines Airflow writes after it. Before that the
job is ``pending``: the plan and the sensor run before a batch has a job id.

The fields are names and identifiers, never a row value: ``client``, ``job_id`` (the ingestion
id the ledger and the emails use), ``stage`` (the task id), ``batch_date`` and ``extract_run``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import structlog

if TYPE_CHECKING:
    from clientflow.batch import Batch

PENDING = "pending"
FIELDS = ("client", "job_id", "stage", "batch_date", "extract_run")


def bind(client: str, stage: str, batch: Batch | None = None) -> None:
    """Name this task's client, stage and (as far as it is known) job on every later line."""
    structlog.contextvars.unbind_contextvars(*FIELDS)
    structlog.contextvars.bind_contextvars(
        client=client, stage=stage, job_id=(batch.ingestion_id if batch else None) or PENDING,
        batch_date=batch.day.isoformat() if batch else PENDING,
        extract_run=(batch.run_id if batch else None) or PENDING,
    )


def bind_job(batch: Batch) -> None:
    """The job id (and the batch it names) became known in the middle of a task."""
    structlog.contextvars.bind_contextvars(
        client=batch.client, job_id=batch.ingestion_id or PENDING, batch_date=batch.day.isoformat(),
        extract_run=batch.run_id or PENDING,
    )


def current() -> dict[str, str]:
    """The fields bound now (empty outside a client task)."""
    bound = structlog.contextvars.get_contextvars()
    return {k: str(bound[k]) for k in FIELDS if k in bound}
