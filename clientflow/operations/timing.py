"""How long each stage of a run took, in ``pipeline.stage_runs``: the status page and the metrics
read it. Times are the worker's clock at the stage's start and end (not a transaction's start).

Recording is best effort: a stage's own outcome is never hidden by a failure to record its time
(that failure is logged by type, and the run goes on).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import psycopg

if TYPE_CHECKING:
    from clientflow.batch import Batch
    from clientflow.config import PostgresSettings

log = logging.getLogger(__name__)
STAGES = ("plan", "find_batch", "ingest", "transform", "validate", "promote")


@dataclass
class Span:
    """One stage of one run; the stage may name its batch once it knows it (ingest does)."""

    stage: str
    batch: Batch
    airflow_run_id: str | None
    started_at: datetime
    outcome: str = "failed"


def record(conn: psycopg.Connection[Any], span: Span, finished_at: datetime) -> None:
    b = span.batch
    conn.execute(
        "insert into pipeline.stage_runs (client_name, ingestion_id, batch_date, stage, airflow_run_id, outcome, "
        "started_at, finished_at) values (%s, %s, %s, %s, %s, %s, %s, %s)",
        (b.client, b.ingestion_id, b.day, span.stage, span.airflow_run_id, span.outcome, span.started_at, finished_at),
    )


def record_transform(conn: psycopg.Connection[Any], batch: Batch, airflow_run_id: str | None,
                     validate_started: datetime) -> None:
    """The transform span of a batch: from its ingest's end to its validate's start (the dbt task
    group runs between them); nothing if this run did not ingest it."""
    row = conn.execute(
        "select max(finished_at) from pipeline.stage_runs where ingestion_id = %s and stage = 'ingest' "
        "and outcome = 'success' and airflow_run_id is not distinct from %s",
        (batch.ingestion_id, airflow_run_id),
    ).fetchone()
    if row and row[0] is not None:
        record(conn, Span("transform", batch, airflow_run_id, row[0], "success"), validate_started)


@contextmanager
def timed(settings: PostgresSettings, stage: str, batch: Batch, airflow_run_id: str | None) -> Iterator[Span]:
    """Time the block as ``stage`` of ``batch``; the outcome follows how the block ends."""
    from clientflow.errors import DuplicateBatch, NothingToProcess
    from clientflow.operations.locks import LockBusy

    span = Span(stage, batch, airflow_run_id, datetime.now(UTC))
    try:
        yield span
        span.outcome = "success"
    except (DuplicateBatch, NothingToProcess):
        span.outcome = "skipped"
        raise
    except LockBusy:
        span.outcome = "waiting"
        raise
    finally:
        finished = datetime.now(UTC)
        try:
            with psycopg.connect(settings.conninfo(), connect_timeout=10) as conn:
                record(conn, span, finished)
                if stage == "validate" and span.batch.ingestion_id:
                    record_transform(conn, span.batch, airflow_run_id, span.started_at)
        except psycopg.Error as err:
            log.warning("[client=%s] could not record the %s stage's time: %s", batch.client, stage,
                        type(err).__name__)
