"""Incidents: a condition of one client (repeated failures, stale data, a backlog, failed batches
left alone) that is alerted once when it starts and once when it ends, however many checks see it.

PostgreSQL keeps them (``pipeline.incidents``; at most one open per client and kind), so two
watchdog runs, or a failure callback beside a watchdog run, never send the same alert twice. The
caller opens or closes an incident, sends its alert, and only then commits: an alert that could not
be sent leaves the incident as it was, and the next check tries again.
"""

from __future__ import annotations

from typing import Any

import psycopg

from clientflow.operations.alerts import Incident

KINDS = ("failing", "stale", "backlog", "failed_unreprocessed", "incomplete", "stuck")


def open_incident(conn: psycopg.Connection[Any], client: str, kind: str, detail: str) -> Incident | None:
    """Open the client's incident of ``kind``; None if one is open already (nothing to send)."""
    if kind not in KINDS:
        raise ValueError(kind)
    row = conn.execute(
        "insert into pipeline.incidents (client_name, kind, detail) values (%s, %s, %s) "
        "on conflict (client_name, kind) where closed_at is null do nothing returning incident_id",
        (client, kind, detail),
    ).fetchone()
    return Incident(client, kind, detail, row[0]) if row else None


def close_incident(conn: psycopg.Connection[Any], client: str, kind: str, how: str) -> Incident | None:
    """Close the client's open incident of ``kind``; None if none was open (nothing to send)."""
    row = conn.execute(
        "update pipeline.incidents set closed_at = clock_timestamp(), closed_how = %s "
        "where client_name = %s and kind = %s and closed_at is null returning incident_id, detail",
        (how, client, kind),
    ).fetchone()
    return Incident(client, kind, row[1], row[0]) if row else None


def open_kinds(conn: psycopg.Connection[Any], client: str) -> set[str]:
    return {row[0] for row in conn.execute(
        "select kind from pipeline.incidents where client_name = %s and closed_at is null", (client,))}


def failed_in_a_row(conn: psycopg.Connection[Any], client: str) -> int:
    """How many of the client's batches are FAILED with no promotion since: a batch that failed
    three times counts once; the client's newest SUCCESS ends the streak."""
    row = conn.execute(
        """
        select count(*) from pipeline.batches
        where client_name = %s and state = 'FAILED'
          and updated_at > coalesce((select max(updated_at) from pipeline.batches
                                     where client_name = %s and state = 'SUCCESS'), '-infinity')
        """,
        (client, client),
    ).fetchone()
    return int(row[0]) if row else 0
