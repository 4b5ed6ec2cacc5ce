"""The on-call engineer's commands: ``clientflow status``, ``batches``, ``trace`` and ``reprocess``.

Each reads the ledger through the status page's read-only role (``clientflow_status``) and
prints names, identifiers, states and counts, never a value. ``reprocess`` is the one action:
after a FAILED batch's cause is fixed, it starts the client's DAG for that batch through Airflow's
REST API (``POST /api/v2/dags/{dag}/dagRuns``, with a token from ``/auth/token``), exactly what
the UI's Trigger form does with the same params.
"""

from __future__ import annotations

import json
import time
import urllib.parse
import urllib.request
from datetime import UTC, date, datetime
from typing import Any

import psycopg

from clientflow.operations import status

REPROCESSABLE = ("FAILED", "REOFFERED")


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    hours = seconds / 3600
    return f"{seconds / 60:.0f} min ago" if hours < 1 else f"{hours:.1f} h ago" if hours < 48 else f"{hours / 24:.1f} days ago"


def render_status(conn: psycopg.Connection[Any], clients: list[str], now: datetime | None = None) -> str:
    """One line per client: its last promoted batch and age, batches by state, open incidents."""
    out = [f"{'client':<16} {'last promoted':<24} {'age':<14} " + " ".join(f"{s.lower():>10}" for s in status.STATES)
           + "  incidents"]
    for client in clients:
        s = status.client_status(conn, client, now=now or datetime.now(UTC), recent=0)
        last = f"{s.last_promoted.batch_date} {s.last_promoted.run_id}" if s.last_promoted else "-"
        out.append(f"{client:<16} {last:<24.24} {_age(s.last_promoted_age_seconds):<14} "
                   + " ".join(f"{s.batches.get(k, 0):>10}" for k in status.STATES)
                   + f"  {', '.join(s.open_incidents) or '-'}")
    return "\n".join(out)


def _what(error: str | None) -> str:
    """The error without its ``[client=..., date=..., run=...]`` prefix (the line's columns say it)."""
    return "-" if not error else error.split("] ", 1)[-1][:160]


def render_batches(conn: psycopg.Connection[Any], client: str, limit: int) -> str:
    rows = status.client_status(conn, client, recent=limit).recent
    out = [f"{'date':<10}  {'run':<20}  {'job (ingestion id)':<32}  {'state':<10}  {'updated (UTC)':<19}  error"]
    for b in rows:
        out.append(f"{b.batch_date}  {b.run_id:<20.20}  {b.ingestion_id:<32}  {b.state:<10}  "
                   f"{b.updated_at.astimezone(UTC):%Y-%m-%d %H:%M:%S}  {_what(b.error)}")
    out.append(f"{len(rows)} batch(es) of {client}" + (" (limit reached)" if len(rows) == limit else ""))
    return "\n".join(out)


def resolve_job(conn: psycopg.Connection[Any], job: str) -> str | None:
    """A batch's ingestion id from itself or from one of its files' job ids (the manifests')."""
    row = conn.execute("select ingestion_id from pipeline.batches where ingestion_id = %s union all "
                       "select ingestion_id from pipeline.jobs where job_id = %s limit 1", (job, job)).fetchone()
    return row[0] if row else None


