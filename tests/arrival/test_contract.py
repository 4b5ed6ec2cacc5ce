"""One contract between the extractor and the pipeline (client_extractor/contract.py).

A manifest the extractor writes validates against the pipeline's model and against the JSON
Schema published in docs/; both sides use the same identifier rules and bucket layout.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from datetime import date
from pathlib import Path

import jsonschema
import pytest

from client_extractor import contract
from clientflow.arrival.manifest import Manifest, ManifestColumn, json_schema, parse_manifest
from clientflow.errors import BadInputError, Where

ROOT = Path(__file__).resolve().parents[2]
SCHEMA_FILE = ROOT / "docs" / "manifest.schema.json"


@pytest.fixture(scope="module")
def written_manifest(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """What the extractor itself writes, for a table with one column of every SQLite kind."""
    folder = tmp_path_factory.mktemp("contract")
    db = folder / "practice.db"
    with sqlite3.connect(db) as conn:
        conn.execute('create table "odd name ""x""" (id integer primary key, name text, fee real, '
                     'dob date, photo blob, flag boolean)')
        conn.execute('insert into "odd name ""x""" values (1, ?, 12.5, ?, ?, 1)', ("Ana", "2001-02-03", b"\x00\xff"))
    done = subprocess.run(
        [sys.executable, "-m", "client_extractor", "--source", f"sqlite:///{db}", "--client", "acme",
         "--date", "2026-12-01", "--run-id", "20261201T000000Z-abc", "--output", str(folder / "out")],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    key = contract.batch_key("acme", 'odd name "x"', date(2026, 12, 1), "20261201T000000Z-abc", contract.MANIFEST_FILE)
    return (folder / "out" / key).read_bytes()


def test_extractor_manifest_validates_against_the_pipeline_model(written_manifest: bytes) -> None:
    manifest = parse_manifest(written_manifest, Where(client="acme"))
    assert manifest.table == 'odd name "x"' and manifest.row_count == 1
    assert list(json.loads(written_manifest)) == list(contract.MANIFEST_FIELDS)
    assert [list(c) for c in json.loads(written_manifest)["columns"]] == [list(contract.COLUMN_FIELDS)] * 6


def test_extractor_manifest_validates_against_the_published_schema(written_manifest: bytes) -> None:
    schema = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.validate(json.loads(written_manifest), schema)
    broken = {**json.loads(written_manifest), "run_id": "has:colon"}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)


def test_published_schema_is_current() -> None:
    assert SCHEMA_FILE.read_text(encoding="utf-8") == json_schema(), "run `clientflow manifest-schema > docs/manifest.schema.json`"


def test_model_fields_are_the_contract_fields() -> None:
    assert [f.alias or name for name, f in Manifest.model_fields.items()] == list(contract.MANIFEST_FIELDS)
    assert list(ManifestColumn.model_fields) == list(contract.COLUMN_FIELDS)


@pytest.mark.parametrize("run_id", ["", "-starts-with-dash", "has:colon", "has/slash", "x" * 65, "sp ace", "r1\n"])
def test_one_run_id_rule_on_both_sides(written_manifest: bytes, run_id: str) -> None:
    assert not contract.RUN_ID.fullmatch(run_id)
    with pytest.raises(BadInputError, match="run_id"):
        parse_manifest(json.dumps({**json.loads(written_manifest), "run_id": run_id}).encode(), Where())


@pytest.mark.parametrize("table", ["patients", 'odd name "x"', "a/b", "100%", "ünïcode", "sp ace", "=equals="])
def test_layout_round_trips(table: str) -> None:
    key = contract.batch_key("acme", table, date(2026, 2, 28), "r1", contract.DATA_FILE, prefix="landing/")
    parsed = contract.parse_key(key)
    assert parsed == contract.ParsedKey("landing/", "acme", table, date(2026, 2, 28), "r1", contract.DATA_FILE)


@pytest.mark.parametrize("key", [
    "client=Acme/table=t/date=20260228/run_id=r1/data.json",  # client name not lowercase
    "client=acme/table=t/date=20260230/run_id=r1/data.json",  # no such day
    "client=acme/table=t/date=20260228/run_id=a:b/data.json",  # run id outside the rule
    "client=acme\n/table=t/date=20260228/run_id=r1/data.json",  # a name and then a newline (re's $ allows one)
    "client=acme/table=t/date=20260228/run_id=r1\n/data.json",
    "client=acme/table=t/date=20260228/run_id=r1/other.json",
    "client=acme/table=t/date=2026-02-28/run_id=r1/data.json",
])
def test_keys_outside_the_layout_are_not_batches(key: str) -> None:
    assert contract.parse_key(key) is None


def test_extraction_fields_are_the_contract_fields(written_manifest: bytes) -> None:
    from clientflow.arrival.manifest import Extraction

    assert list(Extraction.model_fields) == list(contract.EXTRACTION_FIELDS)
    assert list(json.loads(written_manifest)["extraction"]) == list(contract.EXTRACTION_FIELDS)
    assert parse_manifest(written_manifest, Where()).full_snapshot


def test_incremental_manifest_names_a_cursor_the_table_has(written_manifest: bytes) -> None:
    base = json.loads(written_manifest)
    column = base["columns"][0]["name"]
    mark = "2026-11-30 23:59:59.123456+00"
    good = {**base, "extraction": {"mode": "incremental", "cursor_column": column, "low_mark": mark, "high_mark": mark}}
    manifest = parse_manifest(json.dumps(good).encode(), Where())
    assert not manifest.full_snapshot and manifest.extraction.cursor_column == column
    jsonschema.validate(good, json.loads(SCHEMA_FILE.read_text(encoding="utf-8")))
    for extraction, message in (
        ({"mode": "incremental", "cursor_column": "not_a_column", "low_mark": mark, "high_mark": mark},
         "cursor_column is not one of the manifest's columns"),
        ({"mode": "incremental", "cursor_column": column, "low_mark": None, "high_mark": mark},
         "an incremental manifest names its cursor_column and low_mark"),
        ({"mode": "partial", "cursor_column": None, "low_mark": None, "high_mark": None}, "extraction.mode"),
    ):
        with pytest.raises(BadInputError, match=message) as caught:
            parse_manifest(json.dumps({**base, "extraction": extraction}).encode(), Where(client="acme"))
        assert mark not in str(caught.value)  # marks are values: never quoted


def test_manifest_without_extraction_is_a_full_snapshot(written_manifest: bytes) -> None:
    older = {k: v for k, v in json.loads(written_manifest).items() if k != "extraction"}
    assert parse_manifest(json.dumps(older).encode(), Where()).full_snapshot
