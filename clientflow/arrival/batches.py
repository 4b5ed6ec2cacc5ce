"""Find complete batches in the bucket, and read their manifests.

A batch is one extractor run (run_id) of one client for one date. It is complete when every
table the client's mapping expects has both ``data.json`` and ``manifest.json``; the extractor
writes the manifest last, so a partial upload never looks complete.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from contextlib import closing
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from client_extractor.contract import DATA_FILE, MANIFEST_FILE, batch_key, job_id, parse_key
from clientflow.arrival.manifest import Manifest, parse_manifest
from clientflow.batch import Batch, BatchFile
from clientflow.errors import BadInputError
from clientflow.faults import named
from clientflow.mapping import ClientMapping

MAX_MANIFEST_BYTES = 1 << 20
SENSOR_TASK_ID = "wait_for_batch"
"""The client DAG's task that waits until a batch is complete (``sensor_check``)."""


@dataclass(frozen=True)
class ArrivedTable:
    """One table of a batch as it arrived: its two files and what its manifest says."""

    files: BatchFile
    manifest: Manifest


def _list_objects(s3: Any, bucket: str, prefix: str) -> dict[str, datetime]:
    """Key -> upload time of every object under ``prefix``."""
    found: dict[str, datetime] = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        found.update((obj["Key"], obj["LastModified"]) for obj in page.get("Contents", []))
    return found


def runs_with_every_table(keys: Iterable[str], mapping: ClientMapping, day: date,
                          uploaded: Mapping[str, datetime] | None = None) -> list[str]:
    """Run ids of ``day`` among ``keys`` whose every expected table has both files, oldest first:
    by when the run's last file arrived (``uploaded``: key -> upload time), then by id. The newest
    is the last upload, whatever its id: a client's ``--run-id retry1`` after a scheduled
    ``20261123T010203Z-...`` run is the newer one.

    Files of different runs never add up to a batch: table A from one run and table B from
    another is two partial uploads, not one complete one.
    """
    present: dict[str, set[tuple[str, str]]] = defaultdict(set)
    last: dict[str, datetime] = {}
    for key in keys:
        parsed = parse_key(key)
        if parsed and parsed.client == mapping.client and parsed.day == day:
            present[parsed.run_id].add((parsed.table, parsed.file))
            if uploaded is not None:
                last[parsed.run_id] = max(last.get(parsed.run_id, uploaded[key]), uploaded[key])
    needed = {(t, f) for t in mapping.source_tables for f in (DATA_FILE, MANIFEST_FILE)}
    done = [run_id for run_id, files in present.items() if needed <= files]
    if uploaded is None:
        return sorted(done)
    return sorted(done, key=lambda run_id: (last[run_id], run_id))


def complete_runs(s3: Any, bucket: str, mapping: ClientMapping, day: date) -> list[str]:
    """Run ids of ``day`` in the bucket whose every expected table has both files, oldest upload first."""
    objects = _list_objects(s3, bucket, f"client={mapping.client}/")
    return runs_with_every_table(objects, mapping, day, objects)


def complete_batches(s3: Any, bucket: str, mapping: ClientMapping, since: date) -> list[tuple[date, str]]:
    """(date, newest complete run id) of every date from ``since`` on, oldest first: one listing
    of the client's prefix. An older complete run of a date is superseded by the newer one."""
    objects = _list_objects(s3, bucket, f"client={mapping.client}/")
    days = sorted({p.day for p in map(parse_key, objects) if p is not None and p.day >= since})
    return [(day, runs[-1]) for day in days if (runs := runs_with_every_table(objects, mapping, day, objects))]


def waiting_since(s3: Any, bucket: str, mapping: ClientMapping, since: date) -> dict[tuple[date, str], datetime]:
    """(date, newest complete run id) -> when its last file arrived, for every date from ``since``
    on: what the watchdog compares with the ledger to find batches nobody processed."""
    objects = _list_objects(s3, bucket, f"client={mapping.client}/")
    parsed = {key: p for key in objects if (p := parse_key(key)) is not None and p.day >= since}
    found: dict[tuple[date, str], datetime] = {}
    for day in sorted({p.day for p in parsed.values()}):
        runs = runs_with_every_table(parsed, mapping, day, objects)
        if runs:
            found[(day, runs[-1])] = max(t for key, t in objects.items()
                                        if key in parsed and parsed[key].day == day and parsed[key].run_id == runs[-1])
    return found


