"""PostgreSQL: every value the binary writes must read back as the value in the database.

Each scalar value from data.json is turned back into a literal and compared *on the server* with the
source column (cast to the source type, compared as text so that '12.50' differs from '12.5' and
'1 mon' from '30 days'). Arrays and floats are also compared in Python against psycopg's binary
loaders, which share no code with the extractor.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import math
import re
import struct
from decimal import Decimal
from pathlib import Path
from typing import Any

from psycopg import sql

from client_extractor import contract

from .conftest import local_batch, pg_connect

SCHEMA_SQL = r"""
create type mood as enum ('sad', 'ok', 'happy 😀');
create domain posint as integer check (value > 0);
create table "AllTypes" (
  id int primary key,
  c_int2 smallint, c_int4 integer, c_int8 bigint not null,
  c_numeric numeric, c_num_scaled numeric(12,2),
  c_real real, c_double double precision,
  c_text text, c_varchar varchar(50), c_char char(5),
  c_bytea bytea, c_bool boolean,
  c_date date, c_time time, c_timetz timetz, c_ts timestamp(6), c_tstz timestamptz,
  c_interval interval, c_uuid uuid, c_json json, c_jsonb jsonb,
  c_enum mood, c_domain posint, c_inet inet,
  c_int_arr integer[], c_text_arr text[], c_num_arr numeric[], c_float_arr float8[], c_2d int[][],
  c_bytea_arr bytea[], c_json_arr json[], c_enum_arr mood[], c_tstz_arr timestamptz[],
  "Weird ""Name"" ☃ ,:{}" text
);
"""

ROWS_SQL = r"""
insert into "AllTypes" values
(1, 1, 2147483647, 9223372036854775807,
 123456789012345678901234567890.123456789012345678901234567890, 12.50,
 0.1, 0.1,
 'hello, "world" \ back\slash', 'x', 'ab',
 '\x00ff00'::bytea, true,
 '2026-11-22', '12:34:56.789', '12:34:56+05:30', '2026-11-22 03:49:00.123456', '2026-11-22 03:49:00.123456+01',
 '1 year 2 mons -3 days 04:05:06.5', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
 E'{"a": [1, 2.50, "x"],\n "b": null, "a": 0.1000000000000000000000001}', '{"k": [true, {"n": 12345678901234567890123}]}',
 'happy 😀', 7, '192.168.0.1/24',
 '{1,NULL,3}', '{"", NULL, "q\"uote", "two words", "NULL"}', '{0.1, NaN, 12.50}', '{NaN, Infinity, -Infinity, -0, 1e-300}', '{{1,2},{3,4}}',
 '{"\\x00ff", NULL}', ARRAY[E'{"x":\n1}'::json, 'null'::json], '{sad,"happy 😀"}', '{"2026-01-01 00:00:00+00", infinity}',
 'weird column value'),
(2, -32768, -2147483648, -9223372036854775808,
 'NaN', -0.01,
 'NaN', 'Infinity',
 E'emoji 😀 non-BMP 𝄞 \t tab \n newline \r cr \u0001 ctrl \u2028 \u2029 é', '', '',
 '\x'::bytea, false,
 'infinity', '24:00:00', '00:00:00-12', 'infinity', '-infinity',
 '0', '00000000-0000-0000-0000-000000000000',
 'null', '"just a string"',
 'sad', 1, '::1',
 '{}', '{}', '{}', '{}', '{}',
 '{}', '{}', '{}', '{}',
 ''),
(3, 0, 0, 0,
 'Infinity', 9999999999.99,
 '-Infinity', 5e-324,
 'Ā', 'ééé', 'x',
 decode(repeat('00', 300) || 'ff', 'hex'), null,
 '0044-03-15 BC', '00:00:00.000001', '23:59:59.999999+14', '0044-03-15 10:00:00 BC', '1970-01-01 00:00:00+00',
 '-178000000 years', 'ffffffff-ffff-ffff-ffff-ffffffffffff',
 '[]', '{}',
 'ok', 2147483647, '2001:db8::1',
 '{-2147483648}', '{"😀"}', '{-Infinity, 1e-30}', '{1.7976931348623157e308, 3.4028235e38}', '{{{1}}}',
 '{"\\x"}', '{}', '{}', '{}',
 null),
(4, null, null, 42,
 null, null, null, null, null, null, null, null, null, null, null, null, null, null, null, null, null, null, null, null, null,
 null, null, null, null, null, null, null, null, null, null),
(5, 5, 5, 5,
 '-Infinity', 0.00,
 '-0', '-0',
 '0.1', '12345678901234567890123456789012345678901234567890', 'abcde',
 '\x5c7830'::bytea, true,
 '12345-01-01', '00:00:00', '12:00:00+00', '1999-12-31 23:59:59', 'infinity',
 '-1 days -00:00:01.5', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
 '1e400', '1e400',
 'sad', 3, '10.0.0.1',
 null, null, null, null, null, null, null, null, null,
 '');
