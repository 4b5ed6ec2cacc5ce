"""The contract between a client's machine and us, written once.

What crosses from the client's extractor to our pipeline: the bucket layout, the identifier rules
(client name, run id, job id), the file names and the manifest's fields. The extractor imports
this module (PyInstaller packs it into the binary); the pipeline imports it too
(``clientflow.arrival``), and validates manifests with a pydantic model built on these patterns,
whose JSON Schema is published as ``docs/manifest.schema.json``.

Standard library only: the extractor's binary must stay small and depend on nothing of ours.
"""

from __future__ import annotations

import hashlib
import re
import urllib.parse
from dataclasses import dataclass
from datetime import date
from typing import Final

FORMAT_VERSION = 1
"""The manifest format this extractor writes and this pipeline reads."""

CLIENT_NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
"""A client's name: lowercase, starts with a letter, at most 40 characters (it names a schema)."""
CLIENT_NAME_RULE = "a lowercase letter, then up to 39 lowercase letters, digits or '_'"

RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
"""An extractor run id: safe in an S3 key, a file name and an Airflow param (e.g. 20261122T010203Z-ab12cd)."""
RUN_ID_RULE = "1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"

JOB_ID = re.compile(r"^[0-9a-f]{32}$")
SHA256 = re.compile(r"^[0-9a-f]{64}$")
DATE_TEXT = re.compile(r"^\d{4}-\d{2}-\d{2}$")

DATA_FILE: Final = "data.json"
MANIFEST_FILE: Final = "manifest.json"

ENCODINGS = (
    "integer", "decimal", "float", "string", "bytes_base64", "boolean", "date", "time",
    "timestamp", "timestamptz", "interval", "uuid", "json", "array", "enum",
)
"""How a column's values are written in data.json (``array<E>`` names its element encoding E)."""

MANIFEST_FIELDS = (
    "format_version", "job_id", "client", "table", "schema", "date", "run_id", "extracted_at",
    "extractor_version", "source_dialect", "extraction", "row_count", "byte_size", "sha256", "data_file",
    "columns",
)
"""The manifest's top-level keys, in the order the extractor writes them."""
EXTRACTION_FIELDS = ("mode", "cursor_column", "low_mark", "high_mark")
"""The keys of the manifest's ``extraction``: how the rows were chosen.

``mode`` is ``full`` (every row of the table: a full snapshot) or ``incremental`` (only the rows
whose ``cursor_column`` lies in [``low_mark``, ``high_mark``]). A full snapshot of a table that is
configured incremental carries its cursor column and high mark too (where the next run starts);
the marks are the cursor's values as the source database writes them as text."""
EXTRACTION_MODES = ("full", "incremental")
COLUMN_FIELDS = ("name", "source_type", "encoding", "nullable", "primary_key")
"""The keys of each entry of the manifest's ``columns``."""

_JOB_ID_PREFIX = b"clientflow-job-v1\0"
_KEY = re.compile(
    r"^(?P<prefix>(?:.*/)?)client=(?P<client>[^/]+)/table=(?P<table>[^/]+)/"
    r"date=(?P<date>\d{8})/run_id=(?P<run_id>[^/]+)/(?P<file>data\.json|manifest\.json)$"
)


def date_segment(day: date) -> str:
    return day.strftime("%Y%m%d")


def table_prefix(client: str, table: str, day: date, prefix: str = "") -> str:
    """``[prefix]client=X/table=T/date=YYYYMMDD/``: every run of one table on one date."""
    return f"{prefix}client={client}/table={urllib.parse.quote(table, safe='')}/date={date_segment(day)}/"


def run_prefix(client: str, table: str, day: date, run_id: str, prefix: str = "") -> str:
    """``[prefix]client=X/table=T/date=YYYYMMDD/run_id=R/``: the folder of one table's two files."""
    return f"{table_prefix(client, table, day, prefix)}run_id={run_id}/"


def batch_key(client: str, table: str, day: date, run_id: str, file: str, prefix: str = "") -> str:
    return run_prefix(client, table, day, run_id, prefix) + file


@dataclass(frozen=True)
class ParsedKey:
    """What a bucket key says of itself."""

    prefix: str
    client: str
    table: str
    day: date
    run_id: str
    file: str


def parse_key(key: str) -> ParsedKey | None:
    """The parts of a key in our layout, or None for any other key (wrong shape, bad client name,
    bad run id, impossible date)."""
    match = _KEY.match(key)
    if not match or not CLIENT_NAME.fullmatch(match["client"]) or not RUN_ID.fullmatch(match["run_id"]):
        return None
    d = match["date"]
    try:
        day = date(int(d[:4]), int(d[4:6]), int(d[6:]))
    except ValueError:
        return None
    return ParsedKey(match["prefix"], match["client"], urllib.parse.unquote(match["table"]), day,
                     match["run_id"], match["file"])


def job_id(client: str, table: str, day: date, data_sha256: str, mode: str = "full") -> str:
    """The id of one table's extraction: the same content on the same date, taken the same way
    (a full snapshot or incremental), gives the same id. A full snapshot and an incremental batch
    with the same rows differ: only the first may soft-delete what it does not hold."""
    text = f"{client}\0{table}\0{day.isoformat()}\0{data_sha256}" + ("" if mode == "full" else f"\0{mode}")
    material = _JOB_ID_PREFIX + text.encode()
    return hashlib.sha256(material).hexdigest()[:32]
