"""The raw load on real PostgreSQL: values stored exactly, hostile files refused cleanly.

Every refusal is checked the same way (tests/support/rawload.py): the error is ours
(BadInputError or IntegrityError), names the client, table, run and file, shows none of the row
values (each test puts marker strings in its rows), and nothing of the batch is committed.
"""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest
from psycopg import sql

from clientflow.errors import BadInputError, IntegrityError
from clientflow.load import jsonrows, raw
from tests.support.rawload import (
    SCHEMA,
    SOURCE,
    TABLE,
    TinyReads,
    columns,
    extractor_layout,
    load,
    manifest,
    refused,
    stored,
    stored_batches,
)

SECRET = "SECRET-7f3a"  # in every row of the refusal tests; must never appear in an error

HOSTILE_TEXT = [
    "plain", "", "null", "NULL", "\\N", "\\.", "nul\\l", "tab\there", "line\nbreak", "cr\rlf\r\n",
    'quote " and ""', "back\\slash\\\\", "\\t\\n literally", "},\n{", ',"b":"x', "{ not json [",
    "émoji 😀 ü ß 中文 עברית", "e\u0301 combining", "\u2028\u2029 separators", "\ufeffbom inside",
    "\u0001\u001f controls \u007f", "  padded  ", "'; drop table patients; --",
]


def text_of(value: Any) -> str | None:
    """What a text column must hold for a JSON value: a string's text, else the JSON text."""
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def as_pretty(rows: list[dict[str, Any]]) -> bytes:
    return json.dumps(rows, ensure_ascii=False, indent=2).encode()


def as_one_line(rows: list[dict[str, Any]]) -> bytes:
    return json.dumps(rows, ensure_ascii=True).encode()