def render_trace(conn: psycopg.Connection[Any], ingestion_id: str) -> str | None:
    """Job id -> its files -> its ledger events and stage times -> the rows each stage held and
    production received."""
    t = status.batch_timeline(conn, ingestion_id)
    if t is None:
        return None
    b = t.batch
    out = [f"batch {b.ingestion_id} of client {t.client}: date {b.batch_date}, extractor run {b.run_id}, {b.state}",
           f"  airflow: {b.airflow_dag_id or '-'} run {b.airflow_run_id or '-'}"]
    if b.error:
        out.append(f"  error: {b.error}")
    out.append("files:")
    out += [f"  {f.table:<20} job {f.job_id}  {f.row_count} rows ({f.extraction_mode})  {f.source_file}"
            for f in t.files]
    out.append("events:")
    out += [f"  {e.at.astimezone(UTC):%Y-%m-%d %H:%M:%S.%f}  {e.state:<10} {e.airflow_run_id or '-'}"
            + (f"  {e.detail[:160]}" if e.detail else "") for e in t.events]
    out.append("stages:")
    out += [f"  {s.stage:<10} {s.outcome:<8} {s.seconds:8.1f} s  {s.airflow_run_id or '-'}" for s in t.stages]
    r = t.rows
    out.append(f"rows: manifest {r.manifest}, raw {r.raw}, refused {r.rejects}, dummy production {r.dummy_production}, "
               f"offered to production {r.production}")
    promoted = conn.execute("select promoted from pipeline.batches where ingestion_id = %s", (ingestion_id,)).fetchone()
    for entity, counts in sorted(((promoted[0] if promoted else None) or {}).items()):
        out.append(f"  production {entity:<13} " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    return "\n".join(out)


class NotReprocessable(ValueError):
    """The batch named is not one a reprocess applies to (unknown, or not FAILED)."""


def batch_to_reprocess(conn: psycopg.Connection[Any], client: str, day: date, run_id: str | None) -> dict[str, str]:
    """The Trigger params of the client's FAILED batch of ``day`` (its newest one, or run ``run_id``)."""
    rows = conn.execute("select run_id, state, ingestion_id from pipeline.batches where client_name = %s and "
                        "batch_date = %s and (%s::text is null or run_id = %s) order by created_at desc",
                        (client, day, run_id, run_id)).fetchall()
    if not rows:
        raise NotReprocessable(f"the ledger has no batch of {client} on {day}" + (f" run {run_id}" if run_id else ""))
    run, state, ingestion_id = rows[0]
    if state not in REPROCESSABLE:
        raise NotReprocessable(f"batch {ingestion_id} of {client} on {day} run {run} is {state}; only a FAILED "
                               "(or re-offered) batch is reprocessed")
    return {"batch_date": day.isoformat(), "run_id": run}


def _call(api_url: str, path: str, body: dict[str, Any] | None = None, token: str | None = None,
          method: str | None = None) -> dict[str, Any]:
    request = urllib.request.Request(api_url.rstrip("/") + path, method=method or ("POST" if body is not None else "GET"),
                                     data=json.dumps(body).encode() if body is not None else None,
                                     headers={"Content-Type": "application/json",
                                              **({"Authorization": f"Bearer {token}"} if token else {})})
    with urllib.request.urlopen(request, timeout=30) as answer:  # noqa: S310 - the operator's own Airflow URL
        return dict(json.loads(answer.read()))


def login(api_url: str, username: str, password: str) -> str:
    """A bearer token of Airflow's REST API."""
    return str(_call(api_url, "/auth/token", {"username": username, "password": password})["access_token"])


def trigger(api_url: str, token: str, dag_id: str, conf: dict[str, str], *, kind: str = "reprocess") -> str:
    """Start a run of ``dag_id`` with ``conf`` through Airflow's REST API (``token`` from
    :func:`login`); its run id."""
    run_id = f"{kind}__{conf['batch_date']}__{conf['run_id']}__{datetime.now(UTC):%Y%m%dT%H%M%S}"
    made = _call(api_url, f"/api/v2/dags/{dag_id}/dagRuns", {"dag_run_id": run_id, "logical_date": None, "conf": conf},
                 token)
    return str(made.get("dag_run_id", run_id))


def wait_for_run(api_url: str, token: str, dag_id: str, run_id: str, timeout: float, poll: float = 5.0) -> str:
    """The run's final state (success or failed), or ``timeout`` if it is still going after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        state = str(_call(api_url, f"/api/v2/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id)}", token=token)["state"])
        if state in ("success", "failed") or time.monotonic() > deadline:
            return state if state in ("success", "failed") else "timeout"
        time.sleep(poll)


class AirflowApi:
    """What ``clientflow offboard`` asks of Airflow's REST API for one DAG: its runs that are not
    over, their tasks' states; it marks a task's state (with a note the UI shows) and (un)pauses."""

    def __init__(self, api_url: str, token: str) -> None:
        self.api_url, self.token = api_url, token

    def _dag(self, dag_id: str, path: str = "") -> str:
        return f"/api/v2/dags/{urllib.parse.quote(dag_id)}{path}"

    def active_runs(self, dag_id: str) -> list[tuple[str, str]]:
        """(run id, state) of every run of the DAG that is running or queued."""
        found = _call(self.api_url, self._dag(dag_id, "/dagRuns?state=running&state=queued&limit=100"),
                      token=self.token)
        return [(str(r["dag_run_id"]), str(r["state"])) for r in found.get("dag_runs", [])]

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str | None]:
        found = _call(self.api_url, self._dag(dag_id, f"/dagRuns/{urllib.parse.quote(run_id)}/taskInstances?limit=100"),
                      token=self.token)
        return {str(t["task_id"]): t.get("state") for t in found.get("task_instances", [])}

    def mark_task(self, dag_id: str, run_id: str, task_id: str, state: str, note: str) -> None:
        _call(self.api_url, self._dag(dag_id, f"/dagRuns/{urllib.parse.quote(run_id)}/taskInstances/"
                                              f"{urllib.parse.quote(task_id)}"),
              {"new_state": state, "note": note}, self.token, method="PATCH")

    def is_paused(self, dag_id: str) -> bool:
        return bool(_call(self.api_url, self._dag(dag_id), token=self.token)["is_paused"])

    def set_paused(self, dag_id: str, paused: bool) -> None:
        _call(self.api_url, self._dag(dag_id, "?update_mask=is_paused"), {"is_paused": paused}, self.token,
              method="PATCH")


__all__ = ["AirflowApi", "NotReprocessable", "batch_to_reprocess", "render_batches", "render_status", "render_trace",
           "login", "resolve_job", "trigger", "wait_for_run"]