"""

ROW_COUNT = 5


def _literal(encoding: str, value: Any) -> str | None:
    """Turn a JSON value back into text PostgreSQL can cast to the source type."""
    if value is None:
        return None
    if encoding == "integer":
        assert isinstance(value, int) and not isinstance(value, bool)
        return str(value)
    if encoding == "float":
        if isinstance(value, str):
            assert value in {"NaN", "Infinity", "-Infinity"}
            return value
        return repr(float(value))
    if encoding == "bytes_base64":
        return "\\x" + base64.b64decode(value, validate=True).hex()
    if encoding == "boolean":
        return "true" if value is True else "false" if value is False else _fail(value)
    if encoding == "json":
        if isinstance(value, dict) and list(value) == ["$json"]:
            value = value["$json"]  # the documented wrapper for the JSON value null (and lone "$json" keys)
        return _dump_exact(value)
    assert isinstance(value, str), (encoding, value)
    return value


def _fail(value: Any) -> str:
    raise AssertionError(f"unexpected value {value!r}")


def _dump_exact(value: Any) -> str:
    """json.dumps that keeps Decimal numbers digit for digit."""
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, dict):
        return "{" + ",".join(json.dumps(k) + ":" + _dump_exact(v) for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_dump_exact(v) for v in value) + "]"
    return json.dumps(value)


def _load(data: bytes) -> list[dict[str, Any]]:
    # Decimal for floats so that json values keep every digit; floats are compared via repr below
    return json.loads(data.decode("utf-8"), parse_float=Decimal)  # type: ignore[no-any-return]


def _setup(dbname: str) -> None:
    with pg_connect(dbname, autocommit=True) as conn:
        conn.execute(SCHEMA_SQL)
        conn.execute(ROWS_SQL)


def test_every_type_round_trips_exactly(pg_db: str, run_extractor: Any, tmp_path: Path) -> None:
    _setup(pg_db)
    out = tmp_path / "out"
    res = run_extractor("--source", f"postgresql://postgres@127.0.0.1:5432/{pg_db}", "--client", "ehrlogic",
                        "--date", "2026-11-22", "--run-id", "r1", "--output", str(out))
    assert res.returncode == 0, res.stderr
    batch = local_batch(out, "ehrlogic")
    assert list(batch) == ["AllTypes"]
    manifest, data = batch["AllTypes"]["manifest"], batch["AllTypes"]["data"]
    assert batch["AllTypes"]["dir"] == out / "client=ehrlogic" / "table=AllTypes" / "date=20261122" / "run_id=r1"

    # the manifest describes the file exactly
    assert manifest["row_count"] == ROW_COUNT
    assert manifest["byte_size"] == len(data)
    assert manifest["sha256"] == hashlib.sha256(data).hexdigest()
    assert manifest["source_dialect"] == "postgresql" and manifest["schema"] == "public"
    enc = {c["name"]: c["encoding"] for c in manifest["columns"]}
    assert enc == {
        "id": "integer", "c_int2": "integer", "c_int4": "integer", "c_int8": "integer",
        "c_numeric": "decimal", "c_num_scaled": "decimal", "c_real": "float", "c_double": "float",
        "c_text": "string", "c_varchar": "string", "c_char": "string", "c_bytea": "bytes_base64", "c_bool": "boolean",
        "c_date": "date", "c_time": "time", "c_timetz": "time", "c_ts": "timestamp", "c_tstz": "timestamptz",
        "c_interval": "interval", "c_uuid": "uuid", "c_json": "json", "c_jsonb": "json",
        "c_enum": "enum", "c_domain": "integer", "c_inet": "string",
        "c_int_arr": "array<integer>", "c_text_arr": "array<string>", "c_num_arr": "array<decimal>",
        "c_float_arr": "array<float>", "c_2d": "array<integer>", "c_bytea_arr": "array<bytes_hex>",
        "c_json_arr": "array<json>", "c_enum_arr": "array<enum>", "c_tstz_arr": "array<timestamptz>",
        'Weird "Name" ☃ ,:{}': "string",
    }
    types = {c["name"]: c["source_type"] for c in manifest["columns"]}
    assert types["c_num_scaled"] == "numeric(12,2)" and types["c_tstz"] == "timestamp with time zone"
    pk = [c["name"] for c in manifest["columns"] if c["primary_key"]]
    assert pk == ["id"]
    nullable = {c["name"]: c["nullable"] for c in manifest["columns"]}
    assert nullable["id"] is False and nullable["c_int8"] is False and nullable["c_text"] is True

    rows = _load(data)
    assert [list(r) for r in rows] == [list(enc)] * ROW_COUNT  # keys exactly as spelled, in column order
    by_id = {r["id"]: r for r in rows}
    assert sorted(by_id) == list(range(1, ROW_COUNT + 1))

    with pg_connect(pg_db) as conn:
        conn.execute("set timezone = 'UTC'; set datestyle = 'ISO, YMD'; set intervalstyle = 'postgres'")
        checked = 0
        for name, encoding in enc.items():
            if encoding.startswith("array<"):
                continue
            for row_id, row in by_id.items():
                literal = _literal(encoding, row[name])
                ident = sql.Identifier(name)
                if encoding == "json":
                    query = sql.SQL('select {c}::jsonb is not distinct from %s::jsonb from "AllTypes" where id = %s').format(c=ident)
                else:
                    query = sql.SQL('select {c}::text is not distinct from (%s::{t})::text from "AllTypes" where id = %s').format(
                        c=ident, t=sql.SQL(types[name]))
                same = conn.execute(query, (literal, row_id)).fetchone()[0]
                assert same, f"column {name!r} row {row_id}: {row[name]!r}"
                checked += 1
        assert checked == (len(enc) - 9) * ROW_COUNT

    _check_floats_and_arrays(pg_db, by_id)
    _check_special_forms(by_id, data)


def _check_floats_and_arrays(dbname: str, by_id: dict[int, dict[str, Any]]) -> None:
    """Against psycopg's binary loaders: exact bits for floats, element by element for arrays."""
    cols = ["c_real", "c_double", "c_int_arr", "c_text_arr", "c_num_arr", "c_float_arr", "c_2d", "c_bytea_arr", "c_json_arr", "c_enum_arr"]
    with pg_connect(dbname) as conn, conn.cursor(binary=True) as cur:
        exprs = [sql.SQL("{}::text[]" if c == "c_enum_arr" else "{}").format(sql.Identifier(c)) for c in cols]  # no binary loader for enums
        cur.execute(sql.SQL('select id, {} from "AllTypes" order by id').format(sql.SQL(", ").join(exprs)))
        for rec in cur.fetchall():
            row = by_id[rec[0]]
            src = dict(zip(cols, rec[1:], strict=False))
            _same_float(row["c_double"], src["c_double"], single=False)
            _same_float(row["c_real"], src["c_real"], single=True)
            assert row["c_int_arr"] == src["c_int_arr"]
            assert row["c_text_arr"] == src["c_text_arr"]
            assert row["c_2d"] == src["c_2d"]
            assert row["c_enum_arr"] == src["c_enum_arr"]
            if src["c_num_arr"] is not None:
                assert [None if v is None else Decimal(v) for v in row["c_num_arr"]] == src["c_num_arr"] or all(
                    (a is None and b is None) or (Decimal(a).is_nan() and b.is_nan()) or Decimal(a) == b
                    for a, b in zip(row["c_num_arr"], src["c_num_arr"], strict=True))
            if src["c_float_arr"] is not None:
                assert len(row["c_float_arr"]) == len(src["c_float_arr"])
                for a, b in zip(row["c_float_arr"], src["c_float_arr"], strict=False):
                    _same_float(a, abs(b) if b == 0 else b, single=False)  # -0 in arrays parses as integer 0
            if src["c_bytea_arr"] is not None:
                assert [None if v is None else bytes.fromhex(v[2:]) for v in row["c_bytea_arr"]] == [None if b is None else bytes(b) for b in src["c_bytea_arr"]]
            if src["c_json_arr"] is not None:  # psycopg loads JSON null as None: unwrap {"$json": ...} to compare
                assert [json.loads(_dump_exact(_unwrap_json(v))) for v in row["c_json_arr"]] == src["c_json_arr"]


