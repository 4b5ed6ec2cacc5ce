"""Benchmark: an incremental batch against a full snapshot of the same client, on the local stack.

    .venv/bin/python bench/bench_incremental.py [--patients 200000] [--changed-share 0.01]
    (make bench-incremental)

1. Starts the local stack (as ``make bench-e2e`` does), forgets the ``ehrlogic`` client on it, and
   builds a source database of ``--patients`` patients whose patients and appointments carry an
   ``updated_at`` cursor (one second apart, so a high mark is one row's).
2. Day 1: the extractor binary, with those two tables in its config's ``[incremental]`` and a fresh
   state file, takes a full snapshot (no state yet); the DAG run promotes it.
3. ``--changed-share`` of the patients and appointments change at the source (their ``updated_at``
   moves past the high mark).
4. Day 2: the same command extracts incrementally (only the changed rows and the row at the mark);
   the DAG run promotes it. Day 2b, the baseline in the same run: the same source taken whole
   with ``--full-refresh`` on a third date, and promoted too.

Times: the extractor's wall time per run, and each DAG run's time from its last manifest to the end
of ``promote`` (bench_e2e's measure). ``extract_ratio`` is the incremental extraction's time over
the full refresh's, ``e2e_ratio`` the incremental batch's DAG time over the full refresh's.

Ends with ``BENCH name=incremental rows=N changed=C extract_ratio=R1 e2e_ratio=R2``.
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

from bench_e2e import ADMIN_DSN, DAG, PG, ROOT, airflow, dsn, reset_client, run_dag, sh  # noqa: E402

from clientflow.sample import ehrlogic  # noqa: E402

SOURCE_DB = "bench_ehrlogic_incremental_source"
CURSORS = {"dim_patient": "pt_id", "fact_appointment": "appt_id"}


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
    """Change ``share`` of the patients and appointments: new values and an updated_at past every mark."""
    step = max(1, round(1 / share))
    changed = 0
    with psycopg.connect(dsn(SOURCE_DB)) as conn:
        changed += conn.execute(f"update dim_patient set pt_last_nm = pt_last_nm || 'x', updated_at = now() "  # noqa: S608
                                f"where pt_id % {step} = 3").rowcount
        changed += conn.execute(f"update fact_appointment set appt_status = 'Done', updated_at = now() "  # noqa: S608
                                f"where appt_id % {step} = 5").rowcount
    return changed


def extract(day: date, config: Path, *extra: str) -> tuple[float, float]:
    """(seconds the extractor ran, the time its last manifest landed)."""
    s3 = f"http://127.0.0.1:{os.environ.get('CLIENTFLOW_S3_PORT', '5055')}"
    started = time.perf_counter()
    sh(str(ROOT / "dist" / "client-extractor"), "--source",
       f"postgresql://ehrlogic_reader@{PG['host']}:{PG['port']}/{SOURCE_DB}", "--client", "ehrlogic",
       "--date", day.isoformat(), "--output", f"s3://{os.environ.get('CLIENTFLOW_BUCKET', 'clientflow-landing')}",
       "--endpoint-url", s3, "--config", str(config), *extra,
       env={**os.environ, "EXTRACTOR_DB_PASSWORD": "local-trust", "AWS_ACCESS_KEY_ID": "local-access-key",
            "AWS_SECRET_ACCESS_KEY": "local-secret-key", "AWS_DEFAULT_REGION": "us-east-1"})
    return time.perf_counter() - started, time.time()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=200_000)
    parser.add_argument("--changed-share", type=float, default=0.01)
    args = parser.parse_args()
    subprocess.run([str(ROOT / "scripts" / "stack.sh"), "up"], check=True, cwd=ROOT)
    airflow("dags", "unpause", DAG)
    reset_client()
    rows = prepare_source(args.patients)
    today = date.today()
    days = [date.fromordinal(today.toordinal() + i) for i in range(3)]
    with tempfile.TemporaryDirectory(prefix="bench-incremental-", dir=ROOT / ".cache") as tmp:
        config = Path(tmp) / "extract.toml"
        config.write_text(f'state_file = "{Path(tmp) / "state.json"}"\n\n[incremental]\n'
                          + "".join(f'{t} = "updated_at"\n' for t in CURSORS), encoding="utf-8")
        _, landed = extract(days[0], config)
        first = run_dag(days[0], landed)
        changed = change(args.changed_share)
        incr_seconds, landed = extract(days[1], config)
        incr = run_dag(days[1], landed)
        full_seconds, landed = extract(days[2], config, "--full-refresh")
        full = run_dag(days[2], landed)
    with psycopg.connect(dsn("clientflow_staging")) as conn:
        files = conn.execute(
            "select b.batch_date, j.table_name, j.extraction_mode, j.row_count from pipeline.jobs j "
            "join pipeline.batches b using (ingestion_id) where b.client_name = 'ehrlogic' and b.batch_date = any(%s) "
            "order by 1, 2", (days,)).fetchall()
    for day, table, mode, count in files:
        print(f"{day} {table}: {mode}, {count:,} rows")
    for name, times in (("day 1, full snapshot", first), (f"day 2, incremental ({changed:,} rows changed)", incr),
                        ("day 3, --full-refresh of the same source", full)):
        print(f"{name}: " + ", ".join(f"{task} {s:.1f} s" for task, s in times.items()))
    extract_ratio, e2e_ratio = incr_seconds / full_seconds, incr["total"] / full["total"]
    print(f"extraction: incremental {incr_seconds:.1f} s vs full refresh {full_seconds:.1f} s; "
          f"batch to production: incremental {incr['total']:.1f} s vs full refresh {full['total']:.1f} s")
    print(f"BENCH name=incremental rows={rows} changed={changed} extract_ratio={extract_ratio:.3f} "
          f"e2e_ratio={e2e_ratio:.3f}")
    with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
        admin.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(SOURCE_DB)))
    print("(the stack keeps running: make down stops it)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
