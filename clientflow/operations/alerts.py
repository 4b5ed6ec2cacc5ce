"""What on-call reads: the text of every alert (failures, escalations, the watchdog's findings,
recoveries), and its delivery through the smtp provider's hook.

The text holds identifiers only. An exception that is not one of ours may quote data (dbt and
PostgreSQL echo values in their messages), so only its type is named and the log is pointed to.
Each alert names its runbook step (``docs/runbook.md``). The notifiers that send them on Airflow's
callbacks are in :mod:`clientflow.operations.notify`.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass

from clientflow.batch import Batch
from clientflow.errors import PipelineError

RUNBOOK = "docs/runbook.md"
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
    job = (b.ingestion_id if b else None) or "(not assigned)"
    subject = f"[clientflow] FAILED {failure.client} batch {day} run {run} job {job}: {failure.task_id}"
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

Next step: fix the cause, then reprocess: trigger the DAG with
batch_date={day if b else 'YYYY-MM-DD'}{f" and run_id={b.run_id}" if b and b.run_id else ''} (or clear this run from its ingest task).
Log: {failure.log_url or '(see the Airflow UI)'}
Runbook: {runbook("failed-batch")}
"""
    return subject, body


@dataclass(frozen=True)
class Incident:
    """A condition of one client that is alerted once when it starts and once when it ends."""

    client: str
    kind: str  # clientflow.operations.incidents.KINDS
    detail: str
    incident_id: int | None = None


TITLES = {
    "failing": "failing repeatedly",
    "stale": "no fresh data",
    "backlog": "batches waiting unprocessed",
    "failed_unreprocessed": "failed batches left unprocessed",
    "incomplete": "uploads left incomplete",
    "stuck": "batches stuck in flight",
}
STEPS = {
    "failing": "failing-repeatedly",
    "stale": "stale-client",
    "backlog": "backlog",
    "failed_unreprocessed": "failed-unreprocessed",
    "incomplete": "incomplete-upload",
    "stuck": "stuck-batch",
}


def compose_incident(incident: Incident, *, escalation: bool = False) -> tuple[str, str]:
    """The one alert of an incident's start (``escalation``: to the second line)."""
    label = "ESCALATED" if escalation else "ALERT"
    subject = f"[clientflow] {label} {incident.client}: {TITLES[incident.kind]}"
    body = f"""A clientflow incident started{' and is escalated to you' if escalation else ''}.

Client:    {incident.client}
Incident:  {incident.kind} (#{incident.incident_id})
What:      {incident.detail}

What was kept: production holds the client's last promoted batch; every batch's JSON files stay
in the bucket, so nothing is lost while this lasts.

This alert is sent once; a recovery notice follows when the condition ends.
Runbook: {runbook(STEPS[incident.kind])}
"""
    return subject, body


def compose_recovery(incident: Incident, how: str) -> tuple[str, str]:
    subject = f"[clientflow] RECOVERED {incident.client}: {TITLES[incident.kind]}"
    body = f"""A clientflow incident ended.

Client:    {incident.client}
Incident:  {incident.kind} (#{incident.incident_id})
Was:       {incident.detail}
Ended:     {how}
"""
    return subject, body


def runbook(step: str) -> str:
    return f"{RUNBOOK}#{step}"


def send(smtp_conn_id: str, recipients: Sequence[str], subject: str, body: str) -> None:
    """Send one alert through the Airflow connection ``smtp_conn_id`` (the smtp provider's hook:
    host, port, TLS, login and the sender's address all come from the connection)."""
    from airflow.providers.smtp.hooks.smtp import SmtpHook

    with SmtpHook(smtp_conn_id=smtp_conn_id) as hook:
        hook.send_email_smtp(to=list(recipients), subject=subject,
                             html_content=f"<pre>{html.escape(body)}</pre>",
                             custom_headers={"X-Clientflow-Alert": subject.split(" ", 2)[1]})