def _unwrap_json(value: Any) -> Any:
    """What a loader does with a json cell or a json array element: unwrap {"$json": x}."""
    return value["$json"] if isinstance(value, dict) and list(value) == ["$json"] else value


def _same_float(ours: Any, theirs: float | None, single: bool) -> None:
    if theirs is None:
        assert ours is None
        return
    if math.isnan(theirs):
        assert ours == "NaN"
        return
    if math.isinf(theirs):
        assert ours == ("Infinity" if theirs > 0 else "-Infinity")
        return
    value = float(ours)
    if single:
        assert struct.pack("<f", value) == struct.pack("<f", theirs)
    else:
        assert struct.pack("<d", value) == struct.pack("<d", theirs)  # bit for bit, sign of zero included


def _check_special_forms(by_id: dict[int, dict[str, Any]], raw: bytes) -> None:
    """The documented text forms, checked literally."""
    r1, r2, r3, r4, r5 = (by_id[i] for i in range(1, 6))
    assert r1["c_int8"] == 9223372036854775807 and r2["c_int8"] == -9223372036854775808
    assert r1["c_numeric"] == "123456789012345678901234567890.123456789012345678901234567890"
    assert r1["c_num_scaled"] == "12.50" and r2["c_num_scaled"] == "-0.01" and r5["c_num_scaled"] == "0.00"
    assert r2["c_numeric"] == "NaN" and r3["c_numeric"] == "Infinity" and r5["c_numeric"] == "-Infinity"
    assert r2["c_real"] == "NaN" and r2["c_double"] == "Infinity" and r3["c_real"] == "-Infinity"
    assert r1["c_real"] == Decimal("0.1") and r1["c_double"] == Decimal("0.1")  # shortest round-trip text
    assert r2["c_text"] == "emoji 😀 non-BMP 𝄞 \t tab \n newline \r cr \x01 ctrl \u2028 \u2029 é"
    assert r2["c_varchar"] == "" and r4["c_varchar"] is None  # empty string is not NULL
    assert r1["c_char"] == "ab   "  # char(n) keeps its padding
    assert r1["c_bytea"] == base64.b64encode(b"\x00\xff\x00").decode() and r2["c_bytea"] == ""
    assert r3["c_bytea"] == base64.b64encode(b"\x00" * 300 + b"\xff").decode()  # no line breaks inside
    assert r1["c_bool"] is True and r2["c_bool"] is False and r3["c_bool"] is None
    assert r1["c_date"] == "2026-11-22" and r2["c_date"] == "infinity" and r3["c_date"] == "0044-03-15 BC"
    assert r5["c_date"] == "12345-01-01"
    assert r1["c_time"] == "12:34:56.789" and r2["c_time"] == "24:00:00" and r3["c_time"] == "00:00:00.000001"
    assert r1["c_timetz"] == "12:34:56+05:30" and r2["c_timetz"] == "00:00:00-12"
    assert r1["c_ts"] == "2026-11-22T03:49:00.123456" and r2["c_ts"] == "infinity" and r3["c_ts"] == "0044-03-15T10:00:00 BC"
    assert r1["c_tstz"] == "2026-11-22T02:49:00.123456+00:00" and r2["c_tstz"] == "-infinity"
    assert r1["c_interval"] == "P1Y2M-3DT4H5M6.5S" and r2["c_interval"] == "PT0S"
    assert r1["c_uuid"] == "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"
    assert r2["c_json"] == {"$json": None} and r4["c_json"] is None  # JSON null vs SQL NULL
    assert r2["c_jsonb"] == "just a string" and r3["c_json"] == [] and r3["c_jsonb"] == {}
    assert r1["c_jsonb"] == {"k": [True, {"n": 12345678901234567890123}]}
    assert r5["c_json"] == Decimal("1e400")  # json keeps the number text, beyond float range
    assert r1["c_num_arr"] == ["0.1", "NaN", "12.50"]
    assert r1["c_float_arr"] == ["NaN", "Infinity", "-Infinity", 0, Decimal("1e-300")]
    assert b'"c_float_arr":["NaN","Infinity","-Infinity",-0,1e-300]' in raw
    assert b'"c_real":-0.0,"c_double":-0.0,' in raw  # negative zero keeps its sign as a float literal
    assert r1["c_tstz_arr"] == ["2026-01-01T00:00:00+00:00", "infinity"]
    assert r1["c_json_arr"] == [{"x": 1}, {"$json": None}] and r2["c_json_arr"] == []  # JSON null element wrapped
    assert r1['Weird "Name" ☃ ,:{}'] == "weird column value"
    assert r1["c_enum"] == "happy 😀" and r1["c_inet"] == "192.168.0.1/24"


