"""Failure emails for on-call: what broke, for which client, table, run and file, and what was kept.

The text holds identifiers only. An exception that is not one of ours may quote data (dbt and
PostgreSQL echo values in their messages), so only its type is named and the log is pointed to.
"""

from __future__ import annotations

import smtplib
from dataclasses import dataclass
from email.message import EmailMessage

from clientflow.batch import Batch
from clientflow.errors import PipelineError

KEPT = (
    "Production is unchanged by this batch (promotion commits all or nothing). Earlier raw "
    "batches are kept, and the batch's JSON files stay in the bucket for a re-run."
)


@dataclass(frozen=True)
class Failure:
    dag_id: str
    task_id: str
    airflow_run_id: str
    try_number: int
    client: str
    batch: Batch | None
    exception: BaseException | None
    log_url: str | None = None


def ours(exc: BaseException | None) -> PipelineError | None:
    """Our error behind Airflow's wrapper (AirflowFailException ... from PipelineError), if any."""
    seen = 0
    while exc is not None and seen < 5:
        if isinstance(exc, PipelineError):
            return exc
        exc, seen = exc.__cause__, seen + 1
    return None


def safe_reason(exc: BaseException | None) -> str:
    if exc is None:
        return "unknown (no exception recorded)"
    if (pipeline_error := ours(exc)) is not None:
        return str(pipeline_error)
    return f"{type(exc).__name__} (details withheld from email because they may quote data; see the task log)"


def compose(failure: Failure) -> tuple[str, str]:
    b = failure.batch
    day = b.day.isoformat() if b else "?"
    run = (b.run_id if b else None) or "(none complete yet)"
    subject = f"[clientflow] FAILED {failure.client} batch {day} run {run}: {failure.task_id}"
    files = "\n".join(f"  - {f.data_key}" for f in (b.files if b else ())) or "  (not yet resolved)"
    pipeline_error = ours(failure.exception)
    kept = pipeline_error.kept if pipeline_error is not None else KEPT
    body = f"""A clientflow batch failed and Airflow will not retry it further.

Client:        {failure.client}
Batch date:    {day}
Extractor run: {run}
Ingestion id:  {(b.ingestion_id if b else None) or '(not assigned)'}
DAG / task:    {failure.dag_id} / {failure.task_id} (try {failure.try_number})
Airflow run:   {failure.airflow_run_id}
Source files:
{files}

What broke:
  {safe_reason(failure.exception)}

What was kept:
  {kept}

Next step: fix the cause, then clear the failed task in the Airflow UI (or trigger the DAG with
batch_date={day if b else 'YYYY-MM-DD'}{f" and run_id={b.run_id}" if b and b.run_id else ''}).
Log: {failure.log_url or '(see the Airflow UI)'}
"""
    return subject, body


def send(host: str, port: int, sender: str, recipients: list[str], subject: str, body: str,
         *, user: str | None = None, password: str | None = None, starttls: bool = False) -> None:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = ", ".join(recipients)
    message["Subject"] = subject
    message.set_content(body)
    with smtplib.SMTP(host, port, timeout=30) as smtp:
        if starttls:
            smtp.starttls()
        if user:
            smtp.login(user, password or "")
        smtp.send_message(message)
