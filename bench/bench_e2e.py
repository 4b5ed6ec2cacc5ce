"""End-to-end benchmark: the 1,000,000-patient ehrlogic batch through the real DAG on the local stack.

    .venv/bin/python bench/bench_e2e.py [--patients 1000000]        (make bench-e2e)

1. Starts the local stack (scripts/stack.sh up: PostgreSQL, Redis, moto's S3, SMTP, Airflow
   standalone with its scheduler and triggerer) and builds the sample client's source database
   (clientflow.sample.ehrlogic) with ``--patients`` patients: 4 tables, 4.0 rows per patient.
2. The baseline, in the same run: ``psql \\copy`` of the same rows out of the source (CSV) and into
   tables with the same primary keys in a scratch database.
3. The first batch: the extractor binary uploads it (not timed), dated the first day from tomorrow
   on that neither the bucket nor the ledger knows, as an extractor run of its own; the DAG run
   that processes it (the one its bucket event started, else one triggered here) is timed from
   the moment the last manifest landed to the end of ``promote``, with each task's seconds from
   Airflow's metadata database. The client is reset on the stack first (its raw, staging and
   production rows; the ledger keeps the batches it took, so the sweep does not process an
   earlier run's files again), so the first batch meets an empty production, and the benchmark
   can run again on the same stack.
4. A second batch, the next free day, with 1% of the rows changed at the source: promoted the same way;
   ``promote_1pct_ratio`` is its promote task's seconds over the first batch's.
5. ``peak_rss_mb`` is the largest resident memory of any one task process (or its dbt child) of
   the runs, sampled every 0.2 s.

Ends with ``BENCH name=e2e rows=N seconds=S baseline_seconds=B ratio=R promote_1pct_ratio=P peak_rss_mb=M``.
Targets (issue 10): ratio under 6, promote_1pct_ratio under 0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from datetime import date, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from client_extractor.contract import parse_key  # noqa: E402
from clientflow.config import S3Settings  # noqa: E402
from clientflow.sample import ehrlogic  # noqa: E402

PG = {"host": os.environ.get("CLIENTFLOW_PG_HOST", "127.0.0.1"), "port": int(os.environ.get("CLIENTFLOW_PG_PORT", "5432")),
      "user": "postgres"}
ADMIN_DSN = psycopg.conninfo.make_conninfo(dbname="postgres", **PG)
SOURCE_DB = "bench_ehrlogic_source"
BASELINE_DB = "bench_ehrlogic_baseline"
CLIENT = "ehrlogic"
DAG = f"client_{CLIENT}"
TABLES = {"dim_provider": "prov_id", "dim_patient": "pt_id", "fact_appointment": "appt_id", "fact_procedure": "proc_id"}


def dsn(dbname: str) -> str:
    return psycopg.conninfo.make_conninfo(ADMIN_DSN, dbname=dbname)


def scratch_dir() -> Path:
    """The clone's own scratch directory (.cache, git-ignored), made on a clean clone's first run."""
    path = ROOT / ".cache"
    path.mkdir(exist_ok=True)
    return path


def sh(*args: str, env: dict[str, str] | None = None) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True, env=env, cwd=ROOT).stdout


def baseline(tmp: Path) -> float:
    """psql \\copy out of the source and into keyed tables: the same rows, the same primary keys."""
    with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
        admin.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(BASELINE_DB)))
        admin.execute(sql.SQL("create database {}").format(sql.Identifier(BASELINE_DB)))
    with psycopg.connect(dsn(SOURCE_DB)) as src, psycopg.connect(dsn(BASELINE_DB)) as dst:
        for table, key in TABLES.items():
            cols = src.execute("select string_agg(format('%%I %%s', attname, format_type(atttypid, atttypmod)), ', ' "
                               "order by attnum) from pg_attribute where attrelid = %s::regclass and attnum > 0 "
                               "and not attisdropped", (table,)).fetchone()[0]  # type: ignore[index]
            dst.execute(f"create table {table} ({cols}, primary key ({key}))")  # noqa: S608 - the sample's names
    started = time.perf_counter()
    psql = ["psql", "-h", PG["host"], "-p", str(PG["port"]), "-U", "postgres", "-X", "-q"]
    for table in TABLES:
        path = tmp / f"{table}.csv"
        sh(*psql, "-d", SOURCE_DB, "-c", f"\\copy {table} to '{path}' csv")
        sh(*psql, "-d", BASELINE_DB, "-c", f"\\copy {table} from '{path}' csv")
    return time.perf_counter() - started


class PeakRss:
    """The largest RSS of any task process or dbt process while it runs."""

    def __init__(self) -> None:
        self.peak_kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            for proc in Path("/proc").iterdir():
                if not proc.name.isdigit():
                    continue
                try:
                    cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ")
                    if b"airflow" not in cmd and b"dbt" not in cmd:
                        continue
                    if b"task" not in cmd and b"dbt" not in cmd and b"supervisor" not in cmd:
                        continue
                    rss = next(int(line.split()[1]) for line in (proc / "status").read_text().splitlines()
                               if line.startswith("VmRSS:"))
                except (OSError, StopIteration, ValueError):
                    continue
                self.peak_kb = max(self.peak_kb, rss)
            time.sleep(0.2)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self._stop.set()
        self._thread.join()


def extract(day: date, run_id: str) -> float:
    """Upload the batch of ``day`` with the extractor binary, as extractor run ``run_id``; the time
    its last manifest landed."""
    s3 = f"http://127.0.0.1:{os.environ.get('CLIENTFLOW_S3_PORT', '5055')}"
    sh(str(ROOT / "dist" / "client-extractor"), "--source",
       f"postgresql://ehrlogic_reader@{PG['host']}:{PG['port']}/{SOURCE_DB}", "--client", "ehrlogic",
       "--date", day.isoformat(), "--output", f"s3://{s3_bucket()}", "--endpoint-url", s3, "--run-id", run_id,
       env={**os.environ, "EXTRACTOR_DB_PASSWORD": "local-trust", "AWS_ACCESS_KEY_ID": "local-access-key",
            "AWS_SECRET_ACCESS_KEY": "local-secret-key", "AWS_DEFAULT_REGION": "us-east-1"})
    return time.time()


def s3_bucket() -> str:
    return os.environ.get("CLIENTFLOW_BUCKET", "clientflow-landing")


def fresh_days(count: int) -> list[date]:
    """The first ``count`` dates from tomorrow on for which neither the bucket nor the ledger knows a
    batch of the client: no earlier run of a benchmark can be mistaken for this one's batches."""
    s3 = S3Settings(bucket=s3_bucket(), endpoint_url=f"http://127.0.0.1:{os.environ.get('CLIENTFLOW_S3_PORT', '5055')}",
                    access_key_id="local-access-key", secret_access_key="local-secret-key").client()
    keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=s3_bucket(), Prefix="client=ehrlogic/")
            for o in page.get("Contents", [])]
    used = {p.day for p in map(parse_key, keys) if p is not None}
    with psycopg.connect(dsn("clientflow_staging")) as conn:  # the bucket forgets when its server restarts
        used |= {row[0] for row in conn.execute("select batch_date from pipeline.batches where client_name = 'ehrlogic'")}
    out: list[date] = []
    day = date.today()
    while len(out) < count:
        day = date.fromordinal(day.toordinal() + 1)
        if day not in used:
            out.append(day)
    return out


