"""Benchmark: the built extractor against `psql \\copy (select row_to_json(t) ...)` on 1,000,000 patients.

Creates (or reuses) a 13-column patient-like table in a bench database, then, in the same run, times
the binary writing data.json + manifest.json to a temp folder and psql's row_to_json baseline writing
one file. Each is run `--rounds` times and the fastest run counts (3 rounds by default). The extractor's peak RSS is that of
the largest process in its tree (a PyInstaller onefile binary is a bootloader plus the child that does
the work), read with getrusage(RUSAGE_CHILDREN) in a wrapper process.

Ends with exactly one line:
BENCH name=extract rows=N seconds=S baseline_seconds=B ratio=R peak_rss_mb=M
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg
from psycopg import sql

ROOT = Path(__file__).resolve().parents[1]
BINARY = ROOT / "dist" / "client-extractor"
TABLE = "bench_patient"

CREATE = f"""
create table {TABLE} (
  patient_id bigint primary key,
  first_name text not null,
  last_name text not null,
  dob date,
  email text,
  phone text,
  street text,
  city text,
  state char(2),
  postal_code varchar(10),
  created_at timestamptz not null,
  updated_at timestamp,
  balance numeric(12,2)
)
"""

FILL = f"""
insert into {TABLE}
select i,
  (array['Ana','Bruno','Chloé','Dmitri','Eun-ji','François','Grace','Håkon','Ilse','José'])[1 + i % 10],
  'Lastname' || (i % 9973),
  date '1940-01-01' + (i::bigint * 7919 % 29000)::int,
  'patient' || i || '@example.org',
  '+1-555-' || lpad((i % 10000000)::text, 7, '0'),
  (i % 9999 + 1) || ' Main Street, Apt ' || (i % 97),
  (array['Springfield','Portland','Zürich','São Paulo','Kraków'])[1 + i % 5],
  (array['CA','NY','TX','WA','OR'])[1 + i % 5],
  lpad((i % 99999)::text, 5, '0'),
  timestamptz '2020-01-01 00:00:00+00' + make_interval(secs => i * 37.123457),
  timestamp '2021-06-01 12:00:00' + make_interval(secs => i * 13),
  (i % 100000) / 100.0
from generate_series(1, %s) i
"""

PEAK_PROBE = (
    "import resource, subprocess, sys, time\n"
    "t = time.perf_counter()\n"
    "r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)\n"
    "elapsed = time.perf_counter() - t\n"
    "sys.stderr.write(r.stderr.decode('utf-8', 'replace'))\n"
    "print(r.returncode, elapsed, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
)


def ensure_database(host: str, port: int, user: str, dbname: str, rows: int) -> None:
    with psycopg.connect(host=host, port=port, user=user, dbname="postgres", autocommit=True) as conn:
        if not conn.execute("select 1 from pg_database where datname = %s", (dbname,)).fetchone():
            conn.execute(sql.SQL("create database {}").format(sql.Identifier(dbname)))
    with psycopg.connect(host=host, port=port, user=user, dbname=dbname, autocommit=True) as conn:
        exists = conn.execute("select to_regclass(%s) is not null", (TABLE,)).fetchone()[0]  # type: ignore[index]
        if exists and conn.execute(f"select count(*) from {TABLE}").fetchone()[0] == rows:  # type: ignore[index]
            print(f"reusing {dbname}.{TABLE} ({rows:,} rows)")
            return
        started = time.perf_counter()
        conn.execute(f"drop table if exists {TABLE}")
        conn.execute(CREATE)
        conn.execute(FILL.replace("%s", str(int(rows))))
        conn.execute(f"vacuum analyze {TABLE}")
        print(f"created {dbname}.{TABLE} with {rows:,} rows in {time.perf_counter() - started:.1f} s")


def ensure_binary() -> None:
    """`make bench-extract` builds the binary first (make knows when its sources changed)."""
    if not BINARY.exists():
        sys.exit("dist/client-extractor is missing: run `make bench-extract` (it builds the binary)")


def run_extractor(source: str, out: Path) -> tuple[float, float, int]:
    """(seconds, peak RSS MB, rows) for one run of the binary."""
    cmd = [sys.executable, "-c", PEAK_PROBE, str(BINARY), "--source", source, "--client", "bench",
           "--tables", TABLE, "--output", str(out), "--run-id", f"bench-{time.time_ns()}"]
    env = {k: v for k, v in os.environ.items() if k != "EXTRACTOR_DB_PASSWORD"}
    probe = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    code, seconds, peak_kb = probe.stdout.split()
    if code != "0":
        raise SystemExit(f"extractor failed with exit {code}: {probe.stderr.strip()}")
    manifests = list(out.rglob("manifest.json"))
    rows = json.loads(manifests[-1].read_bytes())["row_count"]
    return float(seconds), int(peak_kb) / 1024, rows


def run_baseline(host: str, port: int, user: str, dbname: str, target: Path) -> float:
    started = time.perf_counter()
    subprocess.run(["psql", "-h", host, "-p", str(port), "-U", user, "-d", dbname, "-X", "-q", "-c",
                    f"\\copy (select row_to_json(t) from {TABLE} t) to '{target}'"], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5432)
    parser.add_argument("--user", default="postgres")
    parser.add_argument("--dbname", default=os.environ.get("BENCH_DB", "clientflow_bench"))
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    ensure_binary()
    ensure_database(args.host, args.port, args.user, args.dbname, args.rows)
    source = f"postgresql://{args.user}@{args.host}:{args.port}/{args.dbname}"
    ours: list[float] = []
    base: list[float] = []
    peaks: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench-extract-") as tmp:
        for round_no in range(1, args.rounds + 1):
            out = Path(tmp) / "out"
            seconds, peak, rows = run_extractor(source, out)
            if rows != args.rows:
                raise SystemExit(f"extractor wrote {rows} rows, expected {args.rows}")
            size = sum(p.stat().st_size for p in out.rglob("data.json"))
            shutil.rmtree(out)
            target = Path(tmp) / "baseline.json"
            baseline = run_baseline(args.host, args.port, args.user, args.dbname, target)
            baseline_size = target.stat().st_size
            target.unlink()
            ours.append(seconds)
            base.append(baseline)
            peaks.append(peak)
            print(f"round {round_no}: extractor {seconds:.2f} s ({size / 1e6:.1f} MB, peak RSS {peak:.1f} MB); "
                  f"psql row_to_json baseline {baseline:.2f} s ({baseline_size / 1e6:.1f} MB)")
    s, b, m = min(ours), min(base), max(peaks)
    print(f"extractor best {s:.2f} s, baseline best {b:.2f} s, ratio {s / b:.2f} (target <= 1.5), "
          f"peak RSS {m:.1f} MB (target < 150)")
    print(f"BENCH name=extract rows={args.rows} seconds={s:.2f} baseline_seconds={b:.2f} ratio={s / b:.2f} peak_rss_mb={m:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
