"""An independent reading of what the ehrlogic mapping should produce, written in plain Python.

The end-to-end tests compare production with this, value by value: if dbt's SQL and this code
disagree about a cleaned value, one of them is wrong.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import psycopg

from clientflow.mapping import ClientMapping


def _text(value: Any) -> str | None:
    if value is None:
        return None
    stripped = str(value).strip(" ")
    return stripped or None


def _mapped(spec: Any, value: Any) -> str | None:
    text = _text(value)
    if text is None:
        return spec.default
    if spec.values:
        return spec.values.get(text.lower())
    return text


def _date(text: str | None) -> date | None:
    if text is None:
        return None
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
        return date.fromisoformat(text)
    if re.fullmatch(r"\d{1,2}/\d{1,2}/\d{4}", text):
        month, day, year = (int(p) for p in text.split("/"))
        return date(year, month, day)
    raise AssertionError("unexpected date format in the sample")


def expected_rows(mapping: ClientMapping, source_dsn: str) -> dict[str, dict[tuple[str, str], dict[str, Any]]]:
    """entity -> (client_id, key) -> our columns, computed from the client's source database."""
    zone = ZoneInfo(mapping.timezone)
    casts = {
        "date_of_birth": _date,
        "email": lambda v: v.lower() if v else None,
        "phone": lambda v: re.sub(r"[^0-9+]", "", v) or None if v else None,
        "created_at": lambda v: v,
        "starts_at": lambda v: v,
        "duration_minutes": lambda v: int(v) if v is not None else None,
        "fee": lambda v: Decimal(v).quantize(Decimal("0.01")) if v is not None else None,
        "active": lambda v: {"true": True, "false": False}.get(v) if v else None,
    }
    out: dict[str, dict[tuple[str, str], dict[str, Any]]] = {}
    with psycopg.connect(source_dsn) as conn:
        for entity, spec in mapping.entities.items():
            key = {"providers": "provider_id", "patients": "patient_id", "appointments": "appointment_id"}[entity]
            cur = conn.execute(f'select * from "{spec.source_table}"')
            names = [d.name for d in cur.description or []]
            rows: dict[tuple[str, str], dict[str, Any]] = {}
            for record in cur:
                source = dict(zip(names, record, strict=True))
                ours: dict[str, Any] = {"client_id": mapping.client}
                for column, col_spec in spec.columns.items():
                    raw = source[col_spec.source]
                    if isinstance(raw, datetime):
                        ours[column] = (raw if raw.tzinfo else raw.replace(tzinfo=zone)).astimezone(UTC)
                        continue
                    if isinstance(raw, Decimal):
                        raw = format(raw, "f")
                    value = _mapped(col_spec, raw)
                    ours[column] = casts[column](value) if column in casts else value
                rows[(mapping.client, ours[key])] = ours
            out[entity] = rows
    return out