def airflow(*args: str) -> str:
    """The Airflow CLI with the local stack's environment (scripts/stack.sh airflow-env)."""
    return sh("bash", "-c", 'eval "$(scripts/stack.sh airflow-env)"; exec .venv/bin/airflow "$@"', "airflow", *args)


def _taken_by(staging: Any, day: date, batch_run_id: str | None = None) -> str | None:
    """The Airflow run that took ``day``'s batch (of extractor run ``batch_run_id``, if given) up:
    the ledger records it at ingest."""
    row = staging.execute("select airflow_run_id from pipeline.batches where client_name = 'ehrlogic' and "
                          "batch_date = %s and (%s::text is null or run_id = %s) order by created_at desc",
                          (day, batch_run_id, batch_run_id)).fetchone()
    return row[0] if row and row[0] else None


def run_dag(day: date, arrived: float, batch_run_id: str | None = None) -> dict[str, float]:
    """The run that processes ``day``'s batch: the one its bucket event (or a scheduled run
    waiting for it) started, else, if none took it up within a minute, one triggered here.
    Seconds per task, and from the batch's arrival (``arrived``) to the end of promote."""
    with psycopg.connect(dsn("clientflow_airflow"), autocommit=True) as meta, \
            psycopg.connect(dsn("clientflow_staging"), autocommit=True) as staging:
        deadline = time.time() + 60
        while (run_id := _taken_by(staging, day, batch_run_id)) is None and time.time() < deadline:
            time.sleep(1)
        if run_id is None:
            run_id = f"bench__{day:%Y%m%d}_{time.time_ns()}"
            conf = {"batch_date": day.isoformat(), **({"run_id": batch_run_id} if batch_run_id else {})}
            airflow("dags", "trigger", DAG, "--run-id", run_id, "--conf", json.dumps(conf))
        while True:
            state = meta.execute("select state from dag_run where dag_id = %s and run_id = %s", (DAG, run_id)).fetchone()
            if state and state[0] in ("success", "failed"):
                break
            time.sleep(1)
        tasks = meta.execute("select task_id, start_date, end_date, state from task_instance where dag_id = %s and "
                             "run_id = %s order by start_date", (DAG, run_id)).fetchall()
    batch = [t for t in tasks if t[0] not in ("next_batch", "run_next_batch")]
    if state[0] != "success" or any(s != "success" for *_, s in batch):
        raise SystemExit(f"DAG run {run_id} ended {state[0]} ({tasks}); see the task logs in .stack/airflow")
    times = {task: (end - start).total_seconds() for task, start, end, _ in batch if task != "wait_for_batch"}
    times["total"] = max(e for _, _, e, _ in batch if e).timestamp() - arrived
    return times


