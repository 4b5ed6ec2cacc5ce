"""Incremental extraction: which rows a table's run takes, and where the previous run stopped.

A table named in the config's ``[incremental]`` is read by its cursor column (an ``updated_at``
timestamp, or an id that only grows). The run first reads the cursor's high mark (its largest value
in the run's snapshot), then the rows whose cursor lies in [low mark, high mark], where the low mark
is the previous run's high mark, inclusive: a row updated while the previous run read its table has
a cursor at or past that mark, so it comes again (the pipeline's upserts make a row sent twice
harmless), and a row updated while this run reads is past this run's high mark, so the next run
takes it.

The marks are kept here, in a JSON state file on the client's machine (the upload credentials cannot
read the bucket), one entry per source, schema and table. A table is taken whole (a full snapshot)
when the file has no entry for it, when asked (``--full-refresh``), when its cursor column or the
column's type changed, or when no row had a cursor value yet; its high mark is recorded all the same,
so the next run is incremental. The file is replaced atomically after each table's manifest is
uploaded, so a run that stops half way leaves the marks of the tables it finished.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass
from typing import Any

from client_extractor.encoding import Column
from client_extractor.errors import OutputError, UsageError, warn

STATE_VERSION = 1
CURSOR_ENCODINGS = frozenset({"integer", "decimal", "float", "date", "timestamp", "timestamptz", "string"})
"""Encodings a cursor may have: values with an order that only grows as rows change."""


@dataclass(frozen=True)
class Mark:
    """Where a table's last uploaded run stopped."""

    cursor_column: str
    cursor_type: str
    high_mark: str | None
    run_id: str
    date: str


@dataclass(frozen=True)
class Window:
    """The rows of an incremental run: cursor in [low, high]; none when high is None."""

    cursor: Column
    low: str
    high: str | None


@dataclass(frozen=True)
class Plan:
    """How one table is taken: ``mode`` full or incremental, and why (for the summary)."""

    mode: str
    cursor: Column | None
    low: str | None
    reason: str


FULL = Plan("full", None, None, "full snapshot")


class StateFile:
    """The state file of one client and source: read once, rewritten after each table."""

    def __init__(self, path: str, client: str, source: str) -> None:
        self.path, self.client, self.source = path, client, source
        self.tables: dict[str, dict[str, Any]] = {}
        self._load()

    def _key(self, schema: str, table: str) -> str:
        return json.dumps([self.source, schema, table], ensure_ascii=False)

    def _load(self) -> None:
        try:
            with open(self.path, encoding="utf-8") as fh:
                data = json.load(fh)
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not valid JSON"
            warn(f"state file {self.path} cannot be read ({reason}): the incremental tables are taken whole "
                 "this run, and the file is written anew")
            return
        if not (isinstance(data, dict) and data.get("version") == STATE_VERSION and data.get("client") == self.client
                and isinstance(data.get("tables"), dict)):
            warn(f"state file {self.path} is not a state file of client {self.client} (version {STATE_VERSION}): "
                 "the incremental tables are taken whole this run, and the file is written anew")
            return
        self.tables = data["tables"]

    def get(self, schema: str, table: str) -> Mark | None:
        entry = self.tables.get(self._key(schema, table))
        try:
            return Mark(**entry) if isinstance(entry, dict) else None
        except TypeError:  # an entry of another shape: as if there were none
            return None

    def put(self, schema: str, table: str, mark: Mark) -> None:
        self.tables[self._key(schema, table)] = asdict(mark)
        self._save()

    def _save(self) -> None:
        folder = os.path.dirname(os.path.abspath(self.path))
        body = json.dumps({"version": STATE_VERSION, "client": self.client, "tables": self.tables},
                          ensure_ascii=False, indent=2, sort_keys=True) + "\n"
        try:
            os.makedirs(folder, mode=0o700, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".state-", dir=folder)  # mode 600
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as fh:
                    fh.write(body)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, self.path)
            except BaseException:
                if os.path.exists(tmp):
                    os.unlink(tmp)
                raise
        except OSError as exc:
            raise OutputError(f"cannot write the state file {self.path}: {exc.strerror}; the uploaded batch is "
                              "complete, but the next run takes its incremental tables whole") from None


def cursor_column(table: str, name: str, columns: list[Column]) -> Column:
    """The configured cursor column of a table, checked: it exists and its values have an order."""
    found = next((c for c in columns if c.name == name), None)
    if found is None:
        raise UsageError(f"config [incremental]: table {table} has no column {name!r} to use as its cursor")
    if found.encoding not in CURSOR_ENCODINGS:
        raise UsageError(f"config [incremental]: column {name!r} of table {table} has type {found.source_type} "
                         f"({found.encoding}); a cursor must be an integer, decimal, date, timestamp or text column")
    return found


def plan(table: str, cursor: Column, previous: Mark | None, full_refresh: bool) -> Plan:
    """Incremental from the previous high mark, or a full snapshot and the reason for it."""
    if full_refresh:
        return Plan("full", cursor, None, "full snapshot (--full-refresh)")
    if previous is None:
        return Plan("full", cursor, None, "full snapshot (no state yet)")
    if previous.cursor_column != cursor.name:
        return Plan("full", cursor, None, f"full snapshot (cursor changed from {previous.cursor_column})")
    if previous.cursor_type != cursor.source_type:
        return Plan("full", cursor, None, f"full snapshot (type of {cursor.name} changed)")
    if previous.high_mark is None:
        return Plan("full", cursor, None, f"full snapshot (no {cursor.name} value at the last run)")
    return Plan("incremental", cursor, previous.high_mark, f"incremental on {cursor.name}")
