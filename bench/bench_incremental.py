"""Benchmark: the incremental batch of a client against its first, full batch, on the local stack.

    .venv/bin/python bench/bench_incremental.py [--patients 1000000] [--changed-share 0.01]
    (make bench-incremental)

1. Starts the local stack (as ``make bench-e2e`` does), forgets the ``ehrlogic`` client on it, and
   builds a source database of ``--patients`` patients (4 tables, 4.0 rows per patient) whose every
   table carries an ``updated_at`` cursor, indexed (one second apart at first, so a high mark is
   one row's).
2. Once the stack has settled (its first runs end skipped: see ``settle``), day 1: the extractor
   binary, with the four tables in its config's ``[incremental]`` and a fresh state file, takes
   full snapshots (no state yet); the DAG run promotes the batch.
3. Once the stack has settled (no run of the client queued or running: the other runs of day 1's
   bucket events end skipped; PostgreSQL checkpointed day 1's writes, as a day later it would
   have), ``--changed-share`` of every table's rows change at the source (new
   values, ``updated_at`` now).
4. Day 2: the same command extracts incrementally: the changed rows and the one row at each
   table's previous high mark (the window's start is inclusive); the DAG run promotes it.

Times: the extractor's wall time per run (the binary's start and the uploads included), and each
DAG run's time from its last manifest to the end of ``promote`` (bench_e2e's measure).
``extract_ratio`` is the incremental extraction's time over the first (full) one's, ``e2e_ratio``
the incremental batch's DAG time over the first batch's: the same run, the same machine.

Ends with ``BENCH name=incremental rows=N changed=C extract_ratio=R1 e2e_ratio=R2``.
Targets (issue 11): extract_ratio under 0.05, e2e_ratio under 0.10 at 1,000,000 patients and 1%.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import psycopg
from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_e2e import (  # noqa: E402
    ADMIN_DSN,
    DAG,
    PG,
    ROOT,
    airflow,
    dsn,
    fresh_days,
    reset_client,
    run_dag,
    s3_bucket,
    scratch_dir,
    settle,
    sh,
)

from clientflow.sample import ehrlogic  # noqa: E402

SOURCE_DB = "bench_ehrlogic_incremental_source"
CURSORS = {"dim_provider": "prov_id", "dim_patient": "pt_id", "fact_appointment": "appt_id", "fact_procedure": "proc_id"}
CHANGES = {  # table -> the change of its changed rows
    "dim_provider": "prov_last_nm = prov_last_nm || 'x'",
    "dim_patient": "pt_last_nm = pt_last_nm || 'x'",
    "fact_appointment": "appt_status = 'Done'",
    "fact_procedure": "proc_fee = coalesce(proc_fee, 0) + 1",
}


def prepare_source(patients: int) -> int:
    counts = ehrlogic.create(ADMIN_DSN, SOURCE_DB, patients)
    with psycopg.connect(dsn(SOURCE_DB)) as conn:
        for table, key in CURSORS.items():
            conn.execute(sql.SQL("alter table {} add column updated_at timestamptz").format(sql.Identifier(table)))
            conn.execute(sql.SQL("update {} set updated_at = timestamptz '2026-01-01 00:00:00+00' + {} * interval '1 s'")
                         .format(sql.Identifier(table), sql.Identifier(key)))
            conn.execute(sql.SQL("create index on {} (updated_at)").format(sql.Identifier(table)))
    with psycopg.connect(dsn(SOURCE_DB), autocommit=True) as conn:
        conn.execute("vacuum analyze")
    return sum(counts.values())


def change(share: float) -> int:
    """Change ``share`` of every table's rows: new values and an updated_at past every mark."""
    step = max(1, round(1 / share))
    changed = 0
    with psycopg.connect(dsn(SOURCE_DB)) as conn:
        for table, key in CURSORS.items():
            changed += conn.execute(sql.SQL("update {} set " + CHANGES[table] + ", updated_at = now() "
                                            "where {} % {} = 7").format(
                sql.Identifier(table), sql.Identifier(key), sql.Literal(step))).rowcount
    return changed