def test_json_null_and_sql_null_differ_in_the_file(pg_db: str, run_extractor: Any, tmp_path: Path) -> None:
    """SQL NULL is null; the JSON value null is {"$json":null}; an object whose only key is "$json" (however
    often, however spelled) is wrapped too."""
    with pg_connect(pg_db, autocommit=True) as conn:
        conn.execute("create table t (id int primary key, j json, b jsonb)")
        conn.execute("""insert into t values (1, 'null', 'null'), (2, null, null), (3, E'{"a":\\n1}', '{"$json": 5}'),
                        (4, '{"$json": 1, "x": 2}', '{"$json": 1, "x": 2}'), (5, '{"$json": 1, "$json": 2}', '{"\\u0024json": 3}')""")
    out = tmp_path / "o"
    res = run_extractor("--source", f"postgresql://postgres@127.0.0.1/{pg_db}", "--client", "c", "--output", str(out))
    assert res.returncode == 0, res.stderr
    data = local_batch(out, "c")["t"]["data"]
    assert data == (b'[\n{"id":1,"j":{"$json":null},"b":{"$json": null}},\n{"id":2,"j":null,"b":null},\n'
                    b'{"id":3,"j":{"a": 1},"b":{"$json": {"$json": 5}}},\n'
                    b'{"id":4,"j":{"$json": 1, "x": 2},"b":{"x": 2, "$json": 1}},\n'
                    b'{"id":5,"j":{"$json" : {"$json": 1, "$json": 2}},"b":{"$json": {"$json": 3}}}\n]\n')


