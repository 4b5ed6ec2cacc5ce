"""Columns and the value encoders shared by all dialects.

A Column is what the manifest says of one column (its keys are contract.COLUMN_FIELDS) plus how a
reader selects it and, for the readers that encode in Python (MySQL, SQLite), the function that turns
one non-NULL value into its JSON text. The encoders here write the encodings of docs/extractor.md;
they raise ValueError/TypeError/UnicodeError on a value they cannot encode, and the readers turn that
into a message that names the column, never the value.
"""

from __future__ import annotations

import base64
import json
import math
import struct
from collections.abc import Callable
from dataclasses import dataclass
from json.encoder import encode_basestring  # type: ignore[attr-defined]  # C-accelerated, no ASCII escaping
from typing import Any

from client_extractor.contract import COLUMN_FIELDS

# In json columns SQL NULL is null, so the JSON value null is wrapped (and so is a lone "$json" key)
JSON_NULL_CELL = '{"$json":null}'


@dataclass
class Column:
    name: str
    source_type: str
    encoding: str
    nullable: bool
    primary_key: bool
    select_sql: str = ""  # dialect-specific select expression (not in the manifest)
    encode: Callable[[Any], str] | None = None  # python-side value encoder (mysql, sqlite)

    def manifest_entry(self) -> dict[str, Any]:
        """The column's entry in the manifest: exactly contract.COLUMN_FIELDS, in that order."""
        return {field: getattr(self, field) for field in COLUMN_FIELDS}


def enc_float(x: float) -> str:
    if math.isnan(x):
        return '"NaN"'
    if math.isinf(x):
        return '"Infinity"' if x > 0 else '"-Infinity"'
    return repr(x)  # shortest round-trip repr, always a valid JSON number ('1e+300', '-0.0')


_F32 = struct.Struct("<f")


def enc_float32(x: float) -> str:
    """Shortest decimal text that reads back as the same single-precision value (like PostgreSQL's float4out)."""
    if not math.isfinite(x):
        return enc_float(x)
    for digits in range(1, 10):
        text = f"{x:.{digits}g}"
        try:
            if _F32.unpack(_F32.pack(float(text)))[0] == x:
                return text
        except OverflowError:  # rounded past the largest single-precision value
            continue
    return repr(x)


def enc_bytes_b64(v: bytes | str) -> str:
    if isinstance(v, str):
        v = v.encode("utf-8")
    return '"' + base64.b64encode(v).decode("ascii") + '"'


def enc_string(v: str | bytes) -> str:
    """A JSON string; a value that is not valid UTF-8 becomes {"$bytes_b64": "..."} for that cell only."""
    if isinstance(v, bytes):
        try:
            v = v.decode("utf-8")
        except UnicodeDecodeError:
            return '{"$bytes_b64":' + enc_bytes_b64(v) + "}"
    return encode_basestring(v)


def enc_json_text(v: str | bytes) -> str:
    """Embed a JSON document as-is; raw CR/LF (only legal as whitespace between tokens) become spaces.

    SQL NULL is written as null, so the JSON value null becomes {"$json":null}; an object whose only key
    is "$json" is wrapped the same way so that the wrapper stays unambiguous.
    """
    if isinstance(v, bytes):
        v = v.decode("utf-8")

    def reject(_: str) -> Any:
        raise ValueError("NaN/Infinity are not JSON")

    parsed = json.loads(v, parse_constant=reject)  # ValueError: the caller reports the column, never the value
    if parsed is None:
        return JSON_NULL_CELL
    text = v.replace("\n", " ").replace("\r", " ")
    if isinstance(parsed, dict) and list(parsed) == ["$json"]:
        return '{"$json":' + text + "}"
    return text


def enc_quoted(v: str | bytes) -> str:
    """Text known to need no JSON escaping (digits, dates, times): just quote it."""
    if isinstance(v, bytes):
        v = v.decode("ascii")
    return '"' + v + '"'


def enc_raw(v: str | bytes) -> str:
    return v.decode("ascii") if isinstance(v, bytes) else v
