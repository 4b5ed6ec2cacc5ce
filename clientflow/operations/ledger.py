"""The job ledger in PostgreSQL (schema ``pipeline``): the source of truth for batch state.

States: PENDING -> PROCESSING -> SUCCESS | FAILED, or DUPLICATE for a batch whose content was
already promoted. A FAILED batch can be retried: it goes back to PENDING and on from there.
Every change is appended to ``pipeline.batch_events`` with its time, the Airflow run that made it
and the S3 files it concerned, so a batch is traceable from its ingestion id to its files and back.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from datetime import date, datetime
from typing import TYPE_CHECKING, Any, NamedTuple

import psycopg

if TYPE_CHECKING:
    from clientflow.arrival import ArrivedTable

STATES = ("PENDING", "PROCESSING", "SUCCESS", "FAILED", "DUPLICATE", "REOFFERED")
DONE = ("SUCCESS", "DUPLICATE")
"""States whose content is not processed again (a REOFFERED batch is: its rejects get another chance)."""
IN_FLIGHT = ("PENDING", "PROCESSING")
"""States of a batch a run has taken up and not finished."""


def ingestion_id_for(client: str, day: date, job_ids: Sequence[str]) -> str:
    """Same client, date and file contents -> same id, however often the extractor ran."""
    text = "\0".join(["clientflow-batch-v1", client, day.isoformat(), *sorted(job_ids)])
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def state_of(conn: psycopg.Connection[Any], ingestion_id: str) -> str | None:
    row = conn.execute(
        "select state from pipeline.batches where ingestion_id = %s", (ingestion_id,)
    ).fetchone()
    return row[0] if row else None


class Holder(NamedTuple):
    """A batch's state, and the run that took it up last: its Airflow run id and lock token."""

    state: str | None
    fence_token: int | None = None
    airflow_run_id: str | None = None


def holder_of(conn: psycopg.Connection[Any], ingestion_id: str) -> Holder:
    """The batch's :class:`Holder` (every field None if the ledger does not know it)."""
    row = conn.execute(
        "select state, fence_token, airflow_run_id from pipeline.batches where ingestion_id = %s", (ingestion_id,)
    ).fetchone()
    return Holder(row[0], row[1], row[2]) if row else Holder(None)


def in_flight_elsewhere(conn: psycopg.Connection[Any], client: str, airflow_run_id: str | None) -> list[str]:
    """The client's batches PENDING or PROCESSING that another Airflow run took up last. Asked by
    the holder of the client's lock, these are batches whose run ended without an outcome."""
    return [row[0] for row in conn.execute(
        "select ingestion_id from pipeline.batches where client_name = %s and state = any(%s) "
        "and airflow_run_id is distinct from %s order by batch_date, created_at",
        (client, list(IN_FLIGHT), airflow_run_id))]


def record_batch(
    conn: psycopg.Connection[Any],
    ingestion_id: str,
    tables: Sequence[ArrivedTable],
    *,
    dag_id: str | None,
    airflow_run_id: str | None,
    fence_token: int | None = None,
) -> None:
    """Create (or reuse, for a retried batch) the ledger rows of a batch, in state PENDING.

    ``fence_token`` is the client lock's token of the run taking the batch up.
    """
    first = tables[0].manifest
    conn.execute(
        """
        insert into pipeline.batches
            (ingestion_id, client_name, batch_date, run_id, state, airflow_dag_id, airflow_run_id, fence_token)
        values (%s, %s, %s, %s, 'PENDING', %s, %s, %s)
        on conflict (ingestion_id) do update
            set state = 'PENDING', run_id = excluded.run_id, airflow_dag_id = excluded.airflow_dag_id,
                airflow_run_id = excluded.airflow_run_id, fence_token = excluded.fence_token,
                error = null, updated_at = clock_timestamp()
        """,
        (ingestion_id, first.client, first.date, first.run_id, dag_id, airflow_run_id, fence_token),
    )
    for arrived in tables:
        manifest = arrived.manifest
        conn.execute(
            """
            insert into pipeline.jobs (job_id, ingestion_id, client_name, table_name, source_file,
                                       manifest_file, row_count, sha256, extraction_mode, cursor_column)
            values (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
            on conflict (job_id, ingestion_id) do update
                set source_file = excluded.source_file, manifest_file = excluded.manifest_file
            """,
            (manifest.job_id, ingestion_id, manifest.client, manifest.table, arrived.files.data_key,
             arrived.files.manifest_key, manifest.row_count, manifest.sha256, manifest.extraction.mode,
             manifest.extraction.cursor_column),
        )
    _event(conn, ingestion_id, "PENDING", airflow_run_id, f"run_id={first.run_id}")