def test_all_tables_sorted_empty_table_and_odd_names(pg_db: str, run_extractor: Any, tmp_path: Path) -> None:
    with pg_connect(pg_db, autocommit=True) as conn:
        conn.execute('create table "zeta" (id int)')
        conn.execute('create table "Alpha" (id int primary key)')
        conn.execute('create table "a/b c%" (x text)')
        conn.execute("create table empty_one (id int)")
        conn.execute('create view v as select 1 as x')
        conn.execute("insert into zeta values (1), (2)")
        conn.execute("""insert into "a/b c%" values ('v')""")
        conn.execute("create schema other; create table other.hidden (id int)")
    out = tmp_path / "o"
    res = run_extractor("--source", f"postgresql://postgres@127.0.0.1:5432/{pg_db}", "--client", "c1", "--output", str(out))
    assert res.returncode == 0, res.stderr
    batch = local_batch(out, "c1")
    assert sorted(batch) == ["Alpha", "a/b c%", "empty_one", "zeta"]  # tables only, schema public only
    assert (out / "client=c1" / "table=a%2Fb%20c%25").is_dir()
    assert batch["empty_one"]["data"] == b"[]\n" and batch["empty_one"]["manifest"]["row_count"] == 0
    assert json.loads(batch["zeta"]["data"]) == [{"id": 1}, {"id": 2}]
    run_ids = {b["manifest"]["run_id"] for b in batch.values()}
    assert len(run_ids) == 1  # one run id per invocation
    assert re.fullmatch(r"\d{8}T\d{6}Z-[0-9a-f]{6}", run_ids.pop())
    # the summary names every table; tables order in stdout is sorted
    lines = [ln.split()[0] for ln in res.stdout.splitlines()[1:]]
    assert lines == ["Alpha", "a/b", "empty_one", "zeta"]

    res = run_extractor("--source", f"postgresql://postgres@127.0.0.1:5432/{pg_db}", "--client", "c2",
                        "--schema", "other", "--output", str(out))
    assert res.returncode == 0, res.stderr
    assert list(local_batch(out, "c2")) == ["hidden"]


def test_job_id_is_the_idempotency_key(pg_db: str, run_extractor: Any, tmp_path: Path) -> None:
    with pg_connect(pg_db, autocommit=True) as conn:
        conn.execute("create table t (id int primary key, name text)")
        conn.execute("insert into t values (1, 'a'), (2, 'b')")
    src = f"postgresql://postgres@127.0.0.1:5432/{pg_db}"
    out = tmp_path / "o"
    first = run_extractor("--source", src, "--client", "c", "--date", "2026-01-02", "--run-id", "one", "--output", str(out))
    second = run_extractor("--source", src, "--client", "c", "--date", "2026-01-02", "--run-id", "two", "--output", str(out))
    assert first.returncode == 0 and second.returncode == 0
    manifests = [json.loads(p.read_bytes()) for p in sorted(out.glob("client=c/table=t/date=20260102/run_id=*/manifest.json"))]
    assert [m["run_id"] for m in manifests] == ["one", "two"]
    sha = manifests[0]["sha256"]
    expected = hashlib.sha256(b"clientflow-job-v1\0c\0t\x002026-01-02\0" + sha.encode()).hexdigest()[:32]
    assert manifests[0]["job_id"] == manifests[1]["job_id"] == expected
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", manifests[0]["extracted_at"])
    # the keys, in order, are the contract's (the pipeline validates against it), and still the ones pinned here
    assert list(manifests[0]) == list(contract.MANIFEST_FIELDS) == [
        "format_version", "job_id", "client", "table", "schema", "date", "run_id", "extracted_at",
        "extractor_version", "source_dialect", "extraction", "row_count", "byte_size", "sha256", "data_file", "columns"]
    assert manifests[0]["extraction"] == {"mode": "full", "cursor_column": None, "low_mark": None, "high_mark": None}
    assert [list(c) for c in manifests[0]["columns"]] == [list(contract.COLUMN_FIELDS)] * 2
    assert manifests[0]["job_id"] == contract.job_id("c", "t", dt.date(2026, 1, 2), sha)
    with pg_connect(pg_db, autocommit=True) as conn:
        conn.execute("update t set name = 'changed' where id = 2")
    third = run_extractor("--source", src, "--client", "c", "--date", "2026-01-02", "--run-id", "three", "--output", str(out))
    assert third.returncode == 0
    changed = json.loads((out / "client=c/table=t/date=20260102/run_id=three/manifest.json").read_bytes())
    assert changed["job_id"] != expected


