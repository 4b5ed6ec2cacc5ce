"""JSONTestSuite's parsing corpus against the raw load, on real PostgreSQL.

Each corpus document is loaded three ways:

- ``file``: the document itself is data.json (manifest for its bytes, one text column);
- ``cell-fast`` / ``cell-scanner``: the document is the value of the first of two rows, so the
  loader has to validate it as JSON; once through the fast path, once with every row found by
  the scanner.

``n_`` documents must be refused with BadInputError naming the file, ``y_`` documents must load
as cells with their exact text (as data.json most are not arrays of objects, and are refused),
``i_`` documents may go either way; nothing may be committed by a refusal, and nothing may crash
or hang. The loads run in a child process, so a crash in a C extension or a hang fails the file
it happened on (after PER_FILE_SECONDS) instead of the whole session.
"""

from __future__ import annotations

import io
import json
import os
import queue
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

ROOT = Path(__file__).resolve().parents[2]
# JSONTestSuite, copied into the repository (tests/data/jsontestsuite: MIT licence, SOURCE names the commit).
CORPUS = ROOT / "tests" / "data" / "jsontestsuite" / "test_parsing"
FILES = sorted(p.name for p in CORPUS.glob("*.json"))
MODES = ("file", "cell-fast", "cell-scanner")
PER_FILE_SECONDS = 60
PREFIX = "@@corpus "


def document_for(doc: bytes, mode: str) -> tuple[bytes, int]:
    """data.json for a corpus document, and the row count its manifest states."""
    if mode == "file":
        try:
            parsed = json.loads(doc)
        except (ValueError, RecursionError):
            return doc, 0
        return doc, len(parsed) if isinstance(parsed, list) else 0
    return b'[\n{"value":' + doc + b'},\n{"value":"second"}\n]\n', 2


# ---------------------------------------------------------------------------------------------
# The child process: loads every file it is given, one JSON line per attempt on stdout.


def _child(dsn: str, names: list[str]) -> None:
    from clientflow.errors import BadInputError, IntegrityError
    from clientflow.load import jsonrows, raw
    from tests.support.rawload import columns, manifest

    fast = (jsonrows._ROW_END, jsonrows._FAST_LIMIT)
    with psycopg.connect(dsn) as conn:
        for name in names:
            doc = (CORPUS / name).read_bytes()
            for mode in MODES:
                print(PREFIX + json.dumps({"start": name, "mode": mode}), flush=True)
                jsonrows._ROW_END, jsonrows._FAST_LIMIT = (b"\x00never", -1) if mode == "cell-scanner" else fast
                data, rows = document_for(doc, mode)
                result: dict[str, Any] = {"done": name, "mode": mode}
                try:
                    raw.load_table(conn, "raw_acme", manifest(data, rows, columns("value"), table="corpus"),
                                   io.BytesIO(data), ingestion_id="corpus", source_file=f"corpus/{name}")
                    result["stored"] = [r[0] for r in conn.execute(
                        "select value from raw_acme.corpus order by source_row").fetchall()]
                    result["outcome"] = "loaded"
                except (BadInputError, IntegrityError) as exc:
                    result.update(outcome=type(exc).__name__, message=str(exc))
                except Exception as exc:  # reported as a failure of this file
                    result.update(outcome=f"unexpected {type(exc).__name__}", message=repr(exc)[:500])
                finally:
                    conn.rollback()
                result["left_behind"] = conn.execute(
                    "select to_regclass('raw_acme.corpus') is not null").fetchone() != (False,)
                print(PREFIX + json.dumps(result), flush=True)
    print(PREFIX + json.dumps({"finished": True}), flush=True)


# ---------------------------------------------------------------------------------------------
# The parent: runs the child with a per-file deadline, restarting it after a crash or a hang.


def _lines(proc: subprocess.Popen[str]) -> queue.Queue[str | None]:
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith(PREFIX):
                lines.put(line[len(PREFIX):])
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return lines


def run_corpus(dsn: str, names: list[str]) -> dict[tuple[str, str], dict[str, Any]]:
    results: dict[tuple[str, str], dict[str, Any]] = {}
    remaining = list(names)
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    while remaining:
        proc = subprocess.Popen([sys.executable, __file__, dsn], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
        assert proc.stdin is not None
        proc.stdin.write(json.dumps(remaining))
        proc.stdin.close()
        lines = _lines(proc)
        failure = None
        while True:
            try:
                line = lines.get(timeout=PER_FILE_SECONDS)
            except queue.Empty:
                proc.kill()
                failure = f"hang: no answer within {PER_FILE_SECONDS} s"
                break
            if line is None:
                proc.wait()
                failure = f"crash: the child exited with {proc.returncode}"
                break
            event = json.loads(line)
            if "finished" in event:
                break
            if "done" in event:
                results[(event["done"], event["mode"])] = event
        proc.wait()
        if failure is None:
            break
        # the first file without all its answers is the one the child died on; go on after it
        culprit = next(n for n in remaining if any((n, mode) not in results for mode in MODES))
        for mode in MODES:
            results.setdefault((culprit, mode), {"outcome": failure, "message": ""})
        remaining = remaining[remaining.index(culprit) + 1:]
    return results


@pytest.fixture(scope="module")
def outcomes(admin_dsn: str) -> Iterator[dict[tuple[str, str], dict[str, Any]]]:
    name = f"cf_corpus_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
    try:
        yield run_corpus(psycopg.conninfo.make_conninfo(admin_dsn, dbname=name), FILES)
    finally:
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))


def expected_cell(doc: bytes) -> str | None:
    """What a text column holds for a valid JSON document: a string's text, else its JSON text."""
    value = json.loads(doc)
    if value is None or isinstance(value, str):
        return value
    return doc.strip(b" \t\r\n").decode("utf-8")


@pytest.mark.parametrize("name", FILES)
def test_corpus_document(outcomes: dict[tuple[str, str], dict[str, Any]], name: str) -> None:
    doc = (CORPUS / name).read_bytes()
    for mode in MODES:
        got = outcomes[(name, mode)]
        context = f"{name} as {mode}: {got}"
        assert got["outcome"] in ("loaded", "BadInputError", "IntegrityError"), context
        assert not got["left_behind"], f"a refused load left its table behind: {context}"
        if got["outcome"] != "loaded":
            assert f"file=corpus/{name}" in got["message"], context
        if name.startswith("n_"):
            assert got["outcome"] == "BadInputError", context
        if name.startswith("y_") and mode != "file":
            assert got["outcome"] == "loaded", context
            assert got["stored"] == [expected_cell(doc), "second"], context
        if name.startswith("y_") and mode == "file" and got["outcome"] == "loaded":
            assert got["stored"] == [expected_cell(json.dumps(row["value"]).encode()) for row in json.loads(doc)]


def test_every_invalid_document_is_in_the_corpus_run(outcomes: dict[tuple[str, str], dict[str, Any]]) -> None:
    """The corpus is the one expected (JSONTestSuite's 95 y_, 188 n_ and 35 i_ files)."""
    kinds = {prefix: sum(1 for f in FILES if f.startswith(prefix)) for prefix in ("y_", "n_", "i_")}
    assert kinds == {"y_": 95, "n_": 188, "i_": 35}
    assert len(outcomes) == len(FILES) * len(MODES)


if __name__ == "__main__":
    _child(sys.argv[1], json.loads(sys.stdin.read()))