def extract(day: date, config: Path, *extra: str) -> tuple[float, float]:
    """(seconds the extractor ran, the time its last manifest landed)."""
    s3 = f"http://127.0.0.1:{os.environ.get('CLIENTFLOW_S3_PORT', '5055')}"
    started = time.perf_counter()
    sh(str(ROOT / "dist" / "client-extractor"), "--source",
       f"postgresql://ehrlogic_reader@{PG['host']}:{PG['port']}/{SOURCE_DB}", "--client", "ehrlogic",
       "--date", day.isoformat(), "--output", f"s3://{s3_bucket()}",
       "--endpoint-url", s3, "--config", str(config), *extra,
       env={**os.environ, "EXTRACTOR_DB_PASSWORD": "local-trust", "AWS_ACCESS_KEY_ID": "local-access-key",
            "AWS_SECRET_ACCESS_KEY": "local-secret-key", "AWS_DEFAULT_REGION": "us-east-1"})
    return time.perf_counter() - started, time.time()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=1_000_000)
    parser.add_argument("--changed-share", type=float, default=0.01)
    args = parser.parse_args()
    subprocess.run([str(ROOT / "scripts" / "stack.sh"), "up"], check=True, cwd=ROOT)
    airflow("dags", "unpause", DAG)
    reset_client(keep_ledger=True)
    rows = prepare_source(args.patients)
    days = fresh_days(2)
    runs = [f"bench-incremental-{time.strftime('%Y%m%dT%H%M%S')}-{i}" for i in (1, 2)]
    with tempfile.TemporaryDirectory(prefix="bench-incremental-", dir=scratch_dir()) as tmp:
        config = Path(tmp) / "extract.toml"
        config.write_text(f'state_file = "{Path(tmp) / "state.json"}"\n\n[incremental]\n'
                          + "".join(f'{t} = "updated_at"\n' for t in CURSORS), encoding="utf-8")
        # The stack's first runs (today's scheduled run, S3's test event) end skipped: the first
        # batch waited up to two minutes behind them, and its time counted that wait.
        settle()
        full_seconds, landed = extract(days[0], config, "--run-id", runs[0])
        full = run_dag(days[0], landed, runs[0])
        settle()
        changed = change(args.changed_share)
        incr_seconds, landed = extract(days[1], config, "--run-id", runs[1])
        incr = run_dag(days[1], landed, runs[1])
    with psycopg.connect(dsn("clientflow_staging")) as conn:
        files = conn.execute(
            "select b.batch_date, j.table_name, j.extraction_mode, j.row_count from pipeline.jobs j "
            "join pipeline.batches b using (ingestion_id) where b.client_name = 'ehrlogic' and b.batch_date = any(%s) "
            "order by 1, 2", (days,)).fetchall()
    for day, table, mode, count in files:
        print(f"{day} {table}: {mode}, {count:,} rows")
    for name, times in (("day 1, full snapshot", full), (f"day 2, incremental ({changed:,} rows changed)", incr)):
        print(f"{name}: " + ", ".join(f"{task} {s:.1f} s" for task, s in times.items()))
    extract_ratio, e2e_ratio = incr_seconds / full_seconds, incr["total"] / full["total"]
    print(f"extraction: incremental {incr_seconds:.1f} s vs full {full_seconds:.1f} s: {extract_ratio:.3f} "
          f"(target < 0.05); batch to production: incremental {incr['total']:.1f} s vs full {full['total']:.1f} s: "
          f"{e2e_ratio:.3f} (target < 0.10)")
    print(f"BENCH name=incremental rows={rows} changed={changed} extract_ratio={extract_ratio:.3f} "
          f"e2e_ratio={e2e_ratio:.3f}")
    with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
        admin.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(SOURCE_DB)))
    print("(the stack keeps running: make down stops it)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