def settle(timeout: float = 300, quiet: float = 10) -> None:
    """Wait until the client's DAG has had no run queued or running, and no bucket event waiting for
    a run, for ``quiet`` seconds: the other runs of a batch's bucket events (one message per table's
    manifest) end skipped after it. A client's next batch comes a day later, not seconds after the
    last promotion, so it is timed on a stack that has settled: its runs done, and PostgreSQL's
    dirty pages on disk (a checkpoint, as bench_load does). A first load writes gigabytes; the
    checkpoint that flushes them ran up to 40 s, and an incremental batch that overlapped it took
    31.7 s instead of about 17."""
    deadline = time.time() + timeout
    idle_since: float | None = None
    with psycopg.connect(dsn("clientflow_airflow"), autocommit=True) as meta:
        while time.time() < deadline:
            (busy,) = meta.execute(
                "select (select count(*) from dag_run where dag_id = %s and state in ('queued', 'running')) "
                "+ (select count(*) from asset_dag_run_queue where target_dag_id = %s)", (DAG, DAG)).fetchone()  # type: ignore[misc]
            idle_since = None if busy else (idle_since or time.time())
            if idle_since is not None and time.time() - idle_since >= quiet:
                os.sync()
                with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
                    admin.execute("checkpoint")
                return
            time.sleep(1)
    raise SystemExit(f"runs of {DAG} still queued or running after {timeout:.0f} s; see the Airflow UI")


def reset_client(client: str = CLIENT, *, keep_ledger: bool = False) -> None:
    """Forget a client (by default the sample one) on the local stack (raw, staging, dummy and real production,
    profiles, rejects, schema versions and, unless ``keep_ledger``, its ledger), so each run of the
    benchmark starts from an empty production. The bucket keeps its files.

    ``keep_ledger`` keeps the ledger's record of the batches it took up (batches, jobs, events):
    without it every earlier batch in the bucket is one the sweep has never seen, and it processes
    them all, one run after another, beside the benchmark's (bench_incremental keeps it, and uses
    dates the bucket has no file of)."""
    for dbname in ("clientflow_staging", "clientflow_production"):
        with psycopg.connect(dsn(dbname)) as conn:
            # Children go first, so the per-row foreign-key triggers have nothing to find; they would
            # still probe the children's indexes, full of the rows just deleted (minutes at 1,000,000).
            conn.execute("set local session_replication_role = replica")
            for table in ("procedures", "appointments", "patients", "providers"):
                conn.execute(f"delete from practice.{table} where client_id = %s", (client,))  # noqa: S608
            if dbname == "clientflow_production":
                conn.execute("delete from practice.promotions where client_id = %s", (client,))
                continue
            conn.execute(f'drop schema if exists "raw_{client}" cascade')
            conn.execute(f'drop schema if exists "stg_{client}" cascade')
            ids = "(select ingestion_id from pipeline.batches where client_name = %s)"
            forget = ("rejects", "batch_profiles", "acceptances") + (() if keep_ledger else ("batch_events", "jobs"))
            for table in forget:
                conn.execute(f"delete from pipeline.{table} where ingestion_id in {ids}", (client,))  # noqa: S608
            if not keep_ledger:
                conn.execute("delete from pipeline.batches where client_name = %s", (client,))
            conn.execute("delete from pipeline.schema_registry where client_name = %s", (client,))
    for dbname in ("clientflow_staging", "clientflow_production"):  # so each run meets clean tables
        with psycopg.connect(dsn(dbname), autocommit=True) as conn:
            for table in ("procedures", "appointments", "patients", "providers"):
                conn.execute(f"vacuum (analyze) practice.{table}")  # noqa: S608 - our own names


