"""MariaDB (and MySQL): every value read back from data.json equals the value pymysql's own typed
loaders give for the source column, which share no code with the extractor's raw-text path."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import struct
from decimal import Decimal
from pathlib import Path
from typing import Any

import pymysql.converters

from .conftest import local_batch, maria_connect

CREATE = """
CREATE TABLE `Patients ☃` (
  id INT PRIMARY KEY,
  c_tiny TINYINT, c_bool TINYINT(1), c_small SMALLINT, c_medium MEDIUMINT, c_int INT, c_big BIGINT NOT NULL,
  c_ubig BIGINT UNSIGNED, c_year YEAR, c_bit BIT(10),
  c_dec DECIMAL(30,10), c_dec0 DECIMAL(65,0),
  c_float FLOAT, c_double DOUBLE,
  c_char CHAR(5), c_varchar VARCHAR(100), c_text TEXT, c_long LONGTEXT, c_latin VARCHAR(20) CHARACTER SET latin1,
  c_enum ENUM('sad', 'ok', 'happy 😀'), c_set SET('a', 'b', 'c'),
  c_bin_enum ENUM('a', 'b') CHARACTER SET binary,
  c_binary BINARY(4), c_varbinary VARBINARY(50), c_blob BLOB,
  c_date DATE, c_datetime DATETIME(6), c_ts TIMESTAMP(6) NULL, c_time TIME(6),
  c_json JSON, c_uuid UUID,
  `we``ird "col"` VARCHAR(10)
) DEFAULT CHARSET = utf8mb4
"""

COLUMNS = ["id", "c_tiny", "c_bool", "c_small", "c_medium", "c_int", "c_big", "c_ubig", "c_year", "c_bit", "c_dec", "c_dec0",
           "c_float", "c_double", "c_char", "c_varchar", "c_text", "c_long", "c_latin", "c_enum", "c_set", "c_bin_enum",
           "c_binary", "c_varbinary", "c_blob", "c_date", "c_datetime", "c_ts", "c_time", "c_json", "c_uuid", 'we`ird "col"']

FLOATS = {1: (0.1, 0.1), 2: (16777217.0, 1.7976931348623157e308), 3: (3.4028234663852886e38, 5e-324), 4: (None, None), 5: (0.0, 0.0)}  # MariaDB stores -0 as 0

ROWS = [
    (1, 127, 1, 32767, 8388607, 2147483647, 9223372036854775807, 18446744073709551615, 2026, 0b1010101010,
     "12345678901234567890.0123456789", "99999999999999999999999999999999999999999999999999999999999999999",
     0.1, 0.1, "ab", "hello, \"world\" \\ back\\slash", "emoji 😀 non-BMP 𝄞", "a\0b NUL inside", "Zürich",
     "happy 😀", "a,c", "a", b"\x00\x01\x00\x02", b"\x00\xff\x00", b"\x00" * 100 + b"\xfe",
     "2026-11-22", "2026-11-22 03:49:00.123456", "2026-11-22 03:49:00.123456", "838:59:59", '{"a": [1, 2.50, "x"],\n "n": 12345678901234567890123}',
     "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "v"),
    (2, -128, 0, -32768, -8388608, -2147483648, -9223372036854775808, 0, 1901, 0,
     "0.0000000000", "-1", 16777217.0, 1.7976931348623157e308, "", "", "\t\n\r\x01 ctrl \u2028", "", "",
     "sad", "", "b", b"", b"", b"",
     "0000-00-00", "1000-01-01 00:00:00", "1970-01-01 00:00:01", "-838:59:59", "null",
     "00000000-0000-0000-0000-000000000000", ""),
    (3, 0, 2, 0, 0, 0, 0, 1, 2155, 1023,
     "-99999999999999999999.9999999999", "0", 3.4028234663852886e38, 5e-324, "x", "ééé", "", "", "ß",
     "ok", "a,b,c", "a", b"\xff\xfe\xfd\xfc", b"\xff", b"\x00",
     "9999-12-31", "9999-12-31 23:59:59.999999", "2038-01-19 03:14:07.999999", "00:00:00.000001", '{"$json": 1}',
     "ffffffff-ffff-ffff-ffff-ffffffffffff", None),
    (4, None, None, None, None, None, 42, None, None, None, None, None, None, None, None, None, None, None, None, None,
     None, None, None, None, None, None, None, None, None, None, None, None),
    (5, 1, 1, 1, 1, 1, 1, 1, 2000, 1, "0.1000000000", "1", -0.0, -0.0, "abcde", "x" * 100, "0.1", "long " * 1000, "é",
     "ok", "a", "a", b"abcd", b"\x00", b"",
     "2000-02-29", "2000-02-29 00:00:00", "2000-02-29 00:00:00", "23:59:59", "[]", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "z"),
]


def _setup(db: str) -> None:
    conn = maria_connect(db)
    with conn.cursor() as cur:
        cur.execute("SET time_zone = '+00:00', sql_mode = 'STRICT_TRANS_TABLES'")
        cur.execute(CREATE)
        placeholders = ", ".join(["%s"] * len(COLUMNS))
        for row in ROWS:
            cur.execute(f"INSERT INTO `Patients ☃` VALUES ({placeholders})", row)
        # an ENUM with a binary charset is the one place MariaDB hands out bytes that are not UTF-8
        cur.execute("UPDATE `Patients ☃` SET c_bin_enum = NULL WHERE id = 4")
        cur.execute("ALTER TABLE `Patients ☃` MODIFY c_bin_enum ENUM('a', 'b', 0xFF41) CHARACTER SET binary")
        cur.execute("UPDATE `Patients ☃` SET c_bin_enum = 0xFF41 WHERE id = 1")
    conn.close()


def _expected(db: str) -> dict[int, dict[str, Any]]:
    """Typed values through pymysql's default converters (a path independent of the extractor)."""
    conv = dict(pymysql.converters.conversions)
    conn = maria_connect(db, conv=conv)
    with conn.cursor() as cur:
        cur.execute("SET time_zone = '+00:00'")
        cur.execute("SELECT * FROM `Patients ☃` ORDER BY id")
        out = {r[0]: dict(zip(COLUMNS, r, strict=False)) for r in cur.fetchall()}
    conn.close()
    return out


