"""Find complete batches in the bucket.

A batch is one extractor run (run_id) of one client for one date. It is complete when every
table the client's mapping expects has both ``data.json`` and ``manifest.json``; the extractor
writes the manifest last, so a partial upload never looks complete.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from clientflow.arrival.layout import DATA_FILE, MANIFEST_FILE, batch_key, parse_key
from clientflow.mapping import ClientMapping


@dataclass(frozen=True)
class BatchFiles:
    """The S3 keys of one table's data and manifest in a batch."""

    table: str
    data_key: str
    manifest_key: str


@dataclass(frozen=True)
class Batch:
    client: str
    day: date
    run_id: str
    files: tuple[BatchFiles, ...] = field(default_factory=tuple)


def _list_keys(s3: Any, bucket: str, prefix: str) -> list[str]:
    keys: list[str] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys.extend(obj["Key"] for obj in page.get("Contents", []))
    return keys


def runs_with_every_table(keys: Iterable[str], mapping: ClientMapping, day: date) -> list[str]:
    """Run ids of ``day`` among ``keys`` whose every expected table has both files, oldest first.

    Files of different runs never add up to a batch: table A from one run and table B from
    another is two partial uploads, not one complete one.
    """
    present: dict[str, set[tuple[str, str]]] = defaultdict(set)
    for key in keys:
        parsed = parse_key(key)
        if parsed and parsed.client == mapping.client and parsed.day == day:
            present[parsed.run_id].add((parsed.table, parsed.file))
    needed = {(t, f) for t in mapping.source_tables for f in (DATA_FILE, MANIFEST_FILE)}
    return sorted(run_id for run_id, files in present.items() if needed <= files)


def complete_runs(s3: Any, bucket: str, mapping: ClientMapping, day: date) -> list[str]:
    """Run ids of ``day`` in the bucket whose every expected table has both files, oldest first."""
    return runs_with_every_table(_list_keys(s3, bucket, f"client={mapping.client}/"), mapping, day)


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


def batch_for(mapping: ClientMapping, day: date, run_id: str) -> Batch:
    files = tuple(
        BatchFiles(
            table=table,
            data_key=batch_key(mapping.client, table, day, run_id, DATA_FILE),
            manifest_key=batch_key(mapping.client, table, day, run_id, MANIFEST_FILE),
        )
        for table in mapping.source_tables
    )
    return Batch(client=mapping.client, day=day, run_id=run_id, files=files)
