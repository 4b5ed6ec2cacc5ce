"""Failure simulation of size: a 5,000,000-row table streams into its raw table with flat memory.

The extractor's file layout (one JSON array, a row object a line) of the sample client's patients at
5,000,000 rows, loaded by the pipeline's ``load_table`` in a child process whose peak resident
memory (VmHWM) is read from /proc; the same loader on the file's first 10,000 rows is the reference.
The figures are printed (the suite's record of them); ``make bench-load`` times the same loader
against ``psql \\copy``.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from bench import bench_load

pytestmark = pytest.mark.failure

ROWS = 5_000_000
FLAT_MB = 64  # the large load may use at most this much more memory than the small one


def test_a_5_000_000_row_table_loads_with_flat_memory() -> None:
    source_db, target_db = "cf_failure_volume_source", "cf_failure_volume_target"
    folder = Path(tempfile.mkdtemp(prefix="clientflow-volume-"))
    try:
        bench_load.create_patients(source_db, ROWS)
        data, csv, manifest, rows = bench_load.write_source_files(bench_load.dsn_for(source_db), folder)
        csv.unlink()  # only the baseline of the benchmark reads it
        with psycopg.connect(bench_load.ADMIN_DSN, autocommit=True) as admin:
            admin.execute(sql.SQL("drop database {} with (force)").format(sql.Identifier(source_db)))
            admin.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(target_db)))
            admin.execute(sql.SQL("create database {}").format(sql.Identifier(target_db)))
        large = bench_load.time_loader(bench_load.dsn_for(target_db), data, manifest)
        small = bench_load.time_loader(bench_load.dsn_for(target_db),
                                       *bench_load.write_prefix(data, manifest, bench_load.SMALL_ROWS))
    finally:
        with psycopg.connect(bench_load.ADMIN_DSN, autocommit=True) as admin:
            for database in (source_db, target_db):
                admin.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(database)))
        shutil.rmtree(folder, ignore_errors=True)
    print(f"loaded {large['rows']:,} rows in {large['seconds']:.1f} s, peak RSS {large['peak_rss_mb']:.0f} MB; "
          f"{small['rows']:,} rows: peak RSS {small['peak_rss_mb']:.0f} MB")
    assert rows == ROWS and large["rows"] == ROWS
    assert large["peak_rss_mb"] <= small["peak_rss_mb"] + FLAT_MB
