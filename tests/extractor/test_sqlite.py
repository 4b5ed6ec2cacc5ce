"""SQLite: declared types choose the encoding; values SQLite stored under another class keep their own form."""

from __future__ import annotations

import base64
import hashlib
import json
import sqlite3
from decimal import Decimal
from pathlib import Path
from typing import Any

from .conftest import local_batch


def test_sqlite_values_round_trip(run_extractor: Any, tmp_path: Path) -> None:
    db = tmp_path / "clinic.db"
    conn = sqlite3.connect(db)
    conn.execute("""create table visits (id integer primary key, n_int integer, n_real real, name text not null, raw blob,
                    amount numeric(10,2), flag boolean, doc json, seen_at datetime, untyped)""")
    rows = [
        (1, 9223372036854775807, 0.1, "emoji 😀 𝄞 \x00 nul", b"\x00\xff\x00", 12.5, 1, '{"a":\n[1, 2.50]}', "2026-11-22 03:49:00", 7),
        (2, -9223372036854775808, float("inf"), "", b"", 3, 0, "null", None, "text"),
        (3, "not a number", float("-inf"), "x", "text in blob column", "12.50", 2, "not json", 1700000000, b"\x01"),
        (4, None, None, "y", None, None, None, None, None, None),
        (5, 1, -0.0, "z", b"z", 1e-7, 1, "[]", "2026", 1.5),
    ]
    conn.executemany("insert into visits values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
    conn.execute("create table bad_text (id integer, t text)")
    conn.execute("insert into bad_text values (1, cast(x'ff41' as text)), (2, 'ok')")
    conn.commit()
    conn.close()

    out = tmp_path / "out"
    res = run_extractor("--source", f"sqlite:///{db}", "--client", "clinic", "--output", str(out))
    assert res.returncode == 0, res.stderr
    batch = local_batch(out, "clinic")
    assert sorted(batch) == ["bad_text", "visits"]
    manifest, data = batch["visits"]["manifest"], batch["visits"]["data"]
    assert manifest["sha256"] == hashlib.sha256(data).hexdigest() and manifest["row_count"] == 5
    assert manifest["schema"] == "main" and manifest["source_dialect"] == "sqlite"
    enc = {c["name"]: c["encoding"] for c in manifest["columns"]}
    assert enc == {"id": "integer", "n_int": "integer", "n_real": "float", "name": "string", "raw": "bytes_base64",
                   "amount": "decimal", "flag": "boolean", "doc": "json", "seen_at": "string", "untyped": "bytes_base64"}
    cols = {c["name"]: c for c in manifest["columns"]}
    assert cols["id"]["primary_key"] and not cols["name"]["nullable"] and cols["amount"]["source_type"] == "numeric(10,2)"

    r = {row["id"]: row for row in json.loads(data, parse_float=Decimal)}
    assert r[1]["n_int"] == 9223372036854775807 and r[2]["n_int"] == -9223372036854775808
    assert r[3]["n_int"] == "not a number"  # SQLite kept text in an INTEGER column: written as a string
    assert r[1]["n_real"] == Decimal("0.1") and r[2]["n_real"] == "Infinity" and r[3]["n_real"] == "-Infinity"
    assert r[1]["name"] == "emoji 😀 𝄞 \x00 nul" and r[2]["name"] == ""
    assert base64.b64decode(r[1]["raw"]) == b"\x00\xff\x00" and r[2]["raw"] == "" and r[4]["raw"] is None
    assert r[3]["raw"] == "text in blob column"
    assert r[1]["amount"] == "12.5" and r[2]["amount"] == "3" and r[5]["amount"] == "1e-07"
    assert r[1]["flag"] is True and r[2]["flag"] is False and r[3]["flag"] == 2
    assert r[1]["doc"] == {"a": [1, Decimal("2.50")]} and r[2]["doc"] == {"$json": None} and r[3]["doc"] == "not json"
    assert r[1]["seen_at"] == "2026-11-22 03:49:00" and r[3]["seen_at"] == 1700000000
    assert r[1]["untyped"] == 7 and r[2]["untyped"] == "text" and r[3]["untyped"] == base64.b64encode(b"\x01").decode()
    assert r[5]["untyped"] == Decimal("1.5")

    bad = json.loads(batch["bad_text"]["data"])
    assert bad == [{"id": 1, "t": {"$bytes_b64": base64.b64encode(b"\xffA").decode()}}, {"id": 2, "t": "ok"}]


def test_sqlite_relative_path_and_missing_file(run_extractor: Any, tmp_path: Path) -> None:
    res = run_extractor("--source", "sqlite:///does/not/exist.db", "--client", "c", "--output", str(tmp_path / "o"))
    assert res.returncode == 3
    assert "sqlite database file not found: does/not/exist.db" in res.stderr and "sqlite:////" in res.stderr
