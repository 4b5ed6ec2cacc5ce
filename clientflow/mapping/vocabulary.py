"""The cleaning vocabulary of a mapping file, and what each word means in SQL.

The pydantic model (``clientflow.mapping.model``) accepts these names; the dbt macros receive the
resolved form, so the meaning of a format is written here and nowhere else:

- ``regex``: an anchored regular expression a value must match to be read in this format;
- ``parts``: SQL (``{v}`` stands for the value) that takes the year, month, day (and hour,
  minute, second) out of a matching value, so the value is checked for a real calendar date and
  time (``pipeline.valid_ymd``/``valid_hms``) before PostgreSQL reads it: a value such as
  ``02/30/2024`` becomes a reject, never a failed query;
- ``pattern``: the ``to_date`` pattern that reads a date; a timestamp without an offset is built
  from its parts (``make_timestamp``, then the time zone), one with an offset is read by
  PostgreSQL's ISO 8601 input, and ``epoch_divisor`` reads counts since 1970.

docs/mapping.md shows each with an example.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass(frozen=True)
class Format:
    regex: str
    parts: dict[str, str] = field(default_factory=dict)
    pattern: str | None = None
    epoch_divisor: int | None = None
    reader: Literal["iso", "parts", "epoch"] = "parts"
    """How a timestamp is read: PostgreSQL's ISO 8601 input, built from its parts, or an epoch count."""
    local: bool = True
    """A wall-clock time without an offset: read in the column's (or client's) time zone."""


def _split(separator: str, order: str, of: str = "{v}") -> dict[str, str]:
    """Parts of a date whose fields are separated (``order`` like "mdy")."""
    return {name: f"split_part({of}, '{separator}', {i + 1})" for i, name in enumerate(order)}


def _fixed(**positions: tuple[int, int]) -> dict[str, str]:
    """Parts at fixed positions: name=(start, length), 1-based as in SQL's substr."""
    return {name: f"substr({{v}}, {start}, {length})" for name, (start, length) in positions.items()}


_ISO_DATE = {"y": (1, 4), "m": (6, 2), "d": (9, 2)}
_ISO_TIME = {"h": (12, 2), "mi": (15, 2), "s": (18, 2)}
# Every regex below runs once per value of a batch (2,000,000 times for the benchmark's appointments),
# so each is written the way PostgreSQL's engine ran faster here: [0-9] rather than \d, and (?:...)
# rather than capturing groups, which nothing reads. The appointments' timestamp check took 11.5 s
# of a 26-s model with \d and capturing groups, 6.8 s without (EXPLAIN ANALYZE, same rows; [0-9]
# alone gave 8.2 s); the values each regex accepts are the same.
_ISO_TS = r"[0-9]{4}-[0-9]{2}-[0-9]{2}[ T][0-9]{2}:[0-9]{2}(?::[0-9]{2}(?:\.[0-9]{1,6})?)?"

DATE_FORMATS: dict[str, Format] = {
    "YYYY-MM-DD": Format(r"^[0-9]{4}-[0-9]{1,2}-[0-9]{1,2}$", _split("-", "ymd"), "YYYY-MM-DD"),
    "MM/DD/YYYY": Format(r"^[0-9]{1,2}/[0-9]{1,2}/[0-9]{4}$", _split("/", "mdy"), "MM/DD/YYYY"),
    "DD/MM/YYYY": Format(r"^[0-9]{1,2}/[0-9]{1,2}/[0-9]{4}$", _split("/", "dmy"), "DD/MM/YYYY"),
    "DD.MM.YYYY": Format(r"^[0-9]{1,2}\.[0-9]{1,2}\.[0-9]{4}$", _split(".", "dmy"), "DD.MM.YYYY"),
    "MM-DD-YYYY": Format(r"^[0-9]{1,2}-[0-9]{1,2}-[0-9]{4}$", _split("-", "mdy"), "MM-DD-YYYY"),
    "YYYY/MM/DD": Format(r"^[0-9]{4}/[0-9]{1,2}/[0-9]{1,2}$", _split("/", "ymd"), "YYYY/MM/DD"),
    "YYYYMMDD": Format(r"^[0-9]{8}$", _fixed(y=(1, 4), m=(5, 2), d=(7, 2)), "YYYYMMDD"),
    # The date of a timestamp (a DATETIME column that holds a birth date at midnight, say).
    "YYYY-MM-DD HH:MI:SS": Format(f"^{_ISO_TS}$", _fixed(**_ISO_DATE), "YYYY-MM-DD"),
}
DateFormat = Literal["YYYY-MM-DD", "MM/DD/YYYY", "DD/MM/YYYY", "DD.MM.YYYY", "MM-DD-YYYY", "YYYY/MM/DD",
                     "YYYYMMDD", "YYYY-MM-DD HH:MI:SS"]