def incomplete_since(s3: Any, bucket: str, mapping: ClientMapping,
                     since: date) -> dict[tuple[date, str], tuple[datetime, list[str]]]:
    """(date, run id) -> (when its last file arrived, the files it lacks) of every run from ``since``
    on that is missing a file of an expected table, unless a complete run of the same date arrived
    after it (the client's finished retry)."""
    objects = _list_objects(s3, bucket, f"client={mapping.client}/")
    runs: dict[tuple[date, str], dict[tuple[str, str], datetime]] = defaultdict(dict)
    for key, at in objects.items():
        parsed = parse_key(key)
        if parsed is not None and parsed.client == mapping.client and parsed.day >= since:
            runs[(parsed.day, parsed.run_id)][(parsed.table, parsed.file)] = at
    needed = {(t, f) for t in mapping.source_tables for f in (DATA_FILE, MANIFEST_FILE)}
    complete = {run: max(files.values()) for run, files in runs.items() if needed <= set(files)}
    found = {}
    for (day, run_id), files in sorted(runs.items()):
        if needed <= set(files):
            continue
        last = max(files.values())
        if any(d == day and at >= last for (d, _r), at in complete.items()):
            continue
        found[(day, run_id)] = (last, sorted(f"{t}/{f}" for t, f in needed - set(files)))
    return found


def sensor_check(mapping: ClientMapping) -> Callable[..., bool]:
    """``check_fn`` for the S3KeySensor: true once one run holds every table's two files.

    The sensor's key pattern already pins the client, the date and (if given) the run id; this
    adds what a wildcard cannot say: all the files belong to the same run.
    """

    def complete(files: list[dict[str, Any]], **_context: Any) -> bool:
        keys = [f["Key"] for f in files if f.get("Key")]
        days = {p.day for p in map(parse_key, keys) if p is not None}
        return any(runs_with_every_table(keys, mapping, day) for day in days)

    return complete


def batch_files(mapping: ClientMapping, day: date, run_id: str) -> tuple[BatchFile, ...]:
    """The keys every mapped table of one run has in the bucket, in load order."""
    return tuple(
        BatchFile(
            table=table,
            data_key=batch_key(mapping.client, table, day, run_id, DATA_FILE),
            manifest_key=batch_key(mapping.client, table, day, run_id, MANIFEST_FILE),
        )
        for table in mapping.source_tables
    )


def read_manifests(s3: Any, bucket: str, batch: Batch) -> list[ArrivedTable]:
    """Fetch and validate each table's manifest; each must name the place it was found in."""
    out = []
    for files in batch.files:
        where = batch.where(files.table, files.manifest_key)
        with named(where, "reading manifest.json"):
            with closing(s3.get_object(Bucket=bucket, Key=files.manifest_key)["Body"]) as body:
                raw = body.read(MAX_MANIFEST_BYTES + 1)
        if len(raw) > MAX_MANIFEST_BYTES:
            raise BadInputError("manifest.json is larger than 1 MiB", where)
        manifest = parse_manifest(raw, where)
        if (manifest.client, manifest.table, manifest.date, manifest.run_id) != (
            batch.client, files.table, batch.day, batch.run_id
        ):
            raise BadInputError("manifest.json names a different client, table, date or run "
                                "than its location in the bucket", where)
        if manifest.job_id != job_id(manifest.client, manifest.table, manifest.date, manifest.sha256,
                                     manifest.extraction.mode):
            # The job id decides what counts as a duplicate: one copied from another batch's
            # manifest would have this batch skipped as already promoted.
            raise BadInputError("manifest.json's job_id is not the one of its client, table, date, sha256 "
                                "and extraction mode (a manifest edited or copied from another batch?)", where)
        out.append(ArrivedTable(files, manifest))
    return out
