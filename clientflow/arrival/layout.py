"""The bucket layout: ``client=X/table=Y/date=YYYYMMDD/run_id=R/{data,manifest}.json``.

JSON files in the bucket are never deleted: they are the replayable history every backfill reads.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date
from urllib.parse import quote, unquote

DATA_FILE = "data.json"
MANIFEST_FILE = "manifest.json"

_KEY = re.compile(
    r"^(?P<prefix>(?:.*/)?)client=(?P<client>[^/]+)/table=(?P<table>[^/]+)/"
    r"date=(?P<date>\d{8})/run_id=(?P<run_id>[^/]+)/(?P<file>data\.json|manifest\.json)$"
)


def date_segment(day: date) -> str:
    return day.strftime("%Y%m%d")


def table_prefix(client: str, table: str, day: date, prefix: str = "") -> str:
    return f"{prefix}client={client}/table={quote(table, safe='')}/date={date_segment(day)}/"


def batch_key(client: str, table: str, day: date, run_id: str, file: str, prefix: str = "") -> str:
    return f"{table_prefix(client, table, day, prefix)}run_id={run_id}/{file}"


@dataclass(frozen=True)
class ParsedKey:
    client: str
    table: str
    day: date
    run_id: str
    file: str


def parse_key(key: str) -> ParsedKey | None:
    match = _KEY.match(key)
    if not match:
        return None
    d = match["date"]
    return ParsedKey(
        client=match["client"],
        table=unquote(match["table"]),
        day=date(int(d[:4]), int(d[4:6]), int(d[6:])),
        run_id=match["run_id"],
        file=match["file"],
    )
