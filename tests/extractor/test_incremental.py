"""Incremental extraction with the real binary against PostgreSQL and MariaDB: the first run is a
full snapshot, the next ones carry only the rows past the previous high mark (inclusive), the marks
go into the manifest and a local state file, and --full-refresh, a changed cursor type or a missing
state file take the table whole again."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from client_extractor.encoding import Column
from client_extractor.incremental import Window
from client_extractor.settings import parse_source_url
from client_extractor.sources.postgres import PostgresReader

from .conftest import maria_connect, pg_connect

CURSOR = "Updated At ☃"  # a cursor whose name must be quoted


def _run_files(out: Path, client: str, table: str, run_id: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    folder = next(out.glob(f"client={client}/table={table}/date=*/run_id={run_id}"))
    manifest = json.loads((folder / "manifest.json").read_bytes())
    rows = json.loads((folder / "data.json").read_bytes())
    return manifest, rows


def _config(tmp_path: Path, source: str, client: str, incremental: dict[str, str]) -> Path:
    lines = [f'source = "{source}"', f'client = "{client}"', f'output = "{tmp_path / "out"}"',
             f'state_file = "{tmp_path / "state.json"}"', "", "[incremental]"]
    lines += [f"{json.dumps(table)} = {json.dumps(column)}" for table, column in incremental.items()]
    path = tmp_path / "extract.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_postgres_second_run_carries_only_changed_rows(pg_db: str, run_extractor: Any, tmp_path: Path) -> None:
    with pg_connect(pg_db, autocommit=True) as conn:
        conn.execute(f'create table visits (id int primary key, note text, "{CURSOR}" timestamptz)')
        conn.execute("create table codes (code text primary key)")
        conn.execute("insert into codes values ('a'), ('b')")
        conn.execute("""insert into visits select i, 'n' || i, timestamptz '2026-11-01 10:00:00+00' + i * interval '1 minute'
                         from generate_series(1, 5) i""")
        conn.execute("insert into visits values (7, 'no cursor yet', null)")
    config = _config(tmp_path, f"postgresql://postgres@127.0.0.1:5432/{pg_db}", "c", {"visits": CURSOR})
    out = tmp_path / "out"

    first = run_extractor("--config", str(config), "--run-id", "r1", "--date", "2026-11-01")
    assert first.returncode == 0, first.stderr
    assert "full snapshot (no state yet)" in first.stdout
    manifest, rows = _run_files(out, "c", "visits", "r1")
    assert manifest["extraction"] == {"mode": "full", "cursor_column": CURSOR, "low_mark": None,
                                      "high_mark": "2026-11-01 10:05:00+00"}
    assert sorted(r["id"] for r in rows) == [1, 2, 3, 4, 5, 7]
    codes, _ = _run_files(out, "c", "codes", "r1")
    assert codes["extraction"]["mode"] == "full" and codes["extraction"]["cursor_column"] is None
    state = json.loads((tmp_path / "state.json").read_text(encoding="utf-8"))
    assert [e["high_mark"] for e in state["tables"].values()] == ["2026-11-01 10:05:00+00"]
    assert (tmp_path / "state.json").stat().st_mode & 0o077 == 0

    with pg_connect(pg_db, autocommit=True) as conn:
        conn.execute(f"""update visits set note = 'changed', "{CURSOR}" = timestamptz '2026-11-02 09:00:00+00' where id = 2""")
        conn.execute("insert into visits values (6, 'new', timestamptz '2026-11-02 09:30:00+00')")
        conn.execute("delete from visits where id = 3")

    second = run_extractor("--config", str(config), "--run-id", "r2", "--date", "2026-11-02")
    assert second.returncode == 0, second.stderr
    assert f"incremental on {CURSOR}" in second.stdout
    manifest, rows = _run_files(out, "c", "visits", "r2")
    assert manifest["extraction"] == {"mode": "incremental", "cursor_column": CURSOR,
                                      "low_mark": "2026-11-01 10:05:00+00", "high_mark": "2026-11-02 09:30:00+00"}
    # the changed and the new row, and row 5 again: the window starts at the previous high mark, inclusive
    assert sorted((r["id"], r["note"]) for r in rows) == [(2, "changed"), (5, "n5"), (6, "new")]
    assert manifest["row_count"] == 3
    full_job = _run_files(out, "c", "visits", "r1")[0]["job_id"]
    assert manifest["job_id"] != full_job

    unchanged = run_extractor("--config", str(config), "--run-id", "r3", "--date", "2026-11-03")
    assert unchanged.returncode == 0, unchanged.stderr
    assert [r["id"] for r in _run_files(out, "c", "visits", "r3")[1]] == [6]

    refreshed = run_extractor("--config", str(config), "--run-id", "r4", "--date", "2026-11-04", "--full-refresh")
    assert refreshed.returncode == 0, refreshed.stderr
    manifest, rows = _run_files(out, "c", "visits", "r4")
    assert manifest["extraction"]["mode"] == "full" and "(--full-refresh)" in refreshed.stdout
    assert sorted(r["id"] for r in rows) == [1, 2, 4, 5, 6, 7]

    # the cursor's type changed: the marks of the old type mean nothing, so the table is taken whole
    with pg_connect(pg_db, autocommit=True) as conn:
        conn.execute(f'alter table visits alter column "{CURSOR}" type timestamp')
    retyped = run_extractor("--config", str(config), "--run-id", "r5", "--date", "2026-11-05")
    assert retyped.returncode == 0, retyped.stderr
    assert f"full snapshot (type of {CURSOR} changed)" in retyped.stdout
    assert _run_files(out, "c", "visits", "r5")[0]["extraction"]["mode"] == "full"

    # the state file lost: a full snapshot, never a gap
    (tmp_path / "state.json").unlink()
    again = run_extractor("--config", str(config), "--run-id", "r6", "--date", "2026-11-06")
    assert again.returncode == 0 and "full snapshot (no state yet)" in again.stdout


def test_postgres_bad_cursor_and_bad_state_are_clear(pg_db: str, run_extractor: Any, tmp_path: Path) -> None:
    with pg_connect(pg_db, autocommit=True) as conn:
        conn.execute("create table visits (id int primary key, flags jsonb)")
        conn.execute("insert into visits values (1, '{}')")
    src = f"postgresql://postgres@127.0.0.1:5432/{pg_db}"
    missing = run_extractor("--config", str(_config(tmp_path, src, "c", {"visits": "updated_at"})))
    assert missing.returncode == 2
    assert "table visits has no column 'updated_at' to use as its cursor" in missing.stderr
    unordered = run_extractor("--config", str(_config(tmp_path, src, "c", {"visits": "flags"})))
    assert unordered.returncode == 2 and "a cursor must be an integer, decimal, date, timestamp or text column" in unordered.stderr
    typo = run_extractor("--config", str(_config(tmp_path, src, "c", {"visit": "id"})))
    assert typo.returncode == 2 and "[incremental] names table(s) not found in schema 'public': visit" in typo.stderr

    (tmp_path / "state.json").write_text("{not json", encoding="utf-8")
    broken = run_extractor("--config", str(_config(tmp_path, src, "c", {"visits": "id"})), "--run-id", "b1")
    assert broken.returncode == 0, broken.stderr
    assert "cannot be read (not valid JSON): the incremental tables are taken whole" in broken.stderr
    assert "full snapshot (no state yet)" in broken.stdout
    assert json.loads((tmp_path / "state.json").read_text(encoding="utf-8"))["version"] == 1


def test_postgres_row_changed_during_the_run_comes_in_the_next(pg_db: str) -> None:
    """The high mark is read in the run's snapshot before the rows: a row committed while the run
    reads is in neither, and the next run, starting at the mark, takes it."""
    with pg_connect(pg_db, autocommit=True) as conn:
        conn.execute("create table t (id int primary key, v int not null)")
        conn.execute("insert into t select i, i from generate_series(1, 10) i")
    reader = PostgresReader(parse_source_url(f"postgresql://postgres@127.0.0.1:5432/{pg_db}"), None)
    reader.connect()
    try:
        columns = reader.columns("public", "t")
        cursor = next(c for c in columns if c.name == "v")
        high = reader.high_mark("public", "t", cursor)
        with pg_connect(pg_db, autocommit=True) as other:  # committed while the run reads
            other.execute("insert into t values (11, 11)")
            other.execute("update t set v = 12 where id = 3")
        rows = _stream(reader, columns, Window(cursor, "8", high))
    finally:
        reader.close()
    assert high == "10" and rows == [{"id": 8, "v": 8}, {"id": 9, "v": 9}, {"id": 10, "v": 10}]

    reader = PostgresReader(parse_source_url(f"postgresql://postgres@127.0.0.1:5432/{pg_db}"), None)
    reader.connect()
    try:
        columns = reader.columns("public", "t")
        cursor = next(c for c in columns if c.name == "v")
        nxt = _stream(reader, columns, Window(cursor, high, reader.high_mark("public", "t", cursor)))
    finally:
        reader.close()
    assert sorted(r["id"] for r in nxt) == [3, 10, 11]


def _stream(reader: Any, columns: list[Column], window: Window) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for page, _count in reader.stream("public", "t", columns, window):
        out += [json.loads(line) for line in page.splitlines() if line]
    return sorted(out, key=lambda r: r["id"])


def test_mariadb_incremental_by_timestamp_and_by_growing_id(maria_db: str, run_extractor: Any, tmp_path: Path) -> None:
    conn = maria_connect(maria_db)
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE Exams (ExamID INT PRIMARY KEY, Status VARCHAR(3), UpdatedOn DATETIME(6) NOT NULL)")
        cur.execute("CREATE TABLE `Audit%Log` (LogID BIGINT PRIMARY KEY, What VARCHAR(20))")
        cur.execute("INSERT INTO Exams VALUES (1, 'SCH', '2026-11-01 08:00:00.000001'), (2, 'SCH', '2026-11-01 08:00:00.5'),"
                    " (3, 'SCH', '2026-11-01 07:00:00')")
        cur.execute("INSERT INTO `Audit%Log` VALUES (1, 'a'), (2, 'b')")
    config = _config(tmp_path, f"mysql://root@127.0.0.1:3306/{maria_db}", "iris",
                     {"Exams": "UpdatedOn", "Audit%Log": "LogID"})
    out = tmp_path / "out"
    first = run_extractor("--config", str(config), "--run-id", "m1")
    assert first.returncode == 0, first.stderr
    exams, rows = _run_files(out, "iris", "Exams", "m1")
    assert exams["extraction"] == {"mode": "full", "cursor_column": "UpdatedOn", "low_mark": None,
                                   "high_mark": "2026-11-01 08:00:00.500000"}
    assert len(rows) == 3
    assert _run_files(out, "iris", "Audit%25Log", "m1")[0]["extraction"]["high_mark"] == "2"

    with conn.cursor() as cur:
        cur.execute("UPDATE Exams SET Status = 'CMP', UpdatedOn = '2026-11-02 10:00:00' WHERE ExamID = 3")
        cur.execute("DELETE FROM Exams WHERE ExamID = 1")
        cur.execute("INSERT INTO Exams VALUES (4, 'SCH', '2026-11-02 11:00:00')")
        cur.execute("INSERT INTO `Audit%Log` VALUES (3, 'c'), (4, 'd')")
    conn.close()
    second = run_extractor("--config", str(config), "--run-id", "m2")
    assert second.returncode == 0, second.stderr
    exams, rows = _run_files(out, "iris", "Exams", "m2")
    assert exams["extraction"]["mode"] == "incremental"
    assert exams["extraction"]["low_mark"] == "2026-11-01 08:00:00.500000"
    assert sorted((r["ExamID"], r["Status"]) for r in rows) == [(2, "SCH"), (3, "CMP"), (4, "SCH")]
    log, rows = _run_files(out, "iris", "Audit%25Log", "m2")
    assert log["extraction"]["low_mark"] == "2" and sorted(r["LogID"] for r in rows) == [2, 3, 4]
