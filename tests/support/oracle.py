"""An independent reading of what a client's mapping should produce, in plain Python.

The end-to-end tests compare production with this, value by value. It starts at the client's
source database (PostgreSQL or MariaDB), turns each value into the text the extractor writes
into data.json, and applies the mapping's rules with Python's own parsers (strptime, Decimal,
zoneinfo); it shares no code with the dbt macros. If the two disagree about a value, one is wrong.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, time
from decimal import ROUND_HALF_UP, Decimal
from typing import Any
from zoneinfo import ZoneInfo

from clientflow.entities import BY_NAME, Column
from clientflow.mapping import ClientMapping, ColumnRules

Rows = dict[str, dict[tuple[str, str], dict[str, Any]]]

_DATE_FORMATS: dict[str, Callable[[str], date]] = {
    "YYYY-MM-DD": lambda s: datetime.strptime(s, "%Y-%m-%d").date(),
    "MM/DD/YYYY": lambda s: datetime.strptime(s, "%m/%d/%Y").date(),
    "DD/MM/YYYY": lambda s: datetime.strptime(s, "%d/%m/%Y").date(),
    "YYYYMMDD": lambda s: datetime.strptime(s, "%Y%m%d").date(),
    "YYYY-MM-DD HH:MI:SS": lambda s: datetime.fromisoformat(s).date(),
}
_DEFAULT_TRUE = {"true", "t", "yes", "y", "1", "on"}
_DEFAULT_FALSE = {"false", "f", "no", "n", "0", "off"}


class Refused(Exception):
    """The mapping refuses this value (the pipeline rejects the row)."""


def as_text(value: Any) -> str | None:
    """The text of a source value as data.json carries it to the raw table."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, Decimal):
        return format(value, "f")
    return str(value)


def _initcap(text: str) -> str:
    """PostgreSQL's initcap: upper after a non-alphanumeric character, lower elsewhere."""
    out, previous = [], ""
    for char in text:
        out.append(char.upper() if not previous.isalnum() else char.lower())
        previous = char
    return "".join(out)


def _phone(text: str, rules: ColumnRules) -> str | None:
    rule = rules.phone
    if rule is None or rule is True or rule is False:
        return re.sub(r"[^0-9+]", "", text) or None
    digits = re.sub(r"[^0-9]", "", text)
    if text.lstrip().startswith("+"):
        return "+" + digits
    if len(digits) == rule.national_digits and rule.country_code:
        return f"+{rule.country_code}{digits}"
    if rule.country_code and len(digits) == rule.national_digits + len(rule.country_code) \
            and digits.startswith(rule.country_code):
        return "+" + digits
    return digits or None


def _text(source: dict[str, Any], rules: ColumnRules, column: Column) -> str | None:
    parts = []
    for name in rules.sources:
        text = as_text(source[name])
        if text is not None and rules.trim:
            text = text.strip(" \t\r\n")
        if text == "" and rules.empty_as_null:
            text = None
        parts.append(text)
    value = None if not parts or any(p is None for p in parts) else "-".join(p for p in parts if p is not None)
    if value is not None and rules.values:
        mapped = {k.strip().lower(): v for k, v in rules.values.items()}
        if value.lower() not in mapped:
            raise Refused("unmapped_value")
        value = mapped[value.lower()]
    if value is None:
        value = rules.default
    if value is None:
        return None
    if rules.case == "lower" or (rules.email if rules.email is not None else column.text_kind == "email"):
        value = value.lower()
    elif rules.case == "upper":
        value = value.upper()
    elif rules.case == "title":
        value = _initcap(value)
    if rules.phone or (rules.phone is None and column.text_kind == "phone"):
        value = _phone(value, rules)
    return value


def _timestamp(text: str, rules: ColumnRules, zone: ZoneInfo) -> datetime:
    for name in rules.timestamp_formats or ["iso_with_offset", "iso_local"]:
        try:
            if name in ("iso_with_offset", "iso_local"):
                parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
                if (parsed.tzinfo is not None) == (name == "iso_with_offset"):
                    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=zone)).astimezone(UTC)
            elif name == "MM/DD/YYYY HH24:MI":
                return datetime.strptime(text, "%m/%d/%Y %H:%M").replace(tzinfo=zone).astimezone(UTC)
        except ValueError:
            continue
    raise Refused("timestamp_format")


def _typed(text: str | None, rules: ColumnRules, column: Column, zone: ZoneInfo) -> Any:
    base = column.sql_type.split("(")[0]
    if text is None or base == "text":
        return text
    if base == "date":
        for name in rules.date_formats or ["YYYY-MM-DD"]:
            try:
                return _DATE_FORMATS[name](text)
            except ValueError:
                continue
        raise Refused("date_format")
    if base == "timestamptz":
        return _timestamp(text, rules, ZoneInfo(rules.timezone) if rules.timezone else zone)
    if base == "integer":
        return int(Decimal(text))
    if base == "numeric":
        scale = rules.scale if rules.scale is not None else int(column.sql_type.rstrip(")").split(",")[1])
        number = Decimal(text) * Decimal(str(rules.multiplier or 1))
        return number.quantize(Decimal(1).scaleb(-scale), rounding=ROUND_HALF_UP)
    if base == "boolean":
        spellings = rules.boolean
        true = {s.lower() for s in spellings.true} if spellings else _DEFAULT_TRUE
        false = {s.lower() for s in spellings.false} if spellings else _DEFAULT_FALSE
        if text.lower() in true:
            return True
        if text.lower() in false:
            return False
        raise Refused("not_boolean")
    raise AssertionError(f"no reading for {column.sql_type}")


def expected_rows(mapping: ClientMapping, read_table: Callable[[str], Iterator[dict[str, Any]]]) -> Rows:
    """entity -> (client_id, key) -> our columns; ``read_table(name)`` yields the source's rows."""
    zone = ZoneInfo(mapping.timezone)
    out: Rows = {}
    for entity, tables in mapping.entities.items():
        ours = BY_NAME[entity]
        kept: dict[tuple[str, str], tuple[Any, dict[str, Any]]] = {}
        for table in tables:
            spec = mapping.tables[table]
            for source in read_table(table):
                try:
                    row = {"client_id": mapping.client}
                    for name, rules in spec.columns.items():
                        column = ours.column(name)
                        row[name] = _typed(_text(source, rules, column), rules, column, zone)
                except Refused:
                    continue
                by = spec.duplicates.by
                order = _typed(as_text(source[by]), ColumnRules(source=by), Column("by", "timestamptz"), zone) if by else 0
                key = (mapping.client, row[ours.key])
                if key not in kept or order >= kept[key][0]:
                    kept[key] = (order, row)
        out[entity] = {key: row for key, (_, row) in kept.items()}
    return out


def postgres_reader(conn: Any) -> Callable[[str], Iterator[dict[str, Any]]]:
    def read(table: str) -> Iterator[dict[str, Any]]:
        cur = conn.execute(f'select * from "{table}"')  # noqa: S608 - the sample's own table names
        names = [d.name for d in cur.description or []]
        for record in cur:
            yield dict(zip(names, record, strict=True))
    return read


def mariadb_reader(conn: Any) -> Callable[[str], Iterator[dict[str, Any]]]:
    def read(table: str) -> Iterator[dict[str, Any]]:
        with conn.cursor() as cur:
            cur.execute(f"SELECT * FROM `{table}`")
            names = [d[0] for d in cur.description]
            for record in cur.fetchall():
                yield dict(zip(names, record, strict=True))
    return read