def test_tables_option_and_config_file(pg_db: str, run_extractor: Any, tmp_path: Path) -> None:
    with pg_connect(pg_db, autocommit=True) as conn:
        conn.execute("create table a (id int); create table b (id int); create table \"c,d\" (id int); create view v as select 1 as one")
    out = tmp_path / "o"
    res = run_extractor("--source", f"postgresql://postgres@127.0.0.1:5432/{pg_db}", "--client", "c", "--tables", "b,v",
                        "--output", str(out))
    assert res.returncode == 0, res.stderr
    assert sorted(local_batch(out, "c")) == ["b", "v"]  # a view can be named explicitly

    config = tmp_path / "extract.toml"
    config.write_text(f'source = "postgresql://postgres@127.0.0.1:5432/{pg_db}"\nclient = "fromconfig"\n'
                      f'tables = ["c,d", "a"]\noutput = "{out}"\ndate = "2026-03-04"\n')
    res = run_extractor("--config", str(config))
    assert res.returncode == 0, res.stderr
    batch = local_batch(out, "fromconfig")
    assert sorted(batch) == ["a", "c,d"] and batch["a"]["manifest"]["date"] == "2026-03-04"
    res = run_extractor("--config", str(config), "--tables", "b", "--client", "override")
    assert res.returncode == 0, res.stderr
    assert list(local_batch(out, "override")) == ["b"]  # the command line wins over the file

    res = run_extractor("--source", f"postgresql://postgres@127.0.0.1:5432/{pg_db}", "--client", "c", "--tables", "a,nope",
                        "--output", str(out))
    assert res.returncode == 2 and "nope" in res.stderr


ASCII_SCHEMA_SQL = r"""
create type mood as enum ('ok', E'caf\xc3\xa9', E'b\xffad', E'\xed\xa0\x80');
create table t (
  id int primary key, t text, v varchar(20), c char(6), n name, e mood, i inet,
  ta text[], ca char(3)[], ea mood[], j jsonb, k json, ka json[]
);
"""

# Every byte above 0x7f below is an E'' escape, so the stored bytes are these whatever the client encoding.
ASCII_ROWS_SQL = r"""
insert into t values
(1, 'plain', E'caf\xc3\xa9', 'ab', 'name', 'ok', '10.0.0.1',
 array['x', E'\xc3\xa9\xf0\x9f\x98\x80', null, ''], array['a', E'\xc3\xa9'], array['ok', E'caf\xc3\xa9']::mood[], E'{"k": "\xc3\xa9"}',
 '{"a": "\u00e9"}', array['{"a": "\u00e9"}'::json, 'null', null]),
(2, E'Secret\xff\x41Value', E'\xed\xa0\x80', E'\xe9', E'n\xff', E'b\xffad', '::1',
 array[E'Secret\xffValue', null, 'ok', E'q"\\\x01\n\t\xc3'], array[E'\xe9', 'ab', null], array[E'b\xffad', 'ok', null]::mood[], '[]', null, null),
(3, E'caf\xc3\xa9 \xf0\x9f\x98\x80 \xf0\x9d\x84\x9e \xf4\x8f\xbf\xbf \xef\xbf\xbf', E'\xc0\xaf', E'\xe0\x80\xaf', E'\xf0\x9f\x98', E'\xed\xa0\x80', null,
 E'[0:1][-1:1]={{a,"\xff",NULL},{"\\\\",\xc3\xa9,"\xf4\x90\x80\x80"}}', array[array[E'\xff', 'x'], array['y', 'z']]::char(3)[],
 array[E'\xed\xa0\x80']::mood[], null, null, null),
(4, E'\xf4\x90\x80\x80', E'ab\xe2\x82', E'\x80', null, 'ok', null, E'{{{\xed\xbf\xbf}}}', '{}', '{}', null, null, null),
(5, '', E'q"\\\x01\n\t\xff', E'\xff\xfe', E'\xed\x9f\xbf', E'caf\xc3\xa9', null, '{}', null, null, null, null, null),
(6, null, null, null, null, null, null, null, null, null, null, null, null);
"""

# the bytes PostgreSQL holds, fetched with textsend under client_encoding SQL_ASCII (no conversion at all):
# nothing here shares code with the extractor, which uses regexes and convert_to on the server
ASCII_SCALARS = {"t": "t", "v": "v", "c": "pg_catalog.textin(pg_catalog.bpcharout(c))", "n": "n::text", "e": "e::text", "i": "i::text"}
ASCII_ARRAYS = {"ta": "x", "ca": "pg_catalog.textin(pg_catalog.bpcharout(x))", "ea": "x::text"}


def _cell_bytes(cell: Any) -> bytes | None:
    """A text cell back to its bytes: a JSON string (always valid UTF-8) or {"$bytes_b64": ...} (never valid UTF-8)."""
    if cell is None:
        return None
    if isinstance(cell, str):
        return cell.encode("utf-8")
    assert isinstance(cell, dict) and list(cell) == ["$bytes_b64"], cell
    raw = base64.b64decode(cell["$bytes_b64"], validate=True)
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw
    raise AssertionError(f"valid UTF-8 written as bytes: {raw!r}")


def _flatten(value: Any) -> list[Any]:
    return [y for x in value for y in _flatten(x)] if isinstance(value, list) else [value]


