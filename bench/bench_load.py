"""Raw-load benchmark: the project's ``load_table`` against ``psql \\copy`` of the same rows.

    .venv/bin/python bench/bench_load.py [--patients N]      (default 1,000,000)

1. Builds the ``ehrlogic`` sample client's ``dim_patient`` with N rows (clientflow.sample.ehrlogic).
2. Writes ``dim_patient`` as the extractor does: ``data.json`` (a JSON array of row objects, one per
   line; integers as JSON numbers, numerics/timestamps/text as strings, NULL as null) and its
   manifest; and the same rows as CSV for the baseline. Neither is timed.
3. Times, each after ``sync`` and a CHECKPOINT so neither pays for the other's writes, alternating
   for ``--rounds`` rounds (default 3) and keeping each side's fastest run:
   (a) ``load_table`` into a raw table in a fresh database, committed, in a child process whose
       peak resident memory (VmHWM) is reported;
   (b) ``psql -c "\\copy ... csv"`` of the CSV into an equivalent table: the same text columns, the
       same metadata columns (filled by defaults) and the same index on ``ingestion_id``.
4. For reference, once each: the naive loader the design started from (ijson ``items`` ->
   psycopg ``copy.write_row``, same table and transaction, no checks), and ``load_table`` on the
   first 10,000 rows only, to show that peak memory does not grow with the file.
5. Drops the databases it created and prints one line:
   ``BENCH name=load rows=N seconds=S baseline_seconds=B ratio=R peak_rss_mb=M``.

The databases are reached through ``CLIENTFLOW_ADMIN_DSN`` (default: postgres on 127.0.0.1:5432).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from itertools import islice
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402
from psycopg import sql  # noqa: E402

from clientflow.sample import ehrlogic  # noqa: E402

ADMIN_DSN = os.environ.get("CLIENTFLOW_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
CLIENT = "ehrlogic"
TABLE = "dim_patient"
RAW_SCHEMA = f"raw_{CLIENT}"
INGESTION_ID = "0123456789abcdef0123456789abcdef"
SMALL_ROWS = 10_000
SOURCE_FILE = f"s3://landing/client={CLIENT}/table={TABLE}/date=20260101/run_id=20260101T000000Z/data.json"
# Encodings as the extractor assigns them to dim_patient's source types.
ENCODINGS = {"integer": "integer", "numeric": "decimal", "timestamp without time zone": "timestamp"}
# Values as the extractor writes them: numerics and timestamps become JSON strings.
SELECT_JSON = (
    "copy (select row_to_json(t) from (select pt_id, pt_first_nm, pt_last_nm, patient_dob, gender, "
    "pt_email, phone_num, addr_line1, city, state_cd, zip, "
    "to_char(created_ts, 'YYYY-MM-DD\"T\"HH24:MI:SS') as created_ts, balance_amt::text as balance_amt "
    "from dim_patient order by pt_id) t) to stdout with (format csv, delimiter E'\\x02', quote E'\\x01')"
)
SELECT_CSV = (
    "copy (select pt_id, pt_first_nm, pt_last_nm, patient_dob, gender, pt_email, phone_num, addr_line1, "
    "city, state_cd, zip, to_char(created_ts, 'YYYY-MM-DD\"T\"HH24:MI:SS'), balance_amt::text "
    "from dim_patient order by pt_id) to stdout with (format csv)"
)


def dsn_for(database: str) -> str:
    return psycopg.conninfo.make_conninfo(ADMIN_DSN, dbname=database)


def create_patients(database: str, patients: int) -> None:
    """The sample client's ``dim_patient`` (its schema and generator), without the other tables.

    ``ehrlogic.create`` would also build 2N appointments the benchmark never reads. Its generators
    multiply ``integer`` row numbers past 2^31 at this size; the one product in the patient
    generator that does is computed here in ``bigint`` (same values wherever the original works).
    """
    patients_sql = ehrlogic._PATIENTS.replace(
        "make_interval(mins => (i * 7919) %% 5000000)",
        "make_interval(mins => ((i::bigint * 7919) %% 5000000)::int)",
    )
    with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
        admin.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(database)))
        admin.execute(sql.SQL("create database {}").format(sql.Identifier(database)))
    with psycopg.connect(dsn_for(database)) as conn:
        conn.execute(ehrlogic._SCHEMA)
        conn.execute(patients_sql, ehrlogic.sizes(patients))


def write_source_files(source_dsn: str, folder: Path) -> tuple[Path, Path, Path, int]:
    """data.json + manifest.json (extractor layout) and data.csv for the baseline."""
    data, csv = folder / "data.json", folder / "data.csv"
    rows = 0
    with psycopg.connect(source_dsn) as conn:
        columns = [
            {"name": name, "source_type": source_type,
             "encoding": ENCODINGS.get(source_type, "string"),
             "nullable": nullable == "YES", "primary_key": name == "pt_id"}
            for name, source_type, nullable in conn.execute(
                "select column_name, data_type, is_nullable from information_schema.columns "
                "where table_schema = 'public' and table_name = %s order by ordinal_position", (TABLE,))
        ]
        with open(data, "wb") as out, conn.cursor().copy(SELECT_JSON) as copy:
            out.write(b"[")
            for line in copy:
                out.write(b"\n" if rows == 0 else b",\n")
                out.write(bytes(line)[:-1])
                rows += 1
            out.write(b"\n]\n" if rows else b"]\n")
        with open(csv, "wb") as out, conn.cursor().copy(SELECT_CSV) as copy:
            for chunk in copy:
                out.write(chunk)
    sha = hashlib.sha256()
    with open(data, "rb") as stream:
        while chunk := stream.read(1 << 20):
            sha.update(chunk)
    manifest = {
        "format_version": 1, "job_id": sha.hexdigest()[:32], "client": CLIENT, "table": TABLE,
        "schema": "public", "date": "2026-01-01", "run_id": "bench",
        "extracted_at": datetime.now(UTC).isoformat(), "extractor_version": "bench",
        "source_dialect": "postgresql", "row_count": rows, "byte_size": data.stat().st_size,
        "sha256": sha.hexdigest(), "data_file": "data.json", "columns": columns,
    }
    manifest_path = folder / "manifest.json"
    manifest_path.write_text(json.dumps(manifest))
    return data, csv, manifest_path, rows


def settle(conn: psycopg.Connection[Any]) -> None:
    """Start each measurement from the same state: dirty pages written, WAL checkpointed."""
    os.sync()
    conn.execute("checkpoint")
    conn.commit()


def write_prefix(data: Path, manifest_path: Path, rows: int) -> tuple[Path, Path]:
    """The first ``rows`` rows of data.json (one a line) as a file of their own, with its manifest."""
    small, small_manifest = data.with_name("small.json"), manifest_path.with_name("small-manifest.json")
    with open(data, "rb") as source:
        lines = [line.rstrip(b",\n") for line in islice(source, 1, rows + 1)]  # line 0 is "["
    body = b"[\n" + b",\n".join(lines) + b"\n]\n"
    small.write_bytes(body)
    manifest = json.loads(manifest_path.read_text())
    manifest.update(row_count=len(lines), byte_size=len(body), sha256=hashlib.sha256(body).hexdigest())
    small_manifest.write_text(json.dumps(manifest))
    return small, small_manifest


def child_load(mode: str, dsn: str, data: str, manifest_path: str) -> None:
    """Run in a child process: one load, committed; print seconds and peak RSS as JSON.

    ``load_table`` is the project's loader; ``ijson`` the naive loop it replaced.
    """
    from clientflow.arrival.manifest import Manifest
    from clientflow.load.raw import ensure_raw_table, load_table

    manifest = Manifest.model_validate_json(Path(manifest_path).read_bytes())
    with psycopg.connect(dsn) as conn:
        conn.execute(sql.SQL("drop schema if exists {} cascade").format(sql.Identifier(RAW_SCHEMA)))
        conn.commit()
        settle(conn)
        started, cpu = time.perf_counter(), time.process_time()
        with open(data, "rb") as stream:
            if mode == "load_table":
                rows = load_table(conn, RAW_SCHEMA, manifest, stream, ingestion_id=INGESTION_ID,
                                  source_file=SOURCE_FILE).rows
            else:
                rows = naive_ijson_load(conn, manifest, stream, ensure_raw_table)
        conn.commit()
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    status = Path("/proc/self/status").read_text()
    peak_kb = int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1])
    print(json.dumps({"seconds": seconds, "cpu": cpu, "rows": rows, "peak_rss_mb": peak_kb / 1024}))


def naive_ijson_load(conn: psycopg.Connection[Any], manifest: Any, stream: Any, ensure_raw_table: Any) -> int:
    """ijson (yajl2_c) items -> one ``write_row`` per row, into the same raw table: no checks at all."""
    import ijson

    ensure_raw_table(conn, RAW_SCHEMA, manifest)
    names = [c.name for c in manifest.columns]
    for setting, value in (("clientflow.ingestion_id", INGESTION_ID), ("clientflow.client_name", CLIENT),
                           ("clientflow.source_file", SOURCE_FILE)):
        conn.execute("select set_config(%s, %s, true)", (setting, value))
    copy_sql = sql.SQL("copy {} (source_row, {}) from stdin").format(
        sql.Identifier(RAW_SCHEMA, TABLE), sql.SQL(", ").join(sql.Identifier(n) for n in names))
    rows = 0
    with conn.cursor() as cur, cur.copy(copy_sql) as copy:
        for row in ijson.items(stream, "item", buf_size=1 << 20):
            rows += 1
            copy.write_row((rows, *(None if v is None else str(v) for v in row.values())))
    return rows


def time_loader(dsn: str, data: Path, manifest_path: Path, mode: str = "load_table") -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", mode, dsn, str(data), str(manifest_path)],
        check=True, capture_output=True, text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def time_baseline(dsn: str, csv: Path, columns: list[str]) -> float:
    table = sql.Identifier("baseline", TABLE)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("drop schema if exists baseline cascade")
        conn.execute("create schema baseline")
        conn.execute(sql.SQL(
            "create table {} ({}, ingestion_id text not null default {}, "
            "client_name text not null default {}, source_file text not null default {}, "
            "source_row bigint not null default 0, loaded_at timestamptz not null default now())"
        ).format(table, sql.SQL(", ").join(sql.SQL("{} text").format(sql.Identifier(c)) for c in columns),
                 sql.Literal(INGESTION_ID), sql.Literal(CLIENT), sql.Literal(SOURCE_FILE)))
        conn.execute(sql.SQL("create index on {} (ingestion_id)").format(table))
        settle(conn)
        target = sql.SQL("{} ({})").format(
            table, sql.SQL(", ").join(sql.Identifier(c) for c in columns)).as_string(conn)
    started = time.perf_counter()
    subprocess.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", dsn,
                    "-c", f"\\copy {target} from '{csv}' csv"], check=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--patients", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3,
                        help="measure each side this many times, alternating; report the fastest")
    args = parser.parse_args()
    tag = f"cf_bench_{os.getpid()}"
    source_db, target_db = f"{tag}_source", f"{tag}_target"
    folder = Path(tempfile.mkdtemp(prefix="clientflow-bench-"))
    try:
        started = time.perf_counter()
        create_patients(source_db, args.patients)
        data, csv, manifest_path, rows = write_source_files(dsn_for(source_db), folder)
        with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
            admin.execute(sql.SQL("drop database {} with (force)").format(sql.Identifier(source_db)))
            admin.execute(sql.SQL("create database {}").format(sql.Identifier(target_db)))
        print(f"prepared {rows} rows ({data.stat().st_size / 1e6:.0f} MB of JSON) "
              f"in {time.perf_counter() - started:.1f} s", flush=True)
        columns = [c["name"] for c in json.loads(manifest_path.read_text())["columns"]]
        loads, baselines = [], []
        for _ in range(max(1, args.rounds)):
            loads.append(time_loader(dsn_for(target_db), data, manifest_path))
            if loads[-1]["rows"] != rows:
                raise SystemExit(f"load_table loaded {loads[-1]['rows']} rows, expected {rows}")
            print(f"load_table (data.json -> raw table): {loads[-1]['seconds']:.2f} s "
                  f"({loads[-1]['cpu']:.2f} s of it on the loader's CPU), "
                  f"peak RSS {loads[-1]['peak_rss_mb']:.0f} MB", flush=True)
            baselines.append(time_baseline(dsn_for(target_db), csv, columns))
            print(f"psql \\copy (data.csv -> equivalent table): {baselines[-1]:.2f} s", flush=True)
        seconds = min(run["seconds"] for run in loads)
        peak = max(run["peak_rss_mb"] for run in loads)
        baseline = min(baselines)
        naive = time_loader(dsn_for(target_db), data, manifest_path, mode="ijson")
        print(f"for reference, naive ijson items -> copy.write_row: {naive['seconds']:.2f} s "
              f"(ratio {naive['seconds'] / baseline:.2f}), peak RSS {naive['peak_rss_mb']:.0f} MB", flush=True)
        small = time_loader(dsn_for(target_db), *write_prefix(data, manifest_path, SMALL_ROWS))
        print(f"peak RSS of load_table: {small['peak_rss_mb']:.0f} MB for {small['rows']:,} rows, "
              f"{peak:.0f} MB for {rows:,} rows", flush=True)
    finally:
        with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
            for database in (source_db, target_db):
                admin.execute(sql.SQL("drop database if exists {} with (force)").format(
                    sql.Identifier(database)))
        shutil.rmtree(folder, ignore_errors=True)
    print(f"BENCH name=load rows={rows} seconds={seconds:.2f} baseline_seconds={baseline:.2f} "
          f"ratio={seconds / baseline:.2f} peak_rss_mb={peak:.0f}")


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "--child":
        child_load(*sys.argv[2:])
    else:
        main()
