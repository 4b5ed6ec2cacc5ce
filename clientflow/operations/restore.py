"""Restore a client's production rows from the JSON files kept in the bucket (``clientflow restore``).

When production lost a client's rows (a table restored from an older backup, a hand-made fix gone
wrong, a new production database), every batch the ledger promoted is still in the bucket: the
files are never deleted. A restore replays them, oldest first:

1. **Refuse while the client is busy**: a batch PENDING or PROCESSING, or the client's lock held.
2. **Dummy production := production.** Under the client's lock (so no run starts meanwhile), the
   client's rows of dummy production are replaced by production's, children deleted first and
   parents copied first. Each replayed batch's change set is then computed against what production
   really holds: a row production lost is a new row again.
3. **Re-offer** each promoted batch from ``--since`` on (ledger event REOFFERED, with who and why),
   and run them one at a time in batch-date order, each through the whole pipeline (checksums,
   drift, gates, promotion). The promotion's rules make it safe: a row written by a newer batch is
   never overwritten by an older one, an unchanged row is not rewritten, and a replay of the same
   content changes nothing.

Batches of a full-snapshot table before its newest full snapshot matter only for rows the newer
batches do not carry; replaying from the first batch is the default, ``--since`` shortens it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from typing import Any

import psycopg
from psycopg import sql

from clientflow.config import PipelineSettings
from clientflow.db import relay_copy, set_tenant
from clientflow.entities import ENTITY_ORDER, PRACTICE_SCHEMA, entity
from clientflow.operations import ledger, locks
from clientflow.promotion.undo import forget_undo

log = logging.getLogger(__name__)


class RestoreRefused(RuntimeError):
    """The client is busy, or there is nothing to restore."""


@dataclass(frozen=True)
class Replay:
    ingestion_id: str
    day: date
    run_id: str

    def conf(self) -> dict[str, str]:
        """The client DAG's Trigger params for this batch."""
        return {"batch_date": self.day.isoformat(), "run_id": self.run_id}


def plan(conn: psycopg.Connection[Any], client: str, since: date | None = None) -> list[Replay]:
    """The client's promoted batches from ``since`` on, oldest first (a date's runs in upload order)."""
    rows = conn.execute(
        "select ingestion_id, batch_date, run_id from pipeline.batches where client_name = %s "
        "and state in ('SUCCESS', 'REOFFERED') and (%s::date is null or batch_date >= %s::date) "
        "order by batch_date, created_at", (client, since, since)).fetchall()
    return [Replay(r[0], r[1], r[2]) for r in rows]


def _busy(conn: psycopg.Connection[Any], client: str) -> list[str]:
    return [f"{iid} ({state})" for iid, state, _day, _run in ledger.batches_in(conn, client, ledger.IN_FLIGHT)]


def sync_dummy_production(staging: psycopg.Connection[Any], production: psycopg.Connection[Any],
                          client: str) -> dict[str, int]:
    """Replace the client's rows of dummy production (staging) by production's; rows per entity.
    Undo rows a failed run left behind go too: undoing them would now take dummy production away
    from production. The caller commits staging."""
    set_tenant(production, client)
    for name in reversed(ENTITY_ORDER):  # children first: no foreign key is broken on the way
        staging.execute(sql.SQL("delete from {} where client_id = %s").format(sql.Identifier(PRACTICE_SCHEMA, name)),
                        (client,))
    copied = {}
    for name in ENTITY_ORDER:  # parents first
        table = sql.Identifier(PRACTICE_SCHEMA, name)
        cols = sql.SQL(", ").join(map(sql.Identifier, entity(name).production_columns))
        out_sql = sql.SQL("copy (select {} from {} where client_id = {}) to stdout (format binary)").format(
            cols, table, sql.Literal(client))
        in_sql = sql.SQL("copy {} ({}) from stdin (format binary)").format(table, cols)
        relay_copy(production, out_sql, staging, in_sql)
        row = staging.execute(sql.SQL("select count(*) from {} where client_id = %s").format(table),
                              (client,)).fetchone()
        copied[name] = int(row[0]) if row else 0
    forget_undo(staging, client, None)  # dummy production is production's now: nothing to undo
    return copied


def prepare(settings: PipelineSettings, client: str, *, by: str, reason: str,
            since: date | None = None) -> tuple[list[Replay], dict[str, int]]:
    """Steps 1 to 3 but the runs: the batches to replay, re-offered, and dummy production's rows
    per entity after the sync."""
    with psycopg.connect(settings.staging.conninfo()) as staging:
        busy = _busy(staging, client)
        if busy:
            raise RestoreRefused(f"client {client} has batches in flight: {', '.join(busy)}; "
                                 "wait for them (or mark their runs failed) and restore again")
        replays = plan(staging, client, since)
        if not replays:
            raise RestoreRefused(f"the ledger has no promoted batch of {client}"
                                 + (f" since {since}" if since else "") + ": nothing to restore")
        try:
            lock = locks.acquire(settings.redis, staging, client, f"restore by {by}")
        except locks.LockBusy as exc:
            raise RestoreRefused(f"client {client}'s lock is held by a run; restore when it ends") from exc
        try:
            locks.check(staging, lock)
            with psycopg.connect(settings.production.conninfo()) as production:
                copied = sync_dummy_production(staging, production, client)
            for replay in replays:
                if ledger.state_of(staging, replay.ingestion_id) == "SUCCESS":
                    ledger.reoffer(staging, replay.ingestion_id, by, f"restore: {reason}")
            locks.retire(staging, lock)
            staging.commit()
        finally:
            locks.release(settings.redis, lock)
    log.info("restore of %s: dummy production synced from production (%s); %d batch(es) re-offered",
             client, copied, len(replays))
    return replays, copied


def replay_all(replays: list[Replay], run: Callable[[Replay], str]) -> list[tuple[Replay, str]]:
    """Run each batch in order (``run`` returns the run's final state); stop at the first that fails:
    the later ones stay re-offered, to run after the cause is fixed."""
    done = []
    for replay in replays:
        state = run(replay)
        done.append((replay, state))
        if state != "success":
            break
    return done


__all__ = ["Replay", "RestoreRefused", "plan", "prepare", "replay_all", "sync_dummy_production"]