def _shape(value: Any) -> list[int]:
    return [len(value), *_shape(value[0])] if isinstance(value, list) and value else []


def _dims(array_dims: bytes | str | None) -> list[int]:
    """'[0:1][-1:1]' -> [2, 3]"""
    if array_dims is None:
        return []
    text = array_dims.decode() if isinstance(array_dims, bytes) else array_dims
    return [int(hi) - int(lo) + 1 for lo, hi in (d.split(":") for d in text.strip("[]").split("]["))]


def test_sql_ascii_text_that_is_not_utf8_round_trips_as_bytes(pg_ascii_db: str, run_extractor: Any, tmp_path: Path) -> None:
    """SQL_ASCII stores any bytes. A text, varchar, char(n), name or enum cell, or an element of their
    arrays, that is valid UTF-8 is a JSON string; one that is not is {"$bytes_b64": ...} with its exact bytes."""
    with pg_connect(pg_ascii_db, autocommit=True) as conn:
        conn.execute(ASCII_SCHEMA_SQL)
        conn.execute(ASCII_ROWS_SQL)
    out = tmp_path / "o"
    res = run_extractor("--source", f"postgresql://postgres@127.0.0.1:5432/{pg_ascii_db}", "--client", "c", "--output", str(out))
    assert res.returncode == 0, res.stderr
    assert "Secret" not in res.stdout + res.stderr
    batch = local_batch(out, "c")["t"]
    manifest, data = batch["manifest"], batch["data"]
    assert manifest["row_count"] == 6 and manifest["sha256"] == hashlib.sha256(data).hexdigest()
    assert {c["name"]: c["encoding"] for c in manifest["columns"]} == {
        "id": "integer", "t": "string", "v": "string", "c": "string", "n": "string", "e": "enum", "i": "string",
        "ta": "array<string>", "ca": "array<string>", "ea": "array<enum>", "j": "json", "k": "json", "ka": "array<json>"}
    rows = {r["id"]: r for r in json.loads(data.decode("utf-8"))}  # strict UTF-8, strict JSON
    assert sorted(rows) == [1, 2, 3, 4, 5, 6]
    assert rows[2]["t"] == {"$bytes_b64": base64.b64encode(b"Secret\xffAValue").decode()}
    assert rows[2]["c"] == {"$bytes_b64": base64.b64encode(b"\xe9     ").decode()}  # char(n) keeps its padding
    assert rows[3]["t"] == "café 😀 𝄞 \U0010ffff \uffff" and rows[1]["e"] == "ok" and rows[1]["j"] == {"k": "é"}
    assert rows[5]["t"] == "" and rows[6]["t"] is None
    # json: \u escapes above U+007F cannot be decoded in SQL_ASCII, so the "$json" check must not need to
    assert b'"k":{"a": "\\u00e9"},"ka":[{"a": "\\u00e9"},{"$json":null},null]}' in data

    wrapped = plain = 0
    with pg_connect(pg_ascii_db, client_encoding="SQL_ASCII") as conn:
        for name, expr in ASCII_SCALARS.items():
            query = sql.SQL("select id, pg_catalog.textsend({}) from t").format(sql.SQL(expr))
            for row_id, source in conn.execute(query):
                cell = rows[row_id][name]
                assert _cell_bytes(cell) == (None if source is None else bytes(source)), (name, row_id)
                wrapped += isinstance(cell, dict)
                plain += isinstance(cell, str)
        for name, expr in ASCII_ARRAYS.items():
            query = sql.SQL("select id, array(select pg_catalog.textsend({e}) from pg_catalog.unnest({c}) with ordinality u(x, o) "
                            "order by o), pg_catalog.array_dims({c}), {c} is null from t").format(e=sql.SQL(expr), c=sql.Identifier(name))
            for row_id, elements, dims, is_null in conn.execute(query):
                cell = rows[row_id][name]
                if is_null:
                    assert cell is None, (name, row_id)
                    continue
                assert _shape(cell) == _dims(dims), (name, row_id)  # nesting kept (lower bounds are not)
                flat = _flatten(cell)
                assert [_cell_bytes(x) for x in flat] == [None if b is None else bytes(b) for b in elements], (name, row_id)
                wrapped += sum(isinstance(x, dict) for x in flat)
                plain += sum(isinstance(x, str) for x in flat)
    assert wrapped == 23 and plain == 28  # counted by hand from ASCII_ROWS_SQL: both forms, in every column