def change_one_percent(patients: int) -> int:
    """Change 1% of every table's rows at the source (names, statuses, fees): the next batch's delta."""
    changed = 0
    with psycopg.connect(dsn(SOURCE_DB)) as conn:
        for table, key, column, value in (
            ("dim_patient", "pt_id", "pt_last_nm", "pt_last_nm || 'x'"),
            ("fact_appointment", "appt_id", "appt_status", "'Done'"),
            ("fact_procedure", "proc_id", "proc_fee", "coalesce(proc_fee, 0) + 1"),
            ("dim_provider", "prov_id", "prov_last_nm", "prov_last_nm || 'x'"),
        ):
            changed += conn.execute(f"update {table} set {column} = {value} where {key} % 100 = 7").rowcount  # noqa: S608
    return changed


def wal_mb() -> float:
    """PostgreSQL's WAL position in MB: the difference of two is what the server wrote between them
    (the write volume of a batch, steadier than its seconds on a shared machine; Airflow's metadata
    database on the same server adds a little)."""
    with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
        row = admin.execute("select pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')").fetchone()
    assert row is not None
    return float(row[0]) / 2**20


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=1_000_000)
    args = parser.parse_args()
    began = datetime.now()
    subprocess.run([str(ROOT / "scripts" / "stack.sh"), "up"], check=True, cwd=ROOT)
    airflow("dags", "unpause", DAG)
    reset_client(keep_ledger=True)
    counts = ehrlogic.create(ADMIN_DSN, SOURCE_DB, args.patients)
    rows = sum(counts.values())
    wal = [wal_mb()]
    with tempfile.TemporaryDirectory(prefix="bench-e2e-", dir=scratch_dir()) as tmp:
        base = baseline(Path(tmp))
    wal.append(wal_mb())
    print(f"baseline: psql \\copy of {rows:,} rows out of the source and into keyed tables: {base:.1f} s")
    # Two dates no earlier run of a benchmark used, and extractor runs of their own: a second run of
    # the benchmark on the same stack times its own batches, not one it finds from the run before.
    days = fresh_days(2)
    runs = [f"bench-e2e-{time.strftime('%Y%m%dT%H%M%S')}-{i}" for i in (1, 2)]
    # The stack's first runs (today's scheduled run, S3's test event) end skipped before the first
    # batch is uploaded: it would otherwise wait behind them (max_active_runs=1), and its time count it.
    settle()
    with PeakRss() as peak:
        wal.append(wal_mb())
        first = run_dag(days[0], extract(days[0], runs[0]), runs[0])
        wal.append(wal_mb())
        settle()
        changed = change_one_percent(args.patients)
        wal.append(wal_mb())
        second = run_dag(days[1], extract(days[1], runs[1]), runs[1])
        wal.append(wal_mb())
    for name, times in (("first batch", first), (f"second batch ({changed:,} rows changed)", second)):
        print(f"{name}: " + ", ".join(f"{task} {s:.1f} s" for task, s in times.items()))
    print(f"WAL written: baseline {wal[1] - wal[0]:,.0f} MB, first batch {wal[3] - wal[2]:,.0f} MB, "
          f"second batch {wal[5] - wal[4]:,.0f} MB")
    ratio, p = first["total"] / base, second["promote"] / first["promote"]
    print(f"first batch {first['total']:.1f} s vs baseline {base:.1f} s: ratio {ratio:.2f} (target < 6); "
          f"1% batch's promotion {second['promote']:.1f} s vs {first['promote']:.1f} s: {p:.3f} (target < 0.1)")
    print(f"BENCH name=e2e rows={rows} seconds={first['total']:.1f} baseline_seconds={base:.1f} ratio={ratio:.2f} "
          f"promote_1pct_ratio={p:.3f} peak_rss_mb={peak.peak_kb / 1024:.0f}")
    with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
        admin.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(BASELINE_DB)))
    print(f"(started {began:%H:%M}, ended {datetime.now():%H:%M}; the stack keeps running: make down stops it)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