_US_DATE = "split_part({v}, ' ', 1)"
_US_TIME = "split_part(split_part({v}, ' ', 2), ':', {n})"
TIMESTAMP_FORMATS: dict[str, Format] = {
    # ISO 8601 with an offset (Z, +hh, +hhmm, +hh:mm): the offset says which instant it is.
    "iso_with_offset": Format(f"^{_ISO_TS}\\s*(?:Z|z|[+-](?:0[0-9]|1[0-4])(?::?[0-5][0-9])?)$",
                              _fixed(**_ISO_DATE, **_ISO_TIME), reader="iso", local=False),
    # ISO 8601 without an offset (what a DATETIME or timestamp-without-time-zone column holds).
    "iso_local": Format(f"^{_ISO_TS}$", _fixed(**_ISO_DATE, **_ISO_TIME), reader="iso"),
    "MM/DD/YYYY HH24:MI": Format(
        r"^[0-9]{1,2}/[0-9]{1,2}/[0-9]{4} [0-9]{1,2}:[0-9]{2}$",
        {**_split("/", "mdy", _US_DATE), "h": _US_TIME.replace("{n}", "1"), "mi": _US_TIME.replace("{n}", "2")},
        "MM/DD/YYYY HH24:MI"),
    "MM/DD/YYYY HH12:MI AM": Format(
        r"^[0-9]{1,2}/[0-9]{1,2}/[0-9]{4} (?:0?[1-9]|1[0-2]):[0-9]{2} [AaPp][Mm]$",
        {**_split("/", "mdy", _US_DATE), "mi": "left(" + _US_TIME.replace("{n}", "2") + ", 2)",
         # 12 AM is midnight, 12 PM noon
         "h": "(" + _US_TIME.replace("{n}", "1") + "::int % 12 + case when upper(right({v}, 2)) = 'PM' "
              "then 12 else 0 end)"},
        "MM/DD/YYYY HH12:MI AM"),
    "epoch_seconds": Format(r"^-?[0-9]{1,11}(?:\.[0-9]{1,6})?$", epoch_divisor=1, reader="epoch", local=False),
    "epoch_milliseconds": Format(r"^-?[0-9]{1,14}$", epoch_divisor=1000, reader="epoch", local=False),
}
TimestampFormat = Literal["iso_with_offset", "iso_local", "MM/DD/YYYY HH24:MI", "MM/DD/YYYY HH12:MI AM",
                          "epoch_seconds", "epoch_milliseconds"]
DEFAULT_TIMESTAMP_FORMATS: tuple[str, ...] = ("iso_with_offset", "iso_local")
DEFAULT_DATE_FORMATS: tuple[str, ...] = ("YYYY-MM-DD",)

DEFAULT_TRUE = ("true", "t", "yes", "y", "1", "on")
DEFAULT_FALSE = ("false", "f", "no", "n", "0", "off")

Case = Literal["lower", "upper", "title"]

INTEGER = r"^[+-]?[0-9]+(?:\.0*)?$"
"""An integer as text (a trailing .0 is allowed: some exports write every number as a float). One
too large for the column is out_of_range (PostgreSQL reads it as numeric first)."""
NUMBER = r"^[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]{1,3})?$"
MAX_NUMBER_LENGTH = 100
"""A number's text is read only up to this many characters, checked with length() before the regex
(dbt/macros/staging/column_value.sql: number_shape). PostgreSQL's numeric input fails the whole
query on some far longer texts ('1.' and 20,000 zeros, '.' and 20,000 digits: "value overflows
numeric format"), which both regexes match; the length keeps every cast safe, and the regexes need
no counted repeat of digits, which made them 2-2.5 times slower per value ([0-9]{1,18}: 2.3-3.2 s
per 2,000,000 values, the length and [0-9]+: 1.0-1.3 s)."""

ERRORS = {
    "missing": "a value is required and the client's is NULL or empty",
    "unmapped_value": "the value is not one the mapping's `values` lists",
    "date_format": "not a date in any of the column's date_formats, or no such calendar day",
    "timestamp_format": "not a timestamp in any of the column's timestamp_formats, or no such time",
    "not_integer": "not an integer",
    "not_number": "not a number",
    "not_boolean": "not one of the column's spellings of true or false",
    "out_of_range": "too large or too small for our column's type",
    "not_accepted": "not one of the values our column accepts",
    "check": "breaks a rule of our column (a CHECK of production.sql)",
}
"""Why a value is rejected; a reject records the code, never the value."""