def _decode(encoding: str, value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, dict) and list(value) == ["$bytes_b64"]:
        return base64.b64decode(value["$bytes_b64"])
    if encoding in ("integer",):
        return value
    if encoding == "decimal":
        return Decimal(value)
    if encoding == "bytes_base64":
        return base64.b64decode(value, validate=True)
    if encoding == "date":
        return value if value.startswith("0000") else dt.date.fromisoformat(value)
    if encoding == "timestamp":
        return dt.datetime.fromisoformat(value)
    if encoding == "timestamptz":
        return dt.datetime.fromisoformat(value).replace(tzinfo=None) if value.endswith("+00:00") else value
    if encoding == "time":
        sign = -1 if value.startswith("-") else 1
        h, m, s = value.lstrip("-").split(":")
        sec, _, micro = s.partition(".")
        return sign * dt.timedelta(hours=int(h), minutes=int(m), seconds=int(sec), microseconds=int(micro.ljust(6, "0")))
    if encoding == "json":
        if isinstance(value, dict) and list(value) == ["$json"]:
            return value["$json"]
        return value
    return value


def test_every_type_round_trips_exactly(maria_db: str, run_extractor: Any, tmp_path: Path) -> None:
    _setup(maria_db)
    out = tmp_path / "out"
    res = run_extractor("--source", f"mysql://root@127.0.0.1:3306/{maria_db}", "--client", "ehrlogic", "--output", str(out),
                        "--date", "2026-11-22", "--run-id", "m1")
    assert res.returncode == 0, res.stderr
    batch = local_batch(out, "ehrlogic")
    assert list(batch) == ["Patients ☃"]
    entry = batch["Patients ☃"]
    manifest, data = entry["manifest"], entry["data"]
    assert entry["dir"].parent.parent.name == "table=Patients%20%E2%98%83"
    assert manifest["row_count"] == len(ROWS) and manifest["byte_size"] == len(data)
    assert manifest["sha256"] == hashlib.sha256(data).hexdigest()
    assert manifest["source_dialect"] == "mysql" and manifest["schema"] == maria_db
    enc = {c["name"]: c["encoding"] for c in manifest["columns"]}
    assert list(enc) == COLUMNS
    assert enc == {
        "id": "integer", "c_tiny": "integer", "c_bool": "integer", "c_small": "integer", "c_medium": "integer",
        "c_int": "integer", "c_big": "integer", "c_ubig": "integer", "c_year": "integer", "c_bit": "integer",
        "c_dec": "decimal", "c_dec0": "decimal", "c_float": "float", "c_double": "float",
        "c_char": "string", "c_varchar": "string", "c_text": "string", "c_long": "string", "c_latin": "string",
        "c_enum": "enum", "c_set": "string", "c_bin_enum": "enum",
        "c_binary": "bytes_base64", "c_varbinary": "bytes_base64", "c_blob": "bytes_base64",
        "c_date": "date", "c_datetime": "timestamp", "c_ts": "timestamptz", "c_time": "time",
        "c_json": "json", "c_uuid": "uuid", 'we`ird "col"': "string",
    }
    cols = {c["name"]: c for c in manifest["columns"]}
    assert cols["id"]["primary_key"] and not cols["id"]["nullable"] and not cols["c_big"]["nullable"]
    assert cols["c_ubig"]["source_type"] == "bigint(20) unsigned" and cols["c_enum"]["source_type"].startswith("enum(")

    rows = json.loads(data, parse_float=Decimal)
    assert [list(r) for r in rows] == [COLUMNS] * len(ROWS)
    ours = {r["id"]: r for r in rows}
    expected = _expected(maria_db)
    for row_id, src in expected.items():
        for name in COLUMNS:
            mine, theirs = ours[row_id][name], src[name]
            if name in ("c_float", "c_double"):
                _same_float(mine, FLOATS[row_id][name == "c_double"], single=name == "c_float")
                continue
            if name == "c_bit" and theirs is not None:
                theirs = int.from_bytes(theirs, "big")
            if name == "c_json" and theirs is not None:
                theirs = json.loads(theirs, parse_float=Decimal)
            if name == "c_set" and theirs is not None:
                theirs = ",".join(sorted(theirs)) if isinstance(theirs, set) else theirs
            if name == "c_bin_enum" and isinstance(theirs, bytes) and isinstance(mine, str):
                theirs = theirs.decode()
            assert _decode(enc[name], mine) == theirs, f"column {name!r} row {row_id}"

    r1, r2, r3 = ours[1], ours[2], ours[3]
    assert r1["c_ubig"] == 18446744073709551615 and r1["c_big"] == 9223372036854775807
    assert r2["c_dec"] == "0.0000000000" and r1["c_dec0"] == "9" * 65  # exact text, scale kept
    assert r1["c_long"] == "a\0b NUL inside" and b'"a\\u0000b NUL inside"' in data
    assert r2["c_varchar"] == "" and ours[4]["c_varchar"] is None
    assert r1["c_bin_enum"] == {"$bytes_b64": base64.b64encode(b"\xffA").decode()}  # not UTF-8: lossless cell wrapper
    assert r3["c_bin_enum"] == "a"
    assert r1["c_float"] == Decimal("0.1") and r2["c_float"] == Decimal("16777216")  # float32 shortest text
    assert r2["c_double"] == Decimal("1.7976931348623157E+308")
    assert r2["c_date"] == "0000-00-00"  # MySQL zero dates pass through as text
    assert r1["c_datetime"] == "2026-11-22T03:49:00.123456" and r1["c_ts"] == "2026-11-22T03:49:00.123456+00:00"
    assert r1["c_time"] == "838:59:59.000000" and r2["c_time"] == "-838:59:59.000000"
    assert r2["c_json"] == {"$json": None} and r3["c_json"] == {"$json": {"$json": 1}}
    assert r1["c_json"] == {"a": [1, Decimal("2.50"), "x"], "n": 12345678901234567890123}
    assert r2["c_text"] == "\t\n\r\x01 ctrl \u2028"