@pytest.fixture(params=["fast", "scanner"])
def path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test through the fast path, and again with every row found by the scanner."""
    if request.param == "scanner":
        monkeypatch.setattr(jsonrows, "_ROW_END", b"\x00never")
        monkeypatch.setattr(jsonrows, "_FAST_LIMIT", -1)
    return str(request.param)


# ---------------------------------------------------------------------------------------------
# Values are stored exactly


@pytest.mark.parametrize("layout", [extractor_layout, as_pretty, as_one_line])
def test_hostile_text_round_trips_exactly(scratch_db: str, path: str, layout: Any) -> None:
    rows: list[dict[str, Any]] = [
        {"a": value, "b": other} for value, other in zip(HOSTILE_TEXT, reversed(HOSTILE_TEXT), strict=True)
    ]
    rows += [{"a": None, "b": "after a null"}, {"a": "x", "b": None}]
    data = layout(rows)
    result = load(scratch_db, data, manifest(data, len(rows), columns("a", "b")))
    assert result.rows == len(rows) and result.byte_size == len(data)
    assert stored(scratch_db, ["a", "b"]) == [(r["a"], r["b"]) for r in rows]


def test_metadata_columns_name_the_batch(scratch_db: str) -> None:
    rows = [{"a": f"v{i}"} for i in range(5)]
    data = extractor_layout(rows)
    load(scratch_db, data, manifest(data, 5, columns("a")))
    got = stored(scratch_db, ["a", "source_row", "ingestion_id", "client_name", "source_file"])
    assert got == [(f"v{i}", str(i + 1), "batch-2", "acme", SOURCE) for i in range(5)]
    with psycopg.connect(scratch_db) as conn:
        # the batch settings only lived for the load's transaction
        assert conn.execute("select current_setting('clientflow.ingestion_id', true)").fetchone() in [(None,), ("",)]


def test_json_values_in_text_columns_keep_their_json_text(scratch_db: str, path: str) -> None:
    """Numbers keep every digit and their spelling; objects and arrays their exact text."""
    values = [
        "1", "-0", "1.50", "1E400", "-1.5e-10", "0.1", "123456789012345678901234567890123456789",
        "9" * 5000, "true", "false", '{"k":[1,2.50,{"x":null}],"s":"t\\"q"}', "[]", "{}",
        '[1, 2 ,\t3]', '{"deep":' + "[" * 63 + "]" * 63 + "}",
    ]
    data = b"[\n" + b",\n".join(b'{"n":%s,"m":"x"}' % v.encode() for v in values) + b"\n]\n"
    load(scratch_db, data, manifest(data, len(values), columns("n", "m")))
    assert [n for n, _ in stored(scratch_db, ["n", "m"])] == values


def test_jsonb_columns_parse_the_json_text(scratch_db: str, path: str) -> None:
    values: list[Any] = [
        {"k": [1, 2.5, "é\t\\\"", None]}, [1, "two", {"three": 3}], "a string", "null", 12.5, True,
        {"$json": None}, {"quote": "\"; drop table x; --"}, None,
    ]
    rows = [{"id": str(i), "doc": v} for i, v in enumerate(values)]
    data = extractor_layout(rows)
    cols = columns("id") + columns("doc", encoding="json")
    load(scratch_db, data, manifest(data, len(rows), cols))
    got = stored(scratch_db, ["doc"], as_text=False)
    assert [g[0] for g in got] == values
    with psycopg.connect(scratch_db) as conn:
        kind = conn.execute("select format_type(atttypid, atttypmod) from pg_attribute where "
                            "attrelid = 'raw_acme.patients'::regclass and attname = 'doc'").fetchone()
    assert kind == ("jsonb",)


def test_jsonb_numbers_keep_their_digits(scratch_db: str) -> None:
    data = b'[\n{"doc":{"n":1.50,"big":123456789012345678901234567890}}\n]\n'
    load(scratch_db, data, manifest(data, 1, columns("doc", encoding="json")))
    with psycopg.connect(scratch_db) as conn:
        got = conn.execute("select doc->>'n', doc->>'big' from raw_acme.patients").fetchone()
    assert got == ("1.50", "123456789012345678901234567890")


def test_many_slices_and_tiny_reads_store_the_same_rows(scratch_db: str, path: str) -> None:
    """3 MiB across many 1 MiB slices, and the same bytes handed out 7 bytes a read."""
    rows = [{"id": str(i), "note": HOSTILE_TEXT[i % len(HOSTILE_TEXT)] * (1 + i % 7), "n": i}
            for i in range(50000)]
    data = extractor_layout(rows)
    assert len(data) > 3 * (1 << 20)
    cols = columns("id", "note") + columns("n", encoding="integer")
    load(scratch_db, data, manifest(data, len(rows), cols))
    expected = [(r["id"], r["note"], str(r["n"])) for r in rows]
    assert stored(scratch_db, ["id", "note", "n"]) == expected
    small = expected[:300]
    small_data = extractor_layout(rows[:300])
    load(scratch_db, small_data, manifest(small_data, 300, cols), stream=TinyReads(small_data),
         ingestion_id="tiny")
    assert stored(scratch_db, ["id", "note", "n"], ingestion_id="tiny") == small


def test_pretty_printed_nested_rows_load_through_the_scanner(scratch_db: str) -> None:
    """"},\\n" inside a row (indented JSON with nested objects) is not a row boundary."""
    rows = [{"id": str(i), "doc": {"inner": {"i": i}, "list": [{"a": 1}, {"b": [2, {"c": 3}]}]}}
            for i in range(4000)]
    data = as_pretty(rows)
    cols = columns("id") + columns("doc", encoding="json")
    load(scratch_db, data, manifest(data, len(rows), cols), stream=TinyReads(data, 65536))
    assert [json.loads(d) for (d,) in stored(scratch_db, ["doc"])] == [r["doc"] for r in rows]


def test_empty_array_loads_nothing(scratch_db: str) -> None:
    for data in (b"[]", b" [ ] \n", b"[\n]\n"):
        assert load(scratch_db, data, manifest(data, 0, columns("a"))).rows == 0


def test_a_later_batch_adds_new_columns_and_keeps_earlier_rows(scratch_db: str) -> None:
    first = extractor_layout([{"a": "1"}])
    load(scratch_db, first, manifest(first, 1, columns("a")), ingestion_id="batch-1")
    second = extractor_layout([{"a": "2", "b": {"x": 1}}])
    load(scratch_db, second, manifest(second, 1, columns("a") + columns("b", encoding="json")))
    assert stored_batches(scratch_db) == {"batch-1": 1, "batch-2": 1}
    assert stored(scratch_db, ["a", "b"], ingestion_id="batch-1") == [("1", None)]
    assert stored(scratch_db, ["a", "b"]) == [("2", '{"x": 1}')]


def test_a_column_respelt_in_case_by_a_later_batch_gets_its_own_column(scratch_db: str) -> None:
    """As a renamed column does: each batch's values stay under the spelling it sent (dbt reads the
    one the mapping names; the drift check stops a mapped column's new spelling until the mapping
    names it), and no batch's values move into another's column."""
    first = extractor_layout([{"PatID": "1"}])
    load(scratch_db, first, manifest(first, 1, columns("PatID")), ingestion_id="batch-1")
    second = extractor_layout([{"patid": "2"}])
    load(scratch_db, second, manifest(second, 1, columns("patid")))
    assert stored(scratch_db, ["PatID", "patid"], ingestion_id="batch-1") == [("1", None)]
    assert stored(scratch_db, ["PatID", "patid"]) == [(None, "2")]


def test_a_load_s_statistics_know_its_batch(scratch_db: str) -> None:
    """After a load, the raw table's statistics hold its row count and the batches' share of it
    (what the staging models filter on)."""
    for batch, rows in (("batch-1", 3000), ("batch-2", 1000)):
        data = extractor_layout([{"a": str(i)} for i in range(rows)])
        load(scratch_db, data, manifest(data, rows, columns("a")), ingestion_id=batch)
        with psycopg.connect(scratch_db) as conn:
            raw.analyze(conn, SCHEMA, TABLE)
    with psycopg.connect(scratch_db) as conn:
        stats = dict(conn.execute("select attname, most_common_freqs from pg_stats where schemaname = %s and tablename = %s",
                                  (SCHEMA, TABLE)).fetchall())
        known = conn.execute("select reltuples from pg_class where oid = %s::regclass",
                             (sql.Identifier(SCHEMA, TABLE).as_string(conn),)).fetchone()
    assert sorted(stats["ingestion_id"]) == [0.25, 0.75]
    assert known == (4000,)


# ---------------------------------------------------------------------------------------------
# Refusals


def two_rows(extra: str = "") -> bytes:
    secret = SECRET.encode()
    return (b'[\n{"a":"%s-1","b":"%s-2"},\n{"a":"%s-3","b":"%s-4"%s}\n]\n'
            % (secret, secret, secret, secret, extra.encode()))


AB = columns("a", "b")


def test_truncated_file_is_refused(scratch_db: str, path: str) -> None:
    full = extractor_layout([{"a": f"{SECRET}-{i}", "b": "x" * 50} for i in range(50)])
    cut = full[: len(full) // 2]
    error = refused(scratch_db, cut, manifest(full, 50, AB), secrets=[SECRET])
    assert isinstance(error, BadInputError) and "truncated" in error.message


def test_wrong_sha256_is_refused(scratch_db: str) -> None:
    data = two_rows()
    error = refused(scratch_db, data, manifest(data, 2, AB, sha256="0" * 64), secrets=[SECRET])
    assert isinstance(error, IntegrityError) and "sha256" in error.message and "0" * 64 in error.message


def test_corrupted_byte_is_refused(scratch_db: str) -> None:
    data = two_rows()
    corrupted = data.replace(b"-1", b"-9")
    error = refused(scratch_db, corrupted, manifest(data, 2, AB), secrets=[SECRET])
    assert isinstance(error, IntegrityError) and "checksum mismatch" in error.message


def test_wrong_row_count_is_refused(scratch_db: str) -> None:
    data = two_rows()
    error = refused(scratch_db, data, manifest(data, 3, AB), secrets=[SECRET])
    assert isinstance(error, IntegrityError)
    assert "manifest says 3" in error.message and "holds 2" in error.message


@pytest.mark.parametrize("garbage", [b"x", b"]", b",", b"[]", b'{"a":1}', b"\x00", b"// comment"])
def test_trailing_garbage_is_refused(scratch_db: str, path: str, garbage: bytes) -> None:
    data = two_rows() + garbage
    error = refused(scratch_db, data, manifest(data, 2, AB), secrets=[SECRET])
    assert isinstance(error, BadInputError)


def test_trailing_whitespace_is_fine(scratch_db: str, path: str) -> None:
    data = two_rows() + b" \t\r\n\n"
    assert load(scratch_db, data, manifest(data, 2, AB)).rows == 2


@pytest.mark.parametrize("element", [b"5", b'"text"', b"null", b"[1,2]", b"true", b"[]"])
def test_a_row_that_is_not_an_object_is_refused(scratch_db: str, path: str, element: bytes) -> None:
    data = b'[\n{"a":"%s","b":"x"},\n%s\n]\n' % (SECRET.encode(), element)
    error = refused(scratch_db, data, manifest(data, 2, AB), secrets=[SECRET])
    assert "row 2" in error.message and "not a JSON object" in error.message


@pytest.mark.parametrize(
    ("extra", "expect"),
    [(',"c":"SECRET-7f3a-5"', "1 key(s) not in the manifest"), ("", "missing b")],
)
def test_extra_or_missing_keys_are_refused(scratch_db: str, path: str, extra: str, expect: str) -> None:
    missing = b'[\n{"a":"%s","b":"x"},\n{"a":"%s"}\n]\n' % (SECRET.encode(), SECRET.encode())
    data = two_rows(extra) if extra else missing
    error = refused(scratch_db, data, manifest(data, 2, AB), secrets=[SECRET, "SECRET"])
    assert "row 2" in error.message and expect in error.message


@pytest.mark.parametrize("row", [
    b'{"a":"%s","b":"x","a":"y"}',  # the last would win
    b'{"a" : "%s", "b" : "x", "a" : "y"}',  # spaced: the colons do not follow the quotes
    b'{"a":"%s","b":"x","\\u0061":"y"}',  # the same key, escaped
    b'{"a":":%s","b":{"a":1},"a":"y"}',  # beside a nested object and a value starting with a colon
])
def test_a_key_named_twice_is_refused(scratch_db: str, path: str, row: bytes) -> None:
    data = b'[\n{"a":"ok","b":"x"},\n%s\n]\n' % (row % SECRET.encode())
    error = refused(scratch_db, data, manifest(data, 2, AB), secrets=[SECRET, "SECRET"])
    assert "row 2" in error.message and "names this column twice" in error.message and "column=a" in str(error)


@pytest.mark.parametrize("separator", [b",", b",\r\n", b", "])
def test_a_key_named_twice_is_refused_in_any_layout(scratch_db: str, path: str, separator: bytes) -> None:
    """Whitespace the extractor never writes (or none at all) cannot hide a repeated key's bytes."""
    rows = [b'{"a":"ok","b":"x"}'] * 6 + [b'{"a":"%s","b":"x","a":"y"}' % SECRET.encode()]
    data = b"[" + separator.join(rows) + b"]"
    error = refused(scratch_db, data, manifest(data, 7, AB), secrets=[SECRET])
    assert "row 7" in error.message and "names this column twice" in error.message


