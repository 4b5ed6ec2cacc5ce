"""Refused values: recorded in ``pipeline.rejects``, one row per refused value, never the value.

The staging models name, for each column of each row, why its value was refused
(``<column>__error``, the codes of :data:`clientflow.mapping.vocabulary.ERRORS`, and
``parent_missing`` for a reference to a parent neither the batch nor production holds). A row
with a refused value does not reach production; the others do, unless the table's refused rows
pass the mapping's threshold (``rejects: {max_count, max_share}``), which stops the batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from clientflow.entities import entity as our_entity
from clientflow.identifiers import ident
from clientflow.mapping import ClientMapping
from clientflow.mapping.vocabulary import ERRORS
from clientflow.validation.reconcile import staging_schema

REASONS = {**ERRORS, "parent_missing": "refers to a parent row that neither the batch nor production holds"}


@dataclass(frozen=True)
class TableRejects:
    table: str
    entity: str
    rows: int
    """Rows of the table that were judged (one per key; duplicates collapsed)."""
    refused_rows: int
    by_rule: dict[tuple[str, str], int]
    """(column, rule) -> refused values."""

    @property
    def share(self) -> float:
        return self.refused_rows / self.rows if self.rows else 0.0


def record(conn: psycopg.Connection[Any], mapping: ClientMapping, ingestion_id: str) -> list[TableRejects]:
    """Replace the batch's rows in pipeline.rejects with what staging refused; per-table counts."""
    conn.execute("delete from pipeline.rejects where ingestion_id = %s", (ingestion_id,))
    reason = sql.SQL("case v.rule {} else v.rule end").format(sql.SQL(" ").join(
        sql.SQL("when {} then {}").format(sql.Literal(code), sql.Literal(text)) for code, text in REASONS.items()))
    for name in mapping.entities:
        ours = our_entity(name)
        # one pass over the rows with an error, each refused value of a row one reject
        values = sql.SQL(", ").join(sql.SQL("({}, s.{})").format(sql.Literal(c), sql.Identifier(f"{c}__error"))
                                    for c in ours.column_names)
        conn.execute(sql.SQL(
            "insert into pipeline.rejects (ingestion_id, client_name, job_id, table_name, entity, source_key, "
            "source_file, source_row, column_name, rule, reason) "
            "select s.ingestion_id, %s, s.job_id, s.source_table, %s, s.{key}::text, s.source_file, s.source_row, "
            "v.column_name, v.rule, {reason} from {stg} s cross join lateral (values {values}) as v(column_name, rule) "
            "where s.ingestion_id = %s and s.occurrence = 1 and s.has_error and v.rule is not null"
        ).format(key=sql.Identifier(ours.key), reason=reason, values=values,
                 stg=ident(staging_schema(mapping.client), f"stg_{name}")),
            (mapping.client, name, ingestion_id))
    return summarize(conn, mapping, ingestion_id)


def summarize(conn: psycopg.Connection[Any], mapping: ClientMapping, ingestion_id: str) -> list[TableRejects]:
    out: list[TableRejects] = []
    for name, tables in mapping.entities.items():
        stg = ident(staging_schema(mapping.client), f"stg_{name}")
        judged = dict(conn.execute(sql.SQL(
            "select source_table, count(*) from {} where ingestion_id = %s and occurrence = 1 group by 1").format(stg),
            (ingestion_id,)).fetchall())
        refused = dict(conn.execute(
            "select table_name, count(distinct source_row) from pipeline.rejects where ingestion_id = %s "
            "and entity = %s group by 1", (ingestion_id, name)).fetchall())
        rules: dict[str, dict[tuple[str, str], int]] = {}
        for table, column, rule, count in conn.execute(
            "select table_name, column_name, rule, count(*) from pipeline.rejects where ingestion_id = %s "
            "and entity = %s group by 1, 2, 3 order by 1, 2, 3", (ingestion_id, name)):
            rules.setdefault(table, {})[(column, rule)] = count
        out.extend(TableRejects(t, name, judged.get(t, 0), refused.get(t, 0), rules.get(t, {})) for t in tables)
    return out


def over_threshold(mapping: ClientMapping, found: list[TableRejects]) -> list[str]:
    """The tables whose refused rows pass the mapping's threshold, as messages with the figures."""
    problems = []
    for t in found:
        limit = mapping.tables[t.table].rejects
        too_many = limit.max_count is not None and t.refused_rows > limit.max_count
        if too_many or t.share > limit.max_share:
            worst = ", ".join(f"{col} {rule} x{n}" for (col, rule), n in sorted(t.by_rule.items(), key=lambda i: -i[1])[:3])
            problems.append(f"{t.table}: {t.refused_rows} of {t.rows} rows refused ({t.share:.1%}; allowed "
                            f"{limit.max_share:.1%}" + (f" or {limit.max_count} rows" if limit.max_count is not None else "")
                            + f"): {worst}")
    return problems