def set_state(
    conn: psycopg.Connection[Any],
    ingestion_id: str,
    state: str,
    *,
    airflow_run_id: str | None = None,
    detail: str | None = None,
    fence_token: int | None = None,
) -> None:
    """Move the batch to ``state``; with ``fence_token``, only if that run still owns the batch
    (a run whose batch was taken up again by a newer run of the same content changes nothing)."""
    if state not in STATES:
        raise ValueError(state)
    changed = conn.execute(
        "update pipeline.batches set state = %s, updated_at = clock_timestamp(), "
        "error = case when %s = 'FAILED' then %s else null end "
        "where ingestion_id = %s and (%s::bigint is null or fence_token is not distinct from %s::bigint)",
        (state, state, detail, ingestion_id, fence_token, fence_token),
    ).rowcount
    if changed:
        _event(conn, ingestion_id, state, airflow_run_id, detail)


def record_promoted(conn: psycopg.Connection[Any], ingestion_id: str, summary: dict[str, dict[str, int]]) -> None:
    """What the promotion did, per entity (offered, inserted, updated, unchanged)."""
    from psycopg.types.json import Jsonb

    conn.execute("update pipeline.batches set promoted = %s where ingestion_id = %s", (Jsonb(summary), ingestion_id))


def record_duplicate(
    conn: psycopg.Connection[Any],
    ingestion_id: str,
    files: Sequence[str],
    *,
    run_id: str,
    airflow_run_id: str | None,
) -> None:
    """Log a skipped re-delivery of promoted content; the batch's own state stays SUCCESS."""
    _event(conn, ingestion_id, "DUPLICATE", airflow_run_id, f"run_id={run_id} skipped", files)


def _event(
    conn: psycopg.Connection[Any],
    ingestion_id: str,
    state: str,
    airflow_run_id: str | None,
    detail: str | None,
    files: Sequence[str] | None = None,
) -> None:
    """Append one event; by default its files are the batch's current files (pipeline.jobs)."""
    conn.execute(
        "insert into pipeline.batch_events (ingestion_id, state, airflow_run_id, detail, source_files) "
        "values (%s, %s, %s, %s, coalesce(%s::text[], array(select source_file from pipeline.jobs "
        "where ingestion_id = %s order by table_name)))",
        (ingestion_id, state, airflow_run_id, detail, list(files) if files is not None else None, ingestion_id),
    )


def history(conn: psycopg.Connection[Any], ingestion_id: str) -> list[str]:
    """The batch's states, oldest first."""
    return [
        row[0]
        for row in conn.execute(
            "select state from pipeline.batch_events where ingestion_id = %s order by event_id",
            (ingestion_id,),
        )
    ]


def unfinished(conn: psycopg.Connection[Any], client: str, day: date, run_id: str,
               airflow_run_id: str | None) -> list[str]:
    """The client's batches of one date and extractor run that are still PENDING or PROCESSING and
    that ``airflow_run_id`` took up last: another run (a backfill beside a scheduled run) may be
    processing the same batch, and it is that run's to finish."""
    return [
        row[0] for row in conn.execute(
            "select ingestion_id from pipeline.batches where client_name = %s and batch_date = %s "
            "and run_id = %s and state = any(%s) and airflow_run_id is not distinct from %s",
            (client, day, run_id, list(IN_FLIGHT), airflow_run_id),
        )
    ]


def batches_in(conn: psycopg.Connection[Any], client: str,
               states: Sequence[str]) -> list[tuple[str, str, date, str]]:
    """The client's batches in one of ``states``: (ingestion id, state, date, run id), oldest first."""
    rows = conn.execute("select ingestion_id, state, batch_date, run_id from pipeline.batches where client_name = %s "
                        "and state = any(%s) order by batch_date, created_at", (client, list(states))).fetchall()
    return [(row[0], row[1], row[2], row[3]) for row in rows]


