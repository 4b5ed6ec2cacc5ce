"""Write hand-made batches to the bucket, in the extractor's layout and manifest format.

For tests that need a specific, often broken, file (the real extractor is exercised by the
end-to-end tests and its own suite).
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, date, datetime
from typing import Any

from client_extractor.contract import DATA_FILE, MANIFEST_FILE, batch_key, job_id


def manifest_for(client: str, table: str, day: date, run_id: str, data: bytes, rows: int,
                 columns: list[dict[str, Any]], cursor: str | None = None) -> dict[str, Any]:
    """A valid manifest of ``data``: a full snapshot, or with ``cursor`` an incremental file."""
    sha = hashlib.sha256(data).hexdigest()
    mode = "full" if cursor is None else "incremental"
    marks = (None, None) if cursor is None else ("0", "1")
    return {
        "format_version": 1, "job_id": job_id(client, table, day, sha, mode), "client": client,
        "table": table, "schema": "public", "date": day.isoformat(), "run_id": run_id,
        "extracted_at": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        "extractor_version": "test", "source_dialect": "postgresql",
        "extraction": {"mode": mode, "cursor_column": cursor, "low_mark": marks[0], "high_mark": marks[1]},
        "row_count": rows,
        "byte_size": len(data), "sha256": sha, "data_file": "data.json", "columns": columns,
    }


def put_table(s3: Any, bucket: str, client: str, table: str, day: date, run_id: str,
              data: bytes, manifest: dict[str, Any] | None) -> None:
    s3.put_object(Bucket=bucket, Key=batch_key(client, table, day, run_id, DATA_FILE), Body=data)
    if manifest is not None:
        s3.put_object(Bucket=bucket, Key=batch_key(client, table, day, run_id, MANIFEST_FILE),
                      Body=json.dumps(manifest).encode())


def columns_of(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"name": n, "source_type": "text", "encoding": "string", "nullable": True,
             "primary_key": False} for n in rows[0]]
