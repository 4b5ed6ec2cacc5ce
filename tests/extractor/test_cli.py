"""Command line: usage errors, exit codes, re-runs that never overwrite, and flat memory."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from .conftest import free_port, local_batch, maria_connect, pg_connect


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--client", "Bad-Name", "--source", "sqlite:///x.db", "--output", "o"], "--client must match"),
        (["--client", "ok", "--source", "sqlite:///x.db", "--output", "o", "--date", "2026-13-01"], "--date must be YYYY-MM-DD"),
        (["--client", "ok", "--source", "sqlite:///x.db"], "missing --output"),
        (["--client", "ok", "--source", "oracle://u@h/db", "--output", "o"], "unsupported URL scheme"),
        (["--client", "ok", "--source", "sqlite:///x.db", "--output", "o", "--endpoint-url", "http://x"], "only applies to an s3://"),
        (["--client", "ok", "--source", "sqlite:///x.db", "--output", "o", "--run-id", "a/b"], "--run-id must be"),
        (["--client", "ok", "--source", "sqlite:///x.db", "--output", "o", "--bogus"], "unrecognized arguments"),
        (["--config", "/nonexistent.toml"], "config file not found"),
    ],
)
def test_usage_errors_exit_2(args: list[str], needle: str, run_extractor: Any) -> None:
    res = run_extractor(*args)
    assert res.returncode == 2, res.stderr
    assert needle in res.stderr and res.stdout == ""


def test_unknown_config_key_and_version(run_extractor: Any, tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('clinet = "typo"\n')
    res = run_extractor("--config", str(config))
    assert res.returncode == 2 and "unknown key(s) clinet" in res.stderr
    res = run_extractor("--version")
    assert res.returncode == 0 and res.stdout.strip() == "client-extractor 0.1.0"


def test_connection_failures_exit_3(pg_db: str, run_extractor: Any, tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    res = run_extractor("--source", f"postgresql://reader@127.0.0.1:{port}/ehr", "--client", "c", "--output", str(tmp_path))
    assert res.returncode == 3
    assert f"cannot connect to 127.0.0.1:{port}/ehr as user 'reader'" in res.stderr and "Check the host, port" in res.stderr
    res = run_extractor("--source", "postgresql://postgres@127.0.0.1:5432/cfx_no_such_db", "--client", "c", "--output", str(tmp_path))
    assert res.returncode == 3 and "does not exist" in res.stderr and "Check the database name" in res.stderr
    res = run_extractor("--source", f"mysql://root@127.0.0.1:{port}/ehr", "--client", "c", "--output", str(tmp_path))
    assert res.returncode == 3 and f"127.0.0.1:{port}/ehr" in res.stderr
    res = run_extractor("--source", f"postgresql://postgres@127.0.0.1:5432/{pg_db}", "--client", "c", "--schema", "nope",
                        "--output", str(tmp_path))
    assert res.returncode == 2 and "schema 'nope' does not exist" in res.stderr


def test_rerun_with_same_run_id_skips_completed_tables_and_never_overwrites(pg_db: str, run_extractor: Any, tmp_path: Path) -> None:
    with pg_connect(pg_db, autocommit=True) as conn:
        conn.execute("create table a (id int); insert into a values (1)")
        conn.execute("create table b (id int); insert into b values (2)")
    out = tmp_path / "o"
    args = ["--source", f"postgresql://postgres@127.0.0.1:5432/{pg_db}", "--client", "c", "--output", str(out),
            "--run-id", "same", "--date", "2026-11-22"]
    assert run_extractor(*args, "--tables", "a").returncode == 0
    manifest_a = out / "client=c/table=a/date=20261122/run_id=same/manifest.json"
    before = (manifest_a.read_bytes(), manifest_a.stat().st_mtime_ns)
    with pg_connect(pg_db, autocommit=True) as conn:
        conn.execute("insert into a values (99)")  # a re-run must not replace the finished table
    res = run_extractor(*args)
    assert res.returncode == 0, res.stderr
    assert "a  already complete in this run (skipped)" in res.stdout.replace("  ", "  ")
    assert (manifest_a.read_bytes(), manifest_a.stat().st_mtime_ns) == before
    batch = local_batch(out, "c")
    assert json.loads(batch["a"]["data"]) == [{"id": 1}] and json.loads(batch["b"]["data"]) == [{"id": 2}]
    assert not list(out.rglob(".*partial"))


def _peak_rss_mb(cmd: list[str]) -> float:
    """Peak RSS of the largest process in the tree (the bootloader's child does the work)."""
    probe = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL); "
             "print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    out = subprocess.run([sys.executable, "-c", probe, *cmd], capture_output=True, text=True, check=True).stdout.split()
    assert out[0] == "0"
    return int(out[1]) / 1024


def test_memory_is_flat_in_the_number_of_rows(pg_db: str, extractor_bin: Path, tmp_path: Path) -> None:
    with pg_connect(pg_db, autocommit=True) as conn:
        for name, rows in (("small", 10_000), ("large", 400_000)):
            conn.execute(f"create table {name} (id bigint primary key, name text, dob date, note text, amount numeric(12,2))")
            conn.execute(f"insert into {name} select i, 'name ' || i, date '1950-01-01' + i % 20000, repeat('x', 80), i / 100.0 "
                         f"from generate_series(1, {rows}) i")
    base = [str(extractor_bin), "--source", f"postgresql://postgres@127.0.0.1:5432/{pg_db}", "--client", "m", "--output", str(tmp_path)]
    small = _peak_rss_mb([*base, "--tables", "small"])
    large = _peak_rss_mb([*base, "--tables", "large"])
    assert large < 150
    assert large - small < 10, (small, large)  # 40x the rows, same memory


def test_memory_is_flat_in_the_number_of_rows_mariadb(maria_db: str, extractor_bin: Path, tmp_path: Path) -> None:
    """The MySQL/MariaDB path reads through an unbuffered server-side cursor: same peak for 40x the rows."""
    conn = maria_connect(maria_db)
    with conn.cursor() as cur:
        for name, rows in (("small", 10_000), ("large", 400_000)):
            cur.execute(f"CREATE TABLE {name} (id BIGINT PRIMARY KEY, name TEXT, dob DATE, note TEXT, amount DECIMAL(12,2))")
            cur.execute(f"INSERT INTO {name} SELECT seq, CONCAT('name ', seq), '1950-01-01' + INTERVAL (seq % 20000) DAY, "
                        f"REPEAT('x', 80), seq / 100 FROM seq_1_to_{rows}")  # MariaDB's Sequence engine
    conn.close()
    base = [str(extractor_bin), "--source", f"mysql://root@127.0.0.1:3306/{maria_db}", "--client", "m", "--output", str(tmp_path)]
    small = _peak_rss_mb([*base, "--tables", "small"])
    large = _peak_rss_mb([*base, "--tables", "large"])
    assert local_batch(tmp_path, "m")["large"]["manifest"]["row_count"] == 400_000
    assert large < 150
    assert large - small < 10, (small, large)
