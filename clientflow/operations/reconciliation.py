"""``clientflow reconcile``: prove from the bucket that nothing was lost or duplicated.

Every batch in the bucket (one extractor run of one date) is compared with what each stage holds:

- **bucket**: each table's ``manifest.json`` and ``data.json`` (the data file's bytes are hashed
  again, unless ``verify_data`` is off) against what the ledger recorded when it loaded them
  (``pipeline.jobs``: rows, sha256). A file altered after its batch was promoted is a difference.
- **ledger**: the newest complete run of each date must have been taken up (a complete batch
  nobody processed is a difference: it is in no table); a batch the ledger knows must still have
  its files in the bucket; no batch may stay PENDING or PROCESSING.
- **raw**: a batch's rows in its raw tables equal its manifests' row counts, until retention
  released them (the raw queue keeps the newest ``raw_retention_batches`` promoted ones).
- **rejects, duplicates, kept**: per entity, rows received = kept + refused + collapsed
  duplicates (``pipeline.batch_profiles``), and every refused row has its reject records.
- **dummy production, production**: the live rows whose lineage names the batch are as many in
  both, and never more than it kept; a promoted batch has its row in production's
  ``promotions``, a refused or failed one has no row anywhere. Per entity, production and dummy
  production hold the same rows for the client (a hash of every column, in key order), and every
  live row's batch is one the ledger promoted. When the client's newest promoted batch of an
  entity is a full snapshot, production's live rows are exactly the rows it kept.

The report holds counts and identifiers, never a row value.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import psycopg
from psycopg import sql

from client_extractor.contract import DATA_FILE, MANIFEST_FILE, parse_key, run_prefix
from clientflow.arrival.batches import MAX_MANIFEST_BYTES
from clientflow.arrival.manifest import parse_manifest
from clientflow.config import PipelineSettings
from clientflow.db import connect, set_tenant
from clientflow.entities import PRACTICE_SCHEMA
from clientflow.entities import entity as our_entity
from clientflow.errors import BadInputError, Where
from clientflow.faults import named
from clientflow.identifiers import ident, raw_schema
from clientflow.load import raw
from clientflow.mapping import ClientMapping
from clientflow.operations import ledger

PROMOTED = "SUCCESS"
NOTHING_COMMITTED = ("FAILED", "DUPLICATE")


@dataclass
class Line:
    """One row of the report: a batch's entity (or table, or the client as a whole)."""

    day: date | None
    run_id: str
    state: str
    what: str
    figures: dict[str, int | str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    note: str = ""


@dataclass
class Report:
    client: str
    lines: list[Line]

    @property
    def differences(self) -> list[tuple[Line, str]]:
        return [(line, p) for line in self.lines for p in line.problems]

    @property
    def batches(self) -> int:
        return len({(line.day, line.run_id) for line in self.lines if line.day is not None})


@dataclass
class _Stored:
    """One (date, run) of the bucket: per table, its files and its manifest's figures."""

    day: date
    run_id: str
    files: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    manifests: dict[str, tuple[int, str, str]] = field(default_factory=dict)
    """table -> (row_count, sha256, job id) as the manifest says."""
    data_sha: dict[str, str] = field(default_factory=dict)
    """table -> the sha256 of data.json as it is in the bucket now (when verified)."""

    def complete(self, mapping: ClientMapping) -> bool:
        """Every mapped table has both its files (what makes a run a batch)."""
        return all({DATA_FILE, MANIFEST_FILE} <= self.files.get(t, set()) for t in mapping.source_tables)


def _bucket(settings: PipelineSettings, mapping: ClientMapping, day: date | None,
            verify_data: bool) -> dict[tuple[date, str], _Stored]:
    s3, bucket, client = settings.s3.client(), settings.s3.bucket, mapping.client
    stored: dict[tuple[date, str], _Stored] = {}
    with named(Where(client=client), "listing the bucket for the reconciliation"):
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"client={client}/"):
            for obj in page.get("Contents", []):
                parsed = parse_key(obj["Key"])
                if parsed is None or parsed.client != client or (day is not None and parsed.day != day):
                    continue
                stored.setdefault((parsed.day, parsed.run_id), _Stored(parsed.day, parsed.run_id)
                                  ).files[parsed.table].add(parsed.file)
    for (d, run_id), found in stored.items():
        for table, files in found.files.items():
            prefix = run_prefix(client, table, d, run_id)
            where = Where(client=client, table=table, batch_date=d.isoformat(), run_id=run_id,
                          file=prefix + MANIFEST_FILE)
            if MANIFEST_FILE in files:
                with named(where, "reading a manifest for the reconciliation"):
                    body = s3.get_object(Bucket=bucket, Key=prefix + MANIFEST_FILE)["Body"].read(MAX_MANIFEST_BYTES + 1)
                try:
                    manifest = parse_manifest(body, where)
                except BadInputError:
                    found.manifests[table] = (-1, "unreadable", "")
                else:
                    found.manifests[table] = (manifest.row_count, manifest.sha256, manifest.job_id)
            if verify_data and DATA_FILE in files:
                digest = hashlib.sha256()
                with named(where, "hashing a data file for the reconciliation"):
                    stream = s3.get_object(Bucket=bucket, Key=prefix + DATA_FILE)["Body"]
                    for chunk in stream.iter_chunks(1 << 20):
                        digest.update(chunk)
                found.data_sha[table] = digest.hexdigest()
    return stored