def test_a_key_named_twice_is_refused_where_names_hold_quotes(scratch_db: str, path: str) -> None:
    data = b'[\n{"q\\"x":"%s","b":"x","q\\"x":"y"}\n]\n' % SECRET.encode()
    error = refused(scratch_db, data, manifest(data, 1, columns('q"x', "b")), secrets=[SECRET])
    assert "row 1" in error.message and "names this column twice" in error.message


@pytest.mark.parametrize("layout", [extractor_layout, as_pretty])
def test_values_that_look_like_keys_load(scratch_db: str, path: str, layout: Any) -> None:
    """Counting key ends over-counts these; the careful check then finds every key once."""
    rows = [{"a": ':"b":', "b": {"a": 1, "a2": {"b": None}}}, {"a": '" :x', "b": ["\":"]}]
    data = layout(rows)
    cols = columns("a") + columns("b", encoding="json")
    load(scratch_db, data, manifest(data, 2, cols))
    assert [r[0] for r in stored(scratch_db, ["a"])] == [':"b":', '" :x']


def test_a_key_repeated_inside_a_jsonb_value_is_postgresql_s_to_read(scratch_db: str, path: str) -> None:
    """Only a row's own keys name columns; inside a jsonb value PostgreSQL keeps the last, as always."""
    data = b'[\n{"a":"ok","b":{"k":1,"k":2}}\n]\n'
    load(scratch_db, data, manifest(data, 1, columns("a") + columns("b", encoding="json")))
    assert stored(scratch_db, ["b"]) == [('{"k": 2}',)]