def test_sql_ascii_json_that_is_not_utf8_is_refused_with_exit_4(pg_ascii_db: str, run_extractor: Any, tmp_path: Path) -> None:
    """A json value holding bytes that are not UTF-8 has no exact JSON form: that table is refused (exit 4,
    no manifest, the value never quoted); a table whose text columns hold such bytes extracts."""
    with pg_connect(pg_ascii_db, autocommit=True) as conn:
        conn.execute("create table good (id int primary key, t text)")
        conn.execute(r"insert into good values (1, 'plain'), (2, E'caf\xc3\xa9 \xf0\x9f\x98\x80'), (3, E'Secret\xff\x41Value')")
        conn.execute("create table bad (id int primary key, j jsonb)")
        conn.execute(r"""insert into bad values (1, '"ok"'), (2, E'{"k": "Secret\xff\x41Value"}')""")
    out = tmp_path / "o"
    src = f"postgresql://postgres@127.0.0.1:5432/{pg_ascii_db}"
    res = run_extractor("--source", src, "--client", "c", "--tables", "good", "--output", str(out), "--run-id", "r1")
    assert res.returncode == 0, res.stderr
    assert json.loads(local_batch(out, "c")["good"]["data"]) == [
        {"id": 1, "t": "plain"}, {"id": 2, "t": "café 😀"}, {"id": 3, "t": {"$bytes_b64": base64.b64encode(b"Secret\xffAValue").decode()}}]

    res = run_extractor("--source", src, "--client", "c", "--tables", "bad", "--output", str(out), "--run-id", "r1")
    assert res.returncode == 4, res.stderr
    assert "table bad holds a json" in res.stderr and "re-run with --run-id r1" in res.stderr
    assert "Secret" not in res.stderr and "Value" not in res.stderr  # never the row's content
    assert not list((out / "client=c").glob("table=bad/**/manifest.json"))
    assert not list(out.rglob(".*partial"))


JSON_ARRAYS_SQL = r"""
create table ja (id int primary key, a json[], b jsonb[]);
insert into ja values
(1, array['null'::json, null, '{"$json": 1}'], array['null'::jsonb, null, '{"$json": 1}']),
(2, '{{1,"\"null\""},{NULL,"{\"$json\": 1, \"x\": 2}"}}', '{{1,"\"null\""},{NULL,"{\"$json\": 1, \"x\": 2}"}}'),
(3, '{}', '{}'),
(4, null, null),
(5, array['{"\u0024json": 2}'::json, '{"$json": 1, "$json": 3}', E'{"k":\n null}'], array['{"k": null}'::jsonb, '{"$json": null}']),
(6, '[0:1]={1, "\"x\""}', '{{{true}}}');
"""


def test_json_array_elements_are_encoded_like_json_cells(pg_db: str, run_extractor: Any, tmp_path: Path) -> None:
    """array<json>: each element is written as a json cell is, so SQL NULL (null), the JSON value null
    ({"$json":null}) and an object whose only key is "$json" (wrapped once more) stay apart."""
    with pg_connect(pg_db, autocommit=True) as conn:
        conn.execute(JSON_ARRAYS_SQL)
    out = tmp_path / "o"
    res = run_extractor("--source", f"postgresql://postgres@127.0.0.1/{pg_db}", "--client", "c", "--output", str(out))
    assert res.returncode == 0, res.stderr
    batch = local_batch(out, "c")["ja"]
    assert [c["encoding"] for c in batch["manifest"]["columns"]] == ["integer", "array<json>", "array<json>"]
    data = batch["data"]
    assert data.splitlines()[1:-1] == [
        b'{"id":1,"a":[{"$json":null},null,{"$json":{"$json": 1}}],"b":[{"$json":null},null,{"$json":{"$json": 1}}]},',
        b'{"id":2,"a":[[1,"null"],[null,{"$json": 1, "x": 2}]],"b":[[1,"null"],[null,{"x": 2, "$json": 1}]]},',
        b'{"id":3,"a":[],"b":[]},',
        b'{"id":4,"a":null,"b":null},',
        b'{"id":5,"a":[{"$json":{"\\u0024json": 2}},{"$json":{"$json": 1, "$json": 3}},{"k":  null}],'
        b'"b":[{"k": null},{"$json":{"$json": null}}]},',
        b'{"id":6,"a":[1,"x"],"b":[[[true]]]}',
    ]

    # read back as a loader would (unwrap each element's lone "$json" object once) and compare with the source
    rows = {r["id"]: r for r in _load(data)}
    with pg_connect(pg_db) as conn:
        for name in ("a", "b"):
            query = sql.SQL("select id, array(select case when x is null then null else x::text end from pg_catalog.unnest({c}) "
                            "with ordinality u(x, o) order by o), pg_catalog.array_dims({c}), {c} is null from ja").format(c=sql.Identifier(name))
            for row_id, elements, dims, is_null in conn.execute(query):
                cell = rows[row_id][name]
                if is_null:
                    assert cell is None
                    continue
                assert _shape(cell) == _dims(dims), (name, row_id)
                ours = [("sql null",) if x is None else x["$json"] if isinstance(x, dict) and list(x) == ["$json"] else x
                        for x in _flatten(cell)]
                theirs = [("sql null",) if x is None else json.loads(x, parse_float=Decimal) for x in elements]
                assert ours == theirs, (name, row_id)