def _one(conn: psycopg.Connection[Any], query: sql.Composable | str, params: tuple[Any, ...] = ()) -> Any:
    row = conn.execute(query, params).fetchone()  # type: ignore[arg-type]
    return row[0] if row else None


def _lineage_rows(conn: psycopg.Connection[Any], client: str, name: str, ingestion_id: str) -> int:
    return int(_one(conn, sql.SQL("select count(*) from {} where client_id = %s and ingestion_id = %s "
                                  "and deleted_at is null").format(ident(PRACTICE_SCHEMA, name)), (client, ingestion_id)))


def _table_digest(conn: psycopg.Connection[Any], client: str, name: str) -> tuple[int, int, str]:
    """(live rows, soft-deleted rows, md5 of every row in key order) of one entity of a client."""
    key = sql.Identifier(our_entity(name).key)
    row = conn.execute(sql.SQL(
        "select count(*) filter (where t.deleted_at is null), count(*) filter (where t.deleted_at is not null), "
        "coalesce(md5(string_agg(md5(t::text), '' order by t.{key})), '') from {table} t where t.client_id = %s"
    ).format(key=key, table=ident(PRACTICE_SCHEMA, name)), (client,)).fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), str(row[2])


def reconcile(settings: PipelineSettings, mapping: ClientMapping, day: date | None = None, *,
              verify_data: bool = True) -> Report:
    client = mapping.client
    stored = _bucket(settings, mapping, day, verify_data)
    lines: list[Line] = []
    where = Where(client=client, batch_date=day.isoformat() if day else None)
    with connect(settings.staging, where, "reading the ledger for the reconciliation") as staging, \
            connect(settings.production, where, "reading production for the reconciliation") as production:
        set_tenant(production, client, local=False)
        batches = staging.execute(
            "select ingestion_id, batch_date, run_id, state from pipeline.batches where client_name = %s "
            "and (%s::date is null or batch_date = %s) order by batch_date, created_at",
            (client, day, day)).fetchall()
        jobs: dict[str, dict[str, tuple[int, str, str]]] = defaultdict(dict)
        for ingestion_id, table, rows, sha, mode in staging.execute(
                "select j.ingestion_id, j.table_name, j.row_count, j.sha256, j.extraction_mode from pipeline.jobs j "
                "join pipeline.batches b using (ingestion_id) where b.client_name = %s", (client,)):
            jobs[ingestion_id][table] = (rows, sha, mode)
        promotions = {r[0] for r in production.execute(
            "select ingestion_id from practice.promotions where client_id = %s", (client,))}
        released = set(ledger.prunable(staging, client, mapping.raw_retention_batches))

        lines.extend(_unprocessed_lines(mapping, stored, batches))
        for ingestion_id, d, run_id, state in batches:
            lines.extend(_batch_lines(staging, production, mapping, stored.get((d, run_id)), ingestion_id, d, run_id,
                                      state, jobs.get(ingestion_id, {}), ingestion_id in promotions,
                                      ingestion_id in released))
        promoted_ids = {iid for iid, _d, _r, st in batches if st in (PROMOTED, "REOFFERED")}
        for orphan in sorted(promotions - {iid for iid, *_ in batches}):
            if day is None:
                lines.append(Line(None, "-", "-", "production", problems=[
                    f"production records promotion {orphan}, which the ledger does not know"]))
        if day is None:
            lines.extend(_client_lines(staging, production, mapping, promoted_ids, batches, jobs))
    return Report(client, lines)


