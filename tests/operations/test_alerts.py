"""Failure emails name client, date, run and files, say what was kept, and never quote data."""

from __future__ import annotations

from datetime import date

import psycopg
import pytest

from clientflow.batch import Batch, BatchFile
from clientflow.db import describe_db_error
from clientflow.errors import IntegrityError, Where
from clientflow.operations import alerts

DATA_KEY = "client=ehrlogic/table=dim_patient/date=20261122/run_id=R/data.json"
BATCH = Batch(client="ehrlogic", day=date(2026, 11, 22), run_id="20261122T010203Z-abc123", ingestion_id="f" * 32,
              files=(BatchFile("dim_patient", DATA_KEY, DATA_KEY.replace("data.json", "manifest.json")),))


def _failure(exc: BaseException) -> alerts.Failure:
    return alerts.Failure(dag_id="client_ehrlogic", task_id="ingest", airflow_run_id="manual__1",
                          try_number=1, client="ehrlogic", batch=BATCH, exception=exc)


def test_our_error_is_quoted_with_what_was_kept() -> None:
    exc = IntegrityError("checksum mismatch", Where(client="ehrlogic", table="dim_patient", file="s3://b/k"))
    wrapped = RuntimeError("wrapper")
    wrapped.__cause__ = exc
    subject, body = alerts.compose(_failure(wrapped))
    assert "ehrlogic" in subject and "2026-11-22" in subject and "ingest" in subject
    for needle in ("checksum mismatch", "table=dim_patient", "20261122T010203Z-abc123", DATA_KEY,
                   "nothing was committed for this batch"):
        assert needle in body


def test_foreign_errors_are_withheld() -> None:
    secret = "Failing row contains (ehrlogic, 42, Jane, Doe, 1980-01-01)"
    _, body = alerts.compose(_failure(ValueError(secret)))
    assert "Jane" not in body and "1980-01-01" not in body
    assert "ValueError" in body and "Production is unchanged" in body


def test_database_errors_keep_names_drop_values(scratch_db: str) -> None:
    with psycopg.connect(scratch_db) as conn:
        conn.execute("create table t (id int primary key, email text check (email = lower(email)))")
        with pytest.raises(psycopg.Error) as info:
            conn.execute("insert into t values (1, 'Jane.Doe@Example.COM')")
    text = describe_db_error(info.value)
    assert "Jane" not in text and "CheckViolation" in text and "t_email_check" in text
    assert "Jane" in str(info.value)  # what PostgreSQL itself would have leaked


def test_a_batch_that_never_arrived_is_named_by_its_date() -> None:
    planned = Batch(client="ehrlogic", day=date(2026, 11, 22))
    failure = alerts.Failure(dag_id="client_ehrlogic", task_id="wait_for_batch", airflow_run_id="scheduled__1",
                             try_number=1, client="ehrlogic", batch=planned, exception=None)
    subject, body = alerts.compose(failure)
    assert subject == ("[clientflow] FAILED ehrlogic batch 2026-11-22 run (none complete yet) job (not assigned): "
                       "wait_for_batch")
    assert "trigger the DAG with\nbatch_date=2026-11-22 (or clear this run from its ingest task)." in body
