"""manifest.json: what one table's data.json holds and how each column is encoded.

The keys, and their order, are the contract's: the manifest is built from contract.MANIFEST_FIELDS
and each column's entry from contract.COLUMN_FIELDS (``Column.manifest_entry``), so the extractor
cannot write a key the pipeline does not expect, leave one out or change their order. Only names,
types, counts, sizes and hashes go in it, never a row value.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from client_extractor import VERSION
from client_extractor.contract import DATA_FILE, EXTRACTION_FIELDS, FORMAT_VERSION, MANIFEST_FIELDS, job_id
from client_extractor.encoding import Column
from client_extractor.errors import ExtractorError
from client_extractor.settings import Settings


def build_manifest(settings: Settings, dialect: str, table: str, columns: list[Column], extracted_at: dt.datetime,
                   rows: int, size: int, sha: str, extraction: dict[str, Any]) -> bytes:
    """``extraction`` holds contract.EXTRACTION_FIELDS: the mode, cursor column and marks."""
    if extraction.keys() != set(EXTRACTION_FIELDS):
        raise ExtractorError("the manifest's extraction fields differ from contract.EXTRACTION_FIELDS; please report this")
    values: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "job_id": job_id(settings.client, table, settings.date, sha, extraction["mode"]),
        "client": settings.client,
        "table": table,
        "schema": settings.schema,
        "date": settings.date.isoformat(),
        "run_id": settings.run_id,
        "extracted_at": extracted_at.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "extractor_version": VERSION,
        "source_dialect": dialect,
        "extraction": {field: extraction[field] for field in EXTRACTION_FIELDS},
        "row_count": rows,
        "byte_size": size,
        "sha256": sha,
        "data_file": DATA_FILE,
        "columns": [c.manifest_entry() for c in columns],
    }
    # The contract decides the keys and their order; a key missing above, or one it does not list, is a
    # bug of this module (exit 70), never a manifest the pipeline would refuse.
    if values.keys() != set(MANIFEST_FIELDS):
        raise ExtractorError("the manifest's fields differ from contract.MANIFEST_FIELDS; please report this")
    manifest = {field: values[field] for field in MANIFEST_FIELDS}
    return (json.dumps(manifest, ensure_ascii=False, indent=2) + "\n").encode("utf-8")
