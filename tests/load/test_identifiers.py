"""Hostile client column and table names: quoted and stored exactly, or refused before any write.

PostgreSQL truncates identifiers to 63 bytes and folds nothing once they are quoted; the loader
refuses what it cannot hold faithfully instead of letting two names become one column.
"""

from __future__ import annotations

import json
from datetime import date

import psycopg
import pytest

from clientflow.arrival.manifest import parse_manifest
from clientflow.errors import BadInputError, Where
from clientflow.identifiers import IdentifierError, check_columns, check_identifier
from tests.support.batches import manifest_for
from tests.support.rawload import columns, extractor_layout, load, manifest, refused, stored

SECRET = "SECRET-91c2"
NAME_63 = "c" * 63
NAME_64 = "c" * 64
MULTIBYTE_63 = "é" * 31 + "x"  # 31 x 2 bytes + 1 = 63 bytes
MULTIBYTE_64 = "é" * 32  # 64 bytes in 32 characters

HOSTILE_NAMES = [
    'a"b', "with space", '"; drop table x; --', "名前", "emoji 😀", "Mixed Case", "semi;colon",
    "back\\slash", "dollar$1", "'single'", " padded ", NAME_63, MULTIBYTE_63, "select", "1starts_with_digit",
]


def columns_table(dsn: str, schema: str, table: str) -> list[str]:
    with psycopg.connect(dsn) as conn:
        return [r[0] for r in conn.execute(
            "select attname from pg_attribute where attrelid = to_regclass(format('%%I.%%I', %s::text, %s::text)) "
            "and attnum > 0 and not attisdropped order by attnum", (schema, table)).fetchall()]


def test_hostile_names_are_quoted_and_kept_exactly(scratch_db: str) -> None:
    with psycopg.connect(scratch_db) as conn:
        conn.execute("create table x (survives int)")
    rows = [{name: f"{i}-{name}" for i, name in enumerate(HOSTILE_NAMES)} for _ in range(3)]
    data = extractor_layout(rows)
    table = 'pa"tients; drop table x; --'
    load(scratch_db, data, manifest(data, 3, columns(*HOSTILE_NAMES), table=table))
    assert columns_table(scratch_db, "raw_acme", table)[: len(HOSTILE_NAMES)] == HOSTILE_NAMES
    assert stored(scratch_db, HOSTILE_NAMES, table=table) == [tuple(r.values()) for r in rows]
    with psycopg.connect(scratch_db) as conn:
        assert conn.execute("select to_regclass('public.x') is not null").fetchone() == (True,)


@pytest.mark.parametrize("name", [NAME_64, MULTIBYTE_64, "c" * 200])
def test_names_longer_than_63_bytes_are_refused(name: str) -> None:
    with pytest.raises(IdentifierError, match="63"):
        check_identifier(name, "column")


@pytest.mark.parametrize("name", [NAME_63, MULTIBYTE_63])
def test_names_of_63_bytes_are_accepted(name: str) -> None:
    assert check_identifier(name) == name


@pytest.mark.parametrize("where", ["column", "table"])
def test_a_manifest_with_a_64_byte_name_is_refused_before_anything_is_loaded(where: str) -> None:
    data = extractor_layout([{"a": SECRET}])
    body = manifest_for("acme", NAME_64 if where == "table" else "patients", date(2026, 1, 2), "r1",
                        data, 1, columns(NAME_64 if where == "column" else "a"))
    with pytest.raises(BadInputError) as caught:
        parse_manifest(json.dumps(body).encode(), Where(client="acme", file="manifest.json"))
    assert "63" in str(caught.value) and "file=manifest.json" in str(caught.value)


@pytest.mark.parametrize(
    "names",
    [["Name", "name"], ["ID", "id", "Id"], ["Straße", "STRASSE"], ["a", "a"]],
)
def test_names_colliding_after_case_folding_are_refused(scratch_db: str, names: list[str]) -> None:
    with pytest.raises(IdentifierError, match="differ only by case"):
        check_columns(names)
    rows = [{n: SECRET for n in names}] if len(set(names)) == len(names) else [{"a": SECRET}]
    data = extractor_layout(rows)
    error = refused(scratch_db, data, manifest(data, 1, columns(*names)), secrets=[SECRET])
    assert "differ only by case" in error.message
    assert columns_table(scratch_db, "raw_acme", "patients") == []


@pytest.mark.parametrize("name", ["ingestion_id", "source_row", "loaded_at", "Client_Name", "SOURCE_FILE"])
def test_a_column_named_like_a_metadata_column_is_refused(scratch_db: str, name: str) -> None:
    with pytest.raises(IdentifierError, match="metadata column"):
        check_columns(["a", name])
    data = extractor_layout([{"a": SECRET, name: SECRET}])
    error = refused(scratch_db, data, manifest(data, 1, columns("a", name)), secrets=[SECRET])
    assert "metadata column" in error.message


@pytest.mark.parametrize("name", ["", "nul\x00byte", "new\nline", "tab\tname", "bell\x07", "lone\ud800"])
def test_empty_control_and_surrogate_names_are_refused(name: str) -> None:
    with pytest.raises(IdentifierError):
        check_identifier(name)