def _unprocessed_lines(mapping: ClientMapping, stored: dict[tuple[date, str], _Stored],
                       batches: list[tuple[Any, ...]]) -> list[Line]:
    """The runs in the bucket the ledger never took up: incomplete, superseded, re-uploaded, or waiting."""
    known, ids, out = {(d, run) for _i, d, run, _s in batches}, {b[0] for b in batches}, []
    for (d, run_id), found in sorted(stored.items()):
        if (d, run_id) in known:
            continue
        newest = max((r for (dd, r), other in stored.items() if dd == d and other.complete(mapping)), default=None)
        same = ledger.ingestion_id_for(mapping.client, d, [m[2] for t, m in found.manifests.items()
                                                          if t in mapping.source_tables])
        line = Line(d, run_id, "-", "bucket")
        if not found.complete(mapping):
            missing = sorted(t for t in mapping.source_tables if {DATA_FILE, MANIFEST_FILE} - found.files.get(t, set()))
            line.note = f"incomplete upload (tables without both files: {', '.join(missing)}): not a batch yet"
        elif newest != run_id:
            line.note = f"superseded by the newer complete run {newest} of the same date"
        elif same in ids:
            line.note = f"the same extraction as batch {same} (same job ids), uploaded again: processed once"
        else:
            line.problems.append("complete in the bucket but never processed: none of its rows is in any table")
        out.append(line)
    return out


def _files_line(found: _Stored | None, d: date, run_id: str, state: str, jobs: dict[str, tuple[int, str, str]],
                promoted: bool) -> Line:
    """The batch's files in the bucket against what the ledger loaded, and its state against production."""
    files = Line(d, run_id, state, "files")
    if found is None:
        files.problems.append("the ledger knows this batch but its files are gone from the bucket")
    else:
        for table, (rows, sha, _mode) in sorted(jobs.items()):
            declared = found.manifests.get(table)
            if declared is None:
                files.problems.append(f"{table}: manifest.json is gone from the bucket")
            elif (declared[0], declared[1]) != (rows, sha):
                files.problems.append(f"{table}: manifest.json now says {declared[0]} rows, the ledger loaded {rows}"
                                      " (or another checksum)")
            now = found.data_sha.get(table)
            if now is not None and now != sha and state == PROMOTED:
                files.problems.append(f"{table}: data.json no longer matches the checksum of the file promoted")
            if now is not None and now != sha and state != PROMOTED:
                files.note = "the data in the bucket do not match their manifest: refused, as it should be"
    if state in ledger.IN_FLIGHT:
        files.problems.append(f"still {state}: unfinished (a run is active, or one died without recording it)")
    if state == PROMOTED and not promoted:
        files.problems.append("the ledger says SUCCESS, production has no promotion record of it")
    if state in NOTHING_COMMITTED and promoted:
        files.problems.append(f"the ledger says {state}, production records its promotion")
    return files


def _batch_lines(staging: psycopg.Connection[Any], production: psycopg.Connection[Any], mapping: ClientMapping,
                 found: _Stored | None, ingestion_id: str, d: date, run_id: str, state: str,
                 jobs: dict[str, tuple[int, str, str]], promoted: bool, released: bool) -> list[Line]:
    client, out = mapping.client, [_files_line(found, d, run_id, state, jobs, promoted)]
    profiles = {r[0]: r[1:] for r in staging.execute(
        "select entity, rows_received, rows_kept, rows_refused from pipeline.batch_profiles where ingestion_id = %s",
        (ingestion_id,))}
    refused_rows = dict(staging.execute(
        "select entity, count(*) from (select distinct entity, table_name, source_row from pipeline.rejects "
        "where ingestion_id = %s) r group by entity", (ingestion_id,)).fetchall())
    for name, tables in mapping.entities.items():
        line = Line(d, run_id, state, name)
        manifest_rows = sum(jobs[t][0] for t in tables if t in jobs)
        raw_rows = sum(raw.batch_rows(staging, raw_schema(client), t, ingestion_id) for t in tables)
        dummy = _lineage_rows(staging, client, name, ingestion_id)
        prod = _lineage_rows(production, client, name, ingestion_id)
        line.figures = {"manifest": manifest_rows, "raw": raw_rows, "dummy": dummy, "production": prod}
        if raw_rows != manifest_rows:
            if raw_rows == 0 and released:
                line.figures["raw"] = "released"
            elif raw_rows == 0 and state in NOTHING_COMMITTED:
                line.figures["raw"] = "none"
            else:
                line.problems.append(f"raw holds {raw_rows} rows of it, its manifests declared {manifest_rows}")
        profile = profiles.get(name)
        if profile is not None:
            received, kept, refused = profile
            collapsed = received - kept - refused
            line.figures.update(received=received, refused=refused, collapsed=collapsed, kept=kept)
            if received != manifest_rows:
                line.problems.append(f"staging received {received} rows, the manifests declared {manifest_rows}")
            if collapsed < 0:
                line.problems.append(f"{kept} kept + {refused} refused is more than the {received} received")
            if refused_rows.get(name, 0) != refused:
                line.problems.append(f"{refused} rows refused, {refused_rows.get(name, 0)} of them have reject records")
            if prod > kept:
                line.problems.append(f"production holds {prod} live rows of it, more than the {kept} it kept")
        elif state == PROMOTED:
            line.problems.append("promoted without a profile of its rows (validation never ran)")
        if dummy != prod:
            line.problems.append(f"dummy production holds {dummy} live rows of it, production {prod}")
        if state in NOTHING_COMMITTED and (dummy or prod):
            line.problems.append(f"{state}, yet {max(dummy, prod)} of its rows are live")
        out.append(line)
    return out


