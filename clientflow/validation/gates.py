"""The validation gates between dbt and promotion, in one place.

After dbt merged the batch into dummy production (and its tests passed), the batch must pass:

1. ``counts``: manifest = raw = staged = kept + refused + collapsed duplicates, and every kept
   row is in dummy production (:mod:`~clientflow.validation.reconcile`);
2. ``rejects``: no table's refused rows pass the mapping's threshold
   (:mod:`~clientflow.validation.rejects`, which also records them in ``pipeline.rejects``);
3. the anomaly gates against the client's previous promoted batch (``row_drop``, ``null_rate``,
   ``unmapped_values``, ``reject_share``: :mod:`~clientflow.validation.anomalies`).

A gate that fails stops the batch with a message naming the gate and its figures, never values;
the failure undoes the batch in dummy production and leaves production unchanged. A data engineer
can accept a stopped batch (``clientflow accept``, recorded in ``pipeline.acceptances`` and the
ledger with who and why): the next run of the batch then passes the gates accepted (``rejects``
and the anomaly gates; ``counts`` can never be accepted: rows that do not add up are a bug).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import psycopg

from clientflow.batch import Batch
from clientflow.errors import ValidationFailed
from clientflow.mapping import ClientMapping
from clientflow.validation import anomalies, rejects
from clientflow.validation.reconcile import EntityCounts, count_entity, reconcile_problems

log = logging.getLogger(__name__)

ACCEPTABLE = ("rejects", "row_drop", "null_rate", "unmapped_values", "reject_share")
KEPT = ("the batch was stopped before promotion: production is unchanged, dummy production is restored, "
        "the raw rows and the files in the bucket are kept for a re-run")


@dataclass
class GateReport:
    counts: list[EntityCounts] = field(default_factory=list)
    rejects: list[rejects.TableRejects] = field(default_factory=list)
    failed: dict[str, list[str]] = field(default_factory=dict)
    accepted: dict[str, list[str]] = field(default_factory=dict)


def accepted_gates(conn: psycopg.Connection[Any], ingestion_id: str) -> set[str]:
    gates: set[str] = set()
    for (names,) in conn.execute("select gates from pipeline.acceptances where ingestion_id = %s", (ingestion_id,)):
        gates.update(ACCEPTABLE if "*" in names else names)
    return gates & set(ACCEPTABLE)


def run(conn: psycopg.Connection[Any], mapping: ClientMapping, batch: Batch) -> GateReport:
    """Every gate; raises :class:`ValidationFailed` naming each failed gate that was not accepted."""
    ingestion_id = batch.require_ingestion_id()
    report = GateReport(counts=[count_entity(conn, mapping, batch, e) for e in mapping.entities])
    counted = [f"{c.entity}: {p}" for c in report.counts for p in reconcile_problems(c)]
    if counted:
        report.failed["counts"] = counted
    report.rejects = rejects.record(conn, mapping, ingestion_id)
    if over := rejects.over_threshold(mapping, report.rejects):
        report.failed["rejects"] = over
    now = anomalies.profile(conn, mapping, ingestion_id)
    before = anomalies.previous(conn, mapping.client, ingestion_id)
    before_full = anomalies.previous_full(conn, mapping.client, ingestion_id)
    for finding in anomalies.compare(mapping, now, before, before_full):
        report.failed.setdefault(finding.gate, []).append(finding.message)
    ok = accepted_gates(conn, ingestion_id)
    report.accepted = {gate: found for gate, found in report.failed.items() if gate in ok}
    stopping = {gate: found for gate, found in report.failed.items() if gate not in ok}
    for gate, found in report.accepted.items():
        log.warning("[%s] gate %s failed but the batch was accepted: %s", batch.where().describe(), gate,
                    "; ".join(found))
    if stopping:
        conn.commit()  # the rejects and the profile stay, as the evidence of what stopped the batch
        text = " | ".join(f"gate {gate}: {'; '.join(found)}" for gate, found in stopping.items())
        raise ValidationFailed(f"{text}. Review it; if it is right, `clientflow accept {ingestion_id} --by NAME "
                               "--reason WHY` and run the batch again", batch.where(), kept=KEPT)
    return report
