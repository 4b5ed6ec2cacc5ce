"""The mapping as the dbt models receive it: every rule resolved, every default made explicit.

The models (``dbt/macros/clean_value.sql``) apply what they are given and know no defaults of
their own: the defaults (an email column is lower-cased, dates are ISO unless the mapping says
otherwise, our column's NOT NULL makes a value required) are decided here, from the mapping and
our entities' declaration.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from clientflow.entities import BY_NAME, Column
from clientflow.mapping import vocabulary as v

if TYPE_CHECKING:
    from clientflow.mapping.model import ClientMapping, ColumnRules, SourceTable


def _formats(names: Sequence[str] | None, defaults: tuple[str, ...], table: dict[str, v.Format]) -> list[dict[str, Any]]:
    return [asdict(table[name]) for name in (names or defaults)]


def _phone(rules: ColumnRules, column: Column) -> dict[str, Any] | None:
    if rules.phone is None:
        return {} if column.text_kind == "phone" else None
    if rules.phone is False:
        return None
    if rules.phone is True:
        return {}
    return rules.phone.model_dump(exclude_none=True)


def resolved_column(rules: ColumnRules, column: Column, timezone: str) -> dict[str, Any]:
    base = column.sql_type.split("(")[0]
    out: dict[str, Any] = {
        "sources": list(rules.sources),
        "sql_type": column.sql_type,
        "required": column.required if rules.required is None else rules.required,
        "trim": rules.trim,
        "empty_as_null": rules.empty_as_null,
        "values": {k.strip().lower(): val for k, val in rules.values.items()} if rules.values else None,
        "default": rules.default,
        "case": rules.case,
        "email": rules.email if rules.email is not None else column.text_kind == "email",
        "phone": _phone(rules, column),
        "formats": [],
        "timezone": rules.timezone or timezone,
        "scale": None,
        "multiplier": rules.multiplier,
        "boolean": None,
    }
    if base == "date":
        out["formats"] = _formats(rules.date_formats, v.DEFAULT_DATE_FORMATS, v.DATE_FORMATS)
    elif base == "timestamptz":
        out["formats"] = _formats(rules.timestamp_formats, v.DEFAULT_TIMESTAMP_FORMATS, v.TIMESTAMP_FORMATS)
    elif base == "integer":
        out["regex"], out["max_length"] = v.INTEGER, v.MAX_NUMBER_LENGTH
    elif base == "numeric":
        out["regex"], out["max_length"] = v.NUMBER, v.MAX_NUMBER_LENGTH
        precision, _, declared_scale = column.sql_type.partition("(")[2].rstrip(")").partition(",")
        out["scale"] = rules.scale if rules.scale is not None else int(declared_scale or 0)
        out["max_abs"] = 10 ** (int(precision) - int(declared_scale or 0))
    elif base == "boolean":
        spellings = rules.boolean
        out["boolean"] = {
            "true": [s.strip().lower() for s in spellings.true] if spellings else list(v.DEFAULT_TRUE),
            "false": [s.strip().lower() for s in spellings.false] if spellings else list(v.DEFAULT_FALSE),
        }
    return out


def resolved_table(name: str, spec: SourceTable, timezone: str) -> dict[str, Any]:
    ours = BY_NAME[spec.entity]
    return {
        "name": name,
        "mode": spec.mode,
        "duplicates": {
            **spec.duplicates.model_dump(),
            "formats": _formats(None, v.DEFAULT_TIMESTAMP_FORMATS, v.TIMESTAMP_FORMATS),
            "timezone": timezone,
            "regex": v.NUMBER,
            "max_length": v.MAX_NUMBER_LENGTH,
        },
        "columns": {col: resolved_column(rules, ours.column(col), timezone) for col, rules in spec.columns.items()},
    }


def resolved_tables(mapping: ClientMapping) -> dict[str, Any]:
    """entity -> {"tables": [resolved table, ...]} for the entities the client feeds."""
    return {
        entity: {
            "tables": [resolved_table(t, mapping.tables[t], mapping.timezone) for t in tables],
            # a batch may soft-delete what it does not hold only if every table is a full snapshot
            "full_snapshot": mapping.full_snapshot(entity),
        }
        for entity, tables in mapping.entities.items()
    }


def mapping_json(mapping: ClientMapping) -> str:
    """:func:`resolved_tables` as JSON text, safe inside an Airflow template (the dbt task's vars
    are rendered by Jinja): a mapping that would read as a template is refused."""
    text = json.dumps(resolved_tables(mapping), ensure_ascii=False, separators=(",", ":"), sort_keys=True)
    for marker in ("{{", "{%", "{#"):
        if marker in text:
            raise ValueError(f"mapping of {mapping.client} holds {marker!r}, which Airflow would read as a template")
    return text