def _client_lines(staging: psycopg.Connection[Any], production: psycopg.Connection[Any], mapping: ClientMapping,
                  promoted_ids: set[str], batches: list[tuple[Any, ...]],
                  jobs: dict[str, dict[str, tuple[int, str, str]]]) -> list[Line]:
    client, out = mapping.client, []
    for name, tables in mapping.entities.items():
        line = Line(None, "-", "-", f"{name} (all)")
        live, deleted, digest = _table_digest(production, client, name)
        dummy_live, dummy_deleted, dummy_digest = _table_digest(staging, client, name)
        line.figures = {"production": live, "deleted": deleted, "dummy": dummy_live}
        if (live, deleted, digest) != (dummy_live, dummy_deleted, dummy_digest):
            line.problems.append(f"production ({live} live, {deleted} deleted) and dummy production ({dummy_live} "
                                 f"live, {dummy_deleted} deleted) differ" +
                                 (" in content" if (live, deleted) == (dummy_live, dummy_deleted) else ""))
        strangers = production.execute(sql.SQL(
            "select count(*) from {} where client_id = %s and deleted_at is null and not ingestion_id = any(%s)"
        ).format(ident(PRACTICE_SCHEMA, name)), (client, sorted(promoted_ids))).fetchone()
        if strangers and strangers[0]:
            line.problems.append(f"{strangers[0]} live rows come from batches the ledger does not show promoted")
        newest = next((iid for iid, _d, _r, st in reversed(batches)  # by date, then as they came
                       if st == PROMOTED and all(t in jobs.get(iid, {}) for t in tables)), None)
        if newest is not None and all(jobs[newest][t][2] == "full" for t in tables):
            kept = _one(staging, "select rows_kept from pipeline.batch_profiles where ingestion_id = %s and entity = %s",
                        (newest, name))
            line.figures["newest full kept"] = kept if kept is not None else "?"
            if kept is not None and kept != live:
                line.problems.append(f"the newest promoted full snapshot ({newest}) kept {kept} rows, "
                                     f"production holds {live} live")
        out.append(line)
    return out


COLUMNS = ("manifest", "raw", "received", "refused", "collapsed", "kept", "dummy", "production")


def render(report: Report) -> str:
    """The report as a table, then one line per difference, then the verdict."""
    head = f"{'date':<10}  {'run':<16}  {'state':<10}  {'what':<20}" + "".join(f"  {c:>10}" for c in COLUMNS)
    rows = [f"reconciliation of client {report.client}", head]
    for line in report.lines:
        cells = "".join(f"  {str(line.figures.get(c, '')):>10}" for c in COLUMNS)
        verdict = "DIFFERS" if line.problems else "ok"
        rows.append(f"{str(line.day or '-'):<10}  {line.run_id:<16.16}  {line.state:<10}  {line.what:<20.20}{cells}"
                    f"  {verdict}" + (f"  ({line.note})" if line.note else ""))
    differences = report.differences
    for line, problem in differences:
        rows.append(f"DIFFERENCE client={report.client} date={line.day or '-'} run={line.run_id} {line.what}: {problem}")
    rows.append(f"{report.batches} batch(es) reconciled, {len(differences)} difference(s)"
                + ("" if differences else ": nothing lost, nothing duplicated"))
    return "\n".join(rows)