@pytest.mark.parametrize("depth", [65, 500, 10_000, 100_000])
def test_deeply_nested_values_are_refused(scratch_db: str, path: str, depth: int) -> None:
    data = b'[\n{"a":"%s","b":%s}\n]\n' % (SECRET.encode(), b"[" * depth + b"]" * depth)
    error = refused(scratch_db, data, manifest(data, 1, AB), secrets=[SECRET])
    assert f"deeper than {jsonrows.MAX_DEPTH}" in error.message


def test_deep_nesting_in_a_jsonb_column_is_refused(scratch_db: str, path: str) -> None:
    data = b'[\n{"a":"%s","b":{"x":%s}}\n]\n' % (SECRET.encode(), b"[" * 100 + b"]" * 100)
    cols = columns("a") + columns("b", encoding="json")
    error = refused(scratch_db, data, manifest(data, 1, cols), secrets=[SECRET])
    assert f"deeper than {jsonrows.MAX_DEPTH}" in error.message


def test_nul_in_a_string_is_refused(scratch_db: str, path: str) -> None:
    data = b'[\n{"a":"ok","b":"%s\\u0000tail"}\n]\n' % SECRET.encode()
    error = refused(scratch_db, data, manifest(data, 1, AB), secrets=[SECRET])
    assert "NUL" in error.message and "column=b" in str(error)