def newest_promotion(conn: psycopg.Connection[Any], client: str) -> datetime | None:
    """When the client's newest promoted batch was recorded SUCCESS; None if none was."""
    row = conn.execute("select max(updated_at) from pipeline.batches where client_name = %s and state = 'SUCCESS'",
                       (client,)).fetchone()
    return row[0] if row else None


def left_in(conn: psycopg.Connection[Any], client: str, states: Sequence[str],
            before: datetime) -> tuple[int, datetime | None]:
    """How many of the client's batches are in one of ``states`` unchanged since before ``before``,
    and the oldest one's last change: the watchdog's batches left alone."""
    row = conn.execute("select count(*), min(updated_at) from pipeline.batches where client_name = %s "
                       "and state = any(%s) and updated_at < %s", (client, list(states), before)).fetchone()
    return (int(row[0]), row[1]) if row else (0, None)


def unseen(conn: psycopg.Connection[Any], client: str,
           runs: Iterable[tuple[date, str]]) -> list[tuple[date, str]]:
    """Those of ``runs`` ((date, run id) of ``client``'s batches, in the caller's order) that the
    ledger does not hold in any state: the batches nobody has taken up yet. The sweep, the watchdog
    and offboarding look for these; a FAILED batch is seen (it waits for a person, not for a retry
    loop)."""
    runs = list(runs)
    if not runs:
        return []
    rows = conn.execute(
        "select batch_date, run_id from pipeline.batches where client_name = %s "
        "and (batch_date, run_id) in (select * from unnest(%s::date[], %s::text[]))",
        (client, [day for day, _ in runs], [run for _, run in runs])).fetchall()
    seen = {(row[0], row[1]) for row in rows}
    return [run for run in runs if run not in seen]


def prunable(conn: psycopg.Connection[Any], client: str, keep: int) -> list[str]:
    """Retention: batches older than the newest ``keep`` promoted ones, whose raw rows may go.

    Raw data is a queue: everything from the oldest kept promoted batch on stays, so a failed or
    unfinished newer batch never costs the last good one.
    """
    kept = conn.execute(
        "select batch_date, created_at from pipeline.batches where client_name = %s "
        "and state = 'SUCCESS' order by batch_date desc, created_at desc limit %s",
        (client, keep),
    ).fetchall()
    if len(kept) < keep:
        return []
    oldest_date, oldest_created = kept[-1]
    return [
        row[0] for row in conn.execute(
            "select ingestion_id from pipeline.batches where client_name = %s "
            "and (batch_date, created_at) < (%s, %s)",
            (client, oldest_date, oldest_created),
        )
    ]


class LedgerActionRefused(ValueError):
    """An on-call action that does not apply to the batch in its current state."""


def accept(conn: psycopg.Connection[Any], ingestion_id: str, by: str, reason: str, gates: Sequence[str]) -> None:
    """A data engineer accepts a batch a gate stopped: the next run passes those gates."""
    state = state_of(conn, ingestion_id)
    if state != "FAILED":
        raise LedgerActionRefused(f"batch {ingestion_id} is {state or 'unknown'}; only a FAILED (stopped) batch is accepted")
    conn.execute("insert into pipeline.acceptances (ingestion_id, accepted_by, reason, gates) values (%s, %s, %s, %s)",
                 (ingestion_id, by, reason, list(gates)))
    _event(conn, ingestion_id, "ACCEPTED", None, f"by {by}: {reason} (gates: {', '.join(gates)})")


def reoffer(conn: psycopg.Connection[Any], ingestion_id: str, by: str, reason: str) -> None:
    """Let a promoted batch run again (after a mapping fix): its refused rows get another chance;
    the rows already promoted are not rewritten (unchanged)."""
    state = state_of(conn, ingestion_id)
    if state not in ("SUCCESS", "FAILED"):
        raise LedgerActionRefused(f"batch {ingestion_id} is {state or 'unknown'}; only a SUCCESS or FAILED batch is re-offered")
    set_state(conn, ingestion_id, "REOFFERED", detail=f"by {by}: {reason}")


def batch_of(conn: psycopg.Connection[Any], ingestion_id: str) -> tuple[str, date, str] | None:
    """(client, batch date, run id) of a batch, for the trigger that runs it again."""
    row = conn.execute("select client_name, batch_date, run_id from pipeline.batches where ingestion_id = %s",
                       (ingestion_id,)).fetchone()
    return (row[0], row[1], row[2]) if row else None
