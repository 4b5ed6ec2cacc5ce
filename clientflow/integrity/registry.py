"""A versioned registry of each client table's columns, and drift checks against it.

Before any transformation, the batch's columns (from its manifest) are compared with the
registered version and with the columns the mapping uses. A mapped column that is missing always
stops the batch, naming the likely replacement; other changes follow the client's schema policy.
"""

from __future__ import annotations

import difflib
import json
import logging
from dataclasses import dataclass, field
from typing import Any

import psycopg

from clientflow.arrival.manifest import Manifest
from clientflow.errors import DriftError, Where
from clientflow.mapping import ClientMapping

log = logging.getLogger(__name__)


@dataclass
class Drift:
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    type_changed: list[str] = field(default_factory=list)
    renamed: dict[str, str] = field(default_factory=dict)

    def any(self) -> bool:
        return bool(self.added or self.removed or self.type_changed or self.renamed)

    def describe(self) -> str:
        parts = []
        if self.renamed:
            parts.append("renamed " + ", ".join(f"{a!r} -> {b!r} (guessed)" for a, b in self.renamed.items()))
        if self.added:
            parts.append(f"added {self.added}")
        if self.removed:
            parts.append(f"removed {self.removed}")
        if self.type_changed:
            parts.append(f"type changed {self.type_changed}")
        return "; ".join(parts) or "no change"


def _guess(missing: str, candidates: list[str]) -> str | None:
    close = difflib.get_close_matches(missing, candidates, n=1, cutoff=0.4)
    if close:
        return close[0]
    # A rename that keeps the tail (patient_dob -> dob) scores low on ratio; try suffixes.
    tails = [c for c in candidates if missing.endswith(c) or c.endswith(missing.split("_")[-1])]
    return tails[0] if len(tails) == 1 else None


def diff(previous: list[dict[str, Any]], manifest: Manifest) -> Drift:
    before = {c["name"]: c for c in previous}
    after = {c.name: c for c in manifest.columns}
    drift = Drift(
        added=[n for n in after if n not in before],
        removed=[n for n in before if n not in after],
        type_changed=[
            n for n in after
            if n in before and (before[n]["source_type"], before[n]["encoding"])
            != (after[n].source_type, after[n].encoding)
        ],
    )
    for gone in list(drift.removed):
        guess = _guess(gone, drift.added)
        if guess and before[gone]["encoding"] == after[guess].encoding:
            drift.renamed[gone] = guess
    return drift


def check_mapped_columns(mapping: ClientMapping, manifest: Manifest, where: Where) -> None:
    """Every column the mapping reads must be in the batch; otherwise stop before dbt."""
    spec = mapping.tables[manifest.table]
    present = [c.name for c in manifest.columns]
    read = _mapped_sources(mapping, manifest.table)
    for ours, rules in spec.columns.items():
        for source in rules.sources:
            if source in present:
                continue
            guess = _guess(source, [p for p in present if p not in read])
            hint = (
                f"; it was probably renamed to {guess!r}: update include/mappings/{mapping.client}.yaml"
                if guess
                else "; update the mapping or ask the client to restore it"
            )
            raise DriftError(
                f"mapped column {source!r} (our {spec.entity}.{ours}) is missing from the batch{hint}",
                where,
                kept="the batch was stopped before transformation; production and earlier raw "
                "batches are untouched",
            )
    by = spec.duplicates.by
    if by is not None and by not in present:
        raise DriftError(f"column {by!r}, which orders the duplicates of {manifest.table}, is missing from "
                         "the batch", where, kept="the batch was stopped before transformation")


def _mapped_sources(mapping: ClientMapping, table: str) -> set[str]:
    return {s for rules in mapping.tables[table].columns.values() for s in rules.sources}


def register(
    conn: psycopg.Connection[Any], mapping: ClientMapping, manifest: Manifest, ingestion_id: str, where: Where
) -> Drift:
    """Compare with the latest registered version, apply the policy, record a new version."""
    row = conn.execute(
        "select version, fingerprint, columns from pipeline.schema_registry "
        "where client_name = %s and table_name = %s order by version desc limit 1",
        (mapping.client, manifest.table),
    ).fetchone()
    fingerprint = manifest.fingerprint()
    columns = [c.model_dump() for c in manifest.columns]
    if row is not None and row[1] == fingerprint:
        return Drift()
    drift = diff(row[2], manifest) if row else Drift()
    policy = mapping.schema_policy
    for change, rule in (
        ("added", policy.new_columns),
        ("removed", policy.removed_columns),
        ("type_changed", policy.type_changes),
    ):
        names = getattr(drift, change)
        if names and rule == "fail":
            raise DriftError(f"schema change not allowed by policy: {drift.describe()}", where)
        if names and rule == "warn":
            log.warning("[%s] schema change: %s", where.describe(), drift.describe())
    conn.execute(
        "insert into pipeline.schema_registry "
        "(client_name, table_name, version, fingerprint, columns, ingestion_id, change) "
        "values (%s, %s, %s, %s, %s, %s, %s)",
        (mapping.client, manifest.table, (row[0] + 1) if row else 1, fingerprint, json.dumps(columns),
         ingestion_id, drift.describe() if row else None),
    )
    return drift