def test_nul_in_a_jsonb_value_is_refused(scratch_db: str, path: str) -> None:
    data = b'[\n{"a":"ok","b":{"k":"%s\\u0000"}}\n]\n' % SECRET.encode()
    cols = columns("a") + columns("b", encoding="json")
    error = refused(scratch_db, data, manifest(data, 1, cols), secrets=[SECRET])
    assert "PostgreSQL refused row 1" in error.message and "column=b" in str(error)


def test_nul_escape_inside_json_text_is_kept_in_a_text_column(scratch_db: str) -> None:
    """In a text column an object is its JSON text, where \\u0000 is six harmless characters."""
    data = b'[\n{"a":{"k":"x\\u0000y"}}\n]\n'
    load(scratch_db, data, manifest(data, 1, columns("a")))
    assert stored(scratch_db, ["a"]) == [('{"k":"x\\u0000y"}',)]


@pytest.mark.parametrize("bad", [b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x80abc"])
def test_bytes_that_are_not_utf8_are_refused(scratch_db: str, path: str, bad: bytes) -> None:
    data = b'[\n{"a":"ok","b":"%s %s"}\n]\n' % (SECRET.encode(), bad)
    error = refused(scratch_db, data, manifest(data, 1, AB), secrets=[SECRET])
    assert "row 1" in error.message


@pytest.mark.parametrize("escape", [b"\\ud800", b"\\udc00x", b"\\ud800\\u0041"])
def test_lone_surrogates_are_refused(scratch_db: str, path: str, escape: bytes) -> None:
    data = b'[\n{"a":"ok","b":"%s %s"}\n]\n' % (SECRET.encode(), escape)
    refused(scratch_db, data, manifest(data, 1, AB), secrets=[SECRET])


@pytest.mark.parametrize(
    "data",
    [
        b"", b"   \n", b'{"a":"SECRET-7f3a"}', b'"SECRET-7f3a"', b"\xef\xbb\xbf[]",
        b'[{"a":"SECRET-7f3a","b":"x"},]', b'[{"a":"SECRET-7f3a","b":"x"} {"a":"y","b":"z"}]',
        b"[{'a':'SECRET-7f3a','b':'x'}]", b'[{"a":"SECRET-7f3a","b":NaN}]', b'[{"a":"SECRET-7f3a","b":01}]',
        b'[{"a":"SECRET-7f3a","b":"x\ty"}]', b'[{"a":"SECRET-7f3a","b":"x"} /* c */]',
        b'[{"a":"SECRET-7f3a","b":"x"}', b'[{"a":"SECRET-7f3a","b":"x', b"[",
    ],
)
def test_invalid_json_is_refused(scratch_db: str, path: str, data: bytes) -> None:
    error = refused(scratch_db, data, manifest(data, 1, AB), secrets=[SECRET])
    assert isinstance(error, BadInputError)


def test_invalid_json_error_names_the_byte(scratch_db: str, path: str) -> None:
    good = [{"a": "x" * 100, "b": "y"} for _ in range(20)]
    data = extractor_layout(good)[:-3] + b',\n{"a":"%s","b":tru}\n]\n' % SECRET.encode()
    error = refused(scratch_db, data, manifest(data, 21, AB), secrets=[SECRET])
    position = data.index(b"tru}")
    assert "row 21" in error.message
    byte = int(error.message.split("byte ")[1].split()[0])
    assert position <= byte <= position + 4, error.message


def test_an_oversized_row_is_refused(scratch_db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jsonrows, "MAX_ROW_BYTES", 4096)
    monkeypatch.setattr(jsonrows, "_FAST_LIMIT", 4096)
    data = b'[{"a":"%s","b":"%s"}]' % (SECRET.encode(), b"x" * 3 * (1 << 20))
    error = refused(scratch_db, data, manifest(data, 1, AB), secrets=[SECRET])
    assert "larger than" in error.message


def test_an_error_late_in_a_big_file_commits_nothing(scratch_db: str) -> None:
    """Earlier slices were already sent to PostgreSQL when row 20000 turns out bad."""
    earlier = extractor_layout([{"a": "kept", "b": "kept"}])
    load(scratch_db, earlier, manifest(earlier, 1, AB), ingestion_id="batch-1")
    rows = [{"a": f"{SECRET}-{i}", "b": "y" * 100} for i in range(20000)]
    data = extractor_layout(rows)[:-3] + b',\n{"a":"%s"}\n]\n' % SECRET.encode()
    error = refused(scratch_db, data, manifest(data, 20001, AB), secrets=[SECRET])
    assert "row 20001" in error.message
    assert stored_batches(scratch_db) == {"batch-1": 1}


def test_load_table_refuses_to_run_outside_a_transaction(scratch_db: str) -> None:
    data = two_rows()
    with psycopg.connect(scratch_db, autocommit=True) as conn, pytest.raises(ValueError):
        raw.load_table(conn, SCHEMA, manifest(data, 2, AB), iter([data]),  # type: ignore[arg-type]
                       ingestion_id="x", source_file=SOURCE)


def test_a_raw_table_made_before_the_metadata_defaults_gets_them(scratch_db: str) -> None:
    """Raw tables created by the earlier loader had no defaults on the metadata columns."""
    with psycopg.connect(scratch_db) as conn:
        conn.execute(
            "create schema raw_acme; create table raw_acme.patients (a text, b text, "
            "ingestion_id text not null, client_name text not null, source_file text not null, "
            "source_row bigint not null, loaded_at timestamptz not null default now())")
        conn.execute("insert into raw_acme.patients values ('old', 'old', 'batch-1', 'acme', 'f', 1)")
    data = extractor_layout([{"a": "new", "b": "new"}])
    load(scratch_db, data, manifest(data, 1, AB))
    assert stored_batches(scratch_db) == {"batch-1": 1, "batch-2": 1}
    assert stored(scratch_db, ["a", "client_name", "source_file", "source_row"]) == [("new", "acme", SOURCE, "1")]
