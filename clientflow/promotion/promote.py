"""Copy a batch's changes into production, in one transaction: all of the batch, or none of it.

dbt wrote the batch's change set (``stg_<client>.changes_<entity>``: new, changed, revived and
soft-deleted rows, in production's columns) into dummy production, which equalled production
before the batch. Promotion copies the same change set, entity by entity in foreign-key order,
into production and commits once. A batch that changed 1% of the rows copies 1% of them.

Conflict resolution, for a row with the same primary key (``client_id`` + the entity's id; the
tenant key is always part of it, so two clients' equal ids never meet):

- newer or equal batch date wins: a row written by a newer batch (``source_batch_date``) is never
  overwritten by an older one;
- a row is rewritten only if a business column, its deletion or its batch date changes; replaying
  a batch rewrites nothing.

Foreign keys are checked once per key and batch, set-based, against production after the parents
were written: per-row foreign-key triggers are off for the transaction (``session_replication_
role``, granted to the promoter for this), which made the first load of 4,000,000 rows several
times faster. A small change set looks each of its rows up once (:func:`_classify`), and checks
the parents of its new rows and of the rows that change a parent only. Any orphan fails the
promotion and rolls everything back. The promotion also writes ``promotions`` (one row per batch,
with its time) in the same transaction: if that row exists, the batch is in production, whatever
the ledger says.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import psycopg
from psycopg import sql

from clientflow.db import relay_copy, set_tenant
from clientflow.entities import ENTITY_ORDER, PRACTICE_SCHEMA, entity
from clientflow.errors import PermanentError, Where
from clientflow.promotion.undo import merged_rows

BATCH_DATE = "source_batch_date"
SMALL_CHANGE_SET = 200_000
"""Change sets smaller than this are merged by primary-key lookups. PostgreSQL's planner prefers
a hash join over the whole table even for 1% of it (0.87 s against 0.08 s for 14,285 of
2,000,000 appointments, measured on the benchmark's data)."""


@dataclass(frozen=True)
class PromotedCounts:
    entity: str
    offered: int
    inserted: int
    updated: int

    @property
    def unchanged(self) -> int:
        """Rows of the change set production already held as they are (a replay)."""
        return self.offered - self.inserted - self.updated


def _names(columns: Iterable[str], prefix: str = "") -> sql.Composed:
    return sql.SQL(", ").join(sql.SQL(prefix) + sql.Identifier(c) for c in columns)


def _count(conn: psycopg.Connection[Any], query: sql.Composed) -> int:
    row = conn.execute(query).fetchone()
    assert row is not None  # aggregates always return a row
    return int(row[0])


def _changes(client: str, name: str) -> sql.Identifier:
    return sql.Identifier(f"stg_{client}", f"changes_{name}")


def _copy(staging: psycopg.Connection[Any], production: psycopg.Connection[Any], name: str, client: str,
          into: sql.Identifier) -> None:
    """Stream the change set of one entity from staging into ``into`` (a table of production)."""
    cols = _names(entity(name).production_columns)
    out_sql = sql.SQL("copy (select {} from {}) to stdout (format binary)").format(cols, _changes(client, name))
    in_sql = sql.SQL("copy {} ({}) from stdin (format binary)").format(into, cols)
    relay_copy(staging, out_sql, production, in_sql)


def _same_key(keys: Iterable[str]) -> sql.Composed:
    """``t`` (production) and ``i`` (the change set) are the same row."""
    return sql.SQL(" and ").join(sql.SQL("t.{k} = i.{k}").format(k=sql.Identifier(k)) for k in keys)


def _rewrites(name: str) -> sql.Composed:
    """The change set's row ``i`` is written over production's ``t``: the conflict rule (newer or
    equal batch date wins) and something to write (a business column, the deletion or the date)."""
    ours = entity(name)
    watched = [c for c in (*ours.business_columns, "deleted_at", BATCH_DATE) if c not in ours.primary_key]
    return sql.SQL("(t.{d} is null or t.{d} <= i.{d}) and ({old_w}) is distinct from ({new_w})").format(
        d=sql.Identifier(BATCH_DATE), old_w=_names(watched, "t."), new_w=_names(watched, "i."))


def _merge(production: psycopg.Connection[Any], name: str, incoming: str) -> tuple[int, int]:
    """Insert the new rows and update the changed ones from the temp table ``incoming``."""
    ours = entity(name)
    cols, keys = ours.production_columns, ours.primary_key
    others = [c for c in cols if c not in keys]
    target, i, on = sql.Identifier(PRACTICE_SCHEMA, name), sql.Identifier(incoming), _same_key(keys)
    inserted = production.execute(sql.SQL(
        "insert into {target} ({cols}) select {icols} from {i} i where not exists (select 1 from {target} t where {on})"
    ).format(target=target, cols=_names(cols), icols=_names(cols, "i."), i=i, on=on)).rowcount
    updated = production.execute(sql.SQL(
        "update {target} t set ({set}) = ({new}) from {i} i where {on} and {rewrites}"
    ).format(target=target, i=i, on=on, set=_names(others), new=_names(others, "i."),
             rewrites=_rewrites(name))).rowcount
    return inserted, updated


CLASSIFIED = (sql.SQL("_tid tid"), sql.SQL("_write boolean"), sql.SQL("_same_parents boolean"))
"""What :func:`_classify` records on each row of a small change set."""


def _classify(production: psycopg.Connection[Any], name: str, incoming: str) -> None:
    """One primary-key lookup per row of the small change set ``incoming``, recorded on the row:
    the production row it meets (``_tid``, null for a new row), whether the merge rewrites that
    row (``_write``: :func:`_merge`'s rule) and whether the row keeps that row's parents
    (``_same_parents``). The insert, the update and the parents' check then look nothing up
    again: an incremental batch of 14,285 appointments looked each of them up three times
    (docs/benchmarks.md)."""
    ours = entity(name)
    i = sql.Identifier(incoming)
    parents = [fk.column for fk in ours.parents]
    same_parents = sql.SQL("({}) is not distinct from ({})").format(
        _names(parents, "t."), _names(parents, "i.")) if parents else sql.SQL("true")
    production.execute(sql.SQL("alter table {i} add column {columns}").format(
        i=i, columns=sql.SQL(", add column ").join(CLASSIFIED)))
    production.execute(sql.SQL(
        "update {i} i set _tid = t.ctid, _write = {rewrites}, _same_parents = {same_parents} from {target} t where {on}"
    ).format(i=i, target=sql.Identifier(PRACTICE_SCHEMA, name), on=_same_key(ours.primary_key),
             rewrites=_rewrites(name), same_parents=same_parents))


def _merge_classified(production: psycopg.Connection[Any], name: str, incoming: str) -> tuple[int, int]:
    """:func:`_merge` of a classified change set: the new rows inserted, the rows to rewrite
    updated through the row ids :func:`_classify` found (a TID scan, no index lookup)."""
    ours = entity(name)
    cols, keys = ours.production_columns, ours.primary_key
    others = [c for c in cols if c not in keys]
    target, i = sql.Identifier(PRACTICE_SCHEMA, name), sql.Identifier(incoming)
    inserted = production.execute(sql.SQL("insert into {target} ({cols}) select {cols} from {i} where _tid is null").format(
        target=target, cols=_names(cols), i=i)).rowcount
    updated = production.execute(sql.SQL(
        "update {target} t set ({set}) = ({new}) from {i} i where t.ctid = i._tid and i._write"
    ).format(target=target, i=i, set=_names(others), new=_names(others, "i."))).rowcount
    return inserted, updated


def _refresh_statistics(production: psycopg.Connection[Any], name: str) -> None:
    """ANALYZE of one production table, through the owner's function (include/sql/production_rls.sql):
    after a first load or a large change set, the next promotion's plans need the new figures. It
    sees this transaction's own rows, and its statistics commit (or roll back) with the promotion."""
    production.execute("select practice.refresh_statistics(%s)", (name,))


def _check_parents(production: psycopg.Connection[Any], name: str, rows: sql.Composable, where: Where) -> None:
    """Every foreign key of ``rows`` (the batch's rows of ``name``) names a parent in production.
    A small change set passes only its new rows and the rows that change a parent (:func:`_classify`):
    cold random reads of the parents' index and heap were a sixth of a 1% batch's promotion
    (docs/benchmarks.md)."""
    ours = entity(name)
    for fk in ours.parents:
        col = sql.Identifier(fk.column)
        orphans = _count(production, sql.SQL(
            "select count(*) from {rows} r where r.{col} is not null and not exists "
            "(select 1 from {parent} p where p.client_id = r.client_id and p.{col} = r.{col})").format(
            rows=rows, col=col, parent=sql.Identifier(PRACTICE_SCHEMA, fk.parent)))
        if orphans:
            raise PermanentError(f"{orphans} row(s) of {name}.{fk.column} refer to no {fk.parent} row in production; "
                                 "the promotion was rolled back", where,
                                 kept="production is unchanged by this batch (the promotion commits all or nothing)")


def _check_change_set(staging: psycopg.Connection[Any], name: str, client: str, ingestion_id: str, offered: int,
                      where: Where) -> None:
    """The change set holds as many rows as dbt merged into dummy production: the merge's pre-hook
    (dbt/macros/staging/capture_undo.sql) keeps one undo row per change-set row, in the merge's
    own transaction. dbt's tables are unlogged (dbt/dbt_project.yml) and a crash of the staging
    database empties them, while the undo tables are logged: a lost change set shows here, and
    the batch stops instead of promoting less than dummy production holds. For the client's first
    rows of an entity the undo keeps one marker row, and dummy production's rows of the client are
    the ones the batch merged (clientflow.promotion.undo.merged_rows)."""
    captured = merged_rows(staging, client, name, ingestion_id)
    if captured != offered:
        raise PermanentError(
            f"the change set stg_{client}.changes_{name} holds {offered} row(s), but dbt merged {captured} into dummy "
            f"production's {name}: the staging database lost dbt's unlogged tables (a crash) after the dbt build; "
            "the promotion was rolled back, run the batch again", where,
            kept="production is unchanged by this batch (the promotion commits all or nothing)")


def _promote_entity(staging: psycopg.Connection[Any], production: psycopg.Connection[Any], name: str, client: str,
                    ingestion_id: str, where: Where) -> tuple[int, int, int]:
    """(offered, inserted, updated) of one entity. The change set is copied into a temp table
    (COPY cannot write a table under row-level security); a client's first load is inserted from
    it whole, later batches are merged (an insert plus an update)."""
    target = sql.Identifier(PRACTICE_SCHEMA, name)
    first_load = production.execute(sql.SQL("select not exists (select 1 from {} where client_id = %s)").format(target),
                                    (client,)).fetchone()
    incoming = f"incoming_{name}"
    production.execute(sql.SQL("create temp table {} (like {} including defaults) on commit drop").format(
        sql.Identifier(incoming), target))
    _copy(staging, production, name, client, sql.Identifier(incoming))
    if first_load and first_load[0]:
        cols = _names(entity(name).production_columns)
        offered = production.execute(sql.SQL("insert into {} ({}) select {} from {}").format(
            target, cols, cols, sql.Identifier(incoming))).rowcount
        _check_change_set(staging, name, client, ingestion_id, offered, where)
        _refresh_statistics(production, name)
        written = sql.SQL("(select * from {} where client_id = {} and ingestion_id = {})").format(
            target, sql.Literal(client), sql.Literal(ingestion_id))
        # A first load is the client's whole data, so the check is a hash anti join (forced: with
        # the statistics of before the load, measured before they were refreshed above, the
        # planner probed every parent row once per child row).
        production.execute("set local enable_nestloop = off")
        _check_parents(production, name, written, where)
        production.execute("set local enable_nestloop = on")
        return offered, offered, 0
    production.execute(sql.SQL("analyze {}").format(sql.Identifier(incoming)))  # else: plans for 0 rows, scans
    offered = _count(production, sql.SQL("select count(*) from {}").format(sql.Identifier(incoming)))
    _check_change_set(staging, name, client, ingestion_id, offered, where)
    if offered < SMALL_CHANGE_SET:  # one primary-key lookup per changed row, not a scan of the client's whole table
        production.execute("set local enable_hashjoin = off; set local enable_mergejoin = off")
        _classify(production, name, incoming)
        # parents are looked up for the new rows and the rows that change them only: production's
        # own foreign keys, and this check in every promotion, made the others' parents exist
        _check_parents(production, name, sql.SQL("(select * from {} where _tid is null or not _same_parents)").format(
            sql.Identifier(incoming)), where)
        inserted, updated = _merge_classified(production, name, incoming)
        production.execute("set local enable_hashjoin = on; set local enable_mergejoin = on")
        return offered, inserted, updated
    _check_parents(production, name, sql.Identifier(incoming), where)
    inserted, updated = _merge(production, name, incoming)
    _refresh_statistics(production, name)
    return offered, inserted, updated


def promote(
    staging: psycopg.Connection[Any],
    production: psycopg.Connection[Any],
    client: str,
    ingestion_id: str,
    batch_date: date,
    entities: Iterable[str] = ENTITY_ORDER,
    *,
    fence_token: int | None = None,
) -> tuple[list[PromotedCounts], datetime]:
    """Write the batch's changes of each entity, parents first, and record the promotion under the
    run's ``fence_token`` (:func:`was_promoted`); the caller commits. If that run's promotion
    committed already (a retry after the ledger could not record it), production is left as it is
    and the recorded counts are returned."""
    where = Where(client=client, batch_date=batch_date.isoformat())
    set_tenant(production, client)  # row-level security: this client's rows, and only them
    if fence_token is not None and (earlier := _promoted_before(production, client, ingestion_id, fence_token)):
        return earlier  # a retry of this run, whose promotion committed before its ledger write failed
    production.execute("set local session_replication_role = replica")
    row = production.execute("select clock_timestamp()").fetchone()
    assert row is not None
    promoted_at: datetime = row[0]
    wanted = set(entities)
    results = []
    for name in (e for e in ENTITY_ORDER if e in wanted):
        offered, inserted, updated = _promote_entity(staging, production, name, client, ingestion_id, where)
        results.append(PromotedCounts(name, offered, inserted, updated))
    production.execute(
        "insert into practice.promotions (client_id, ingestion_id, batch_date, promoted_at, rows_written, fence_token, "
        "counts) values (%s, %s, %s, %s, %s, %s, %s) on conflict (client_id, ingestion_id) do update set "
        "promoted_at = excluded.promoted_at, rows_written = excluded.rows_written, fence_token = excluded.fence_token, "
        "counts = excluded.counts",
        (client, ingestion_id, batch_date, promoted_at,
         json.dumps({c.entity: c.inserted + c.updated for c in results}), fence_token,
         json.dumps({c.entity: {"offered": c.offered, "inserted": c.inserted, "updated": c.updated} for c in results})),
    )
    production.execute("set local session_replication_role = origin")
    return results, promoted_at


def _promoted_before(production: psycopg.Connection[Any], client: str, ingestion_id: str,
                     fence_token: int) -> tuple[list[PromotedCounts], datetime] | None:
    """The counts and time of the promotion that the run holding ``fence_token`` committed already,
    if it did (and recorded its counts: rows of before the ``counts`` column have none)."""
    row = production.execute("select counts, promoted_at from practice.promotions where client_id = %s "
                             "and ingestion_id = %s and fence_token = %s and counts is not null",
                             (client, ingestion_id, fence_token)).fetchone()
    if row is None:
        return None
    counts = [PromotedCounts(name, int(c["offered"]), int(c["inserted"]), int(c["updated"]))
              for name, c in row[0].items()]
    return sorted(counts, key=lambda c: ENTITY_ORDER.index(c.entity)), row[1]


def was_promoted(production: psycopg.Connection[Any], client: str, ingestion_id: str, fence_token: int) -> bool:
    """Whether the run holding ``fence_token`` promoted the batch (its promotion committed), whatever
    the ledger says. A batch promoted by an earlier run, then re-offered, is not: its new run's
    failure must not pass for a success."""
    set_tenant(production, client)
    return production.execute("select 1 from practice.promotions where client_id = %s and ingestion_id = %s "
                              "and fence_token = %s", (client, ingestion_id, fence_token)).fetchone() is not None