def _same_float(ours: Any, theirs: float | None, single: bool) -> None:
    if theirs is None:
        assert ours is None
        return
    fmt = "<f" if single else "<d"
    assert struct.pack(fmt, float(ours)) == struct.pack(fmt, theirs)


def test_default_schema_is_the_url_database_and_tables_sorted(maria_db: str, run_extractor: Any, tmp_path: Path) -> None:
    conn = maria_connect(maria_db)
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE zz (id INT)")
        cur.execute("CREATE TABLE `Aa` (id INT)")
        cur.execute("CREATE VIEW vv AS SELECT 1 AS one")
        cur.execute("INSERT INTO zz VALUES (1), (2), (3)")
    conn.close()
    out = tmp_path / "o"
    res = run_extractor("--source", f"mysql://root@127.0.0.1/{maria_db}", "--client", "c", "--output", str(out))
    assert res.returncode == 0, res.stderr
    batch = local_batch(out, "c")
    assert sorted(batch) == ["Aa", "zz"]
    assert json.loads(batch["zz"]["data"]) == [{"id": 1}, {"id": 2}, {"id": 3}]
    assert batch["Aa"]["data"] == b"[]\n"


def test_zero_padded_integers_and_zero_dates(maria_db: str, run_extractor: Any, tmp_path: Path) -> None:
    """ZEROFILL and YEAR print leading zeros ('00042', '0000') in MariaDB's text protocol: the file must
    still be valid JSON, with the integer values; zero DATETIME/TIMESTAMP keep their documented form."""
    conn = maria_connect(maria_db)
    with conn.cursor() as cur:
        cur.execute("SET time_zone = '+00:00', sql_mode = ''")  # '' allows zero dates
        cur.execute("CREATE TABLE padded (id INT PRIMARY KEY, z INT(5) UNSIGNED ZEROFILL, zb BIGINT(25) UNSIGNED ZEROFILL, "
                    "y YEAR, dt DATETIME, ts TIMESTAMP NULL)")
        cur.executemany("INSERT INTO padded VALUES (%s, %s, %s, %s, %s, %s)", [
            (1, 42, 18446744073709551615, 0, "0000-00-00 00:00:00", "0000-00-00 00:00:00"),
            (2, 0, 7, 1901, "2026-11-22 03:49:00", "2026-11-22 03:49:00"),
            (3, None, None, None, None, None),
        ])
    conn.close()
    out = tmp_path / "o"
    res = run_extractor("--source", f"mysql://root@127.0.0.1:3306/{maria_db}", "--client", "c", "--output", str(out))
    assert res.returncode == 0, res.stderr
    entry = local_batch(out, "c")["padded"]
    rows = json.loads(entry["data"])  # raises if a cell is not valid JSON
    assert entry["manifest"]["row_count"] == 3
    assert {c["name"]: c["encoding"] for c in entry["manifest"]["columns"]} == {
        "id": "integer", "z": "integer", "zb": "integer", "y": "integer", "dt": "timestamp", "ts": "timestamptz"}
    expected = _padded_expected(maria_db)
    for row in rows:
        src = expected[row["id"]]
        assert [row["z"], row["zb"], row["y"]] == [src[1], src[2], src[3]]
    assert rows[0] == {"id": 1, "z": 42, "zb": 18446744073709551615, "y": 0,
                       "dt": "0000-00-00T00:00:00", "ts": "0000-00-00T00:00:00+00:00"}
    assert rows[1]["z"] == 0 and rows[1]["y"] == 1901 and rows[2]["z"] is None


def _padded_expected(db: str) -> dict[int, tuple[Any, ...]]:
    conn = maria_connect(db, conv=dict(pymysql.converters.conversions))
    with conn.cursor() as cur:
        cur.execute("SELECT id, z, zb, y FROM padded")
        out = {r[0]: r for r in cur.fetchall()}
    conn.close()
    return out
