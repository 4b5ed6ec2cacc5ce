"""What travels between the stages of one batch: frozen records of identifiers and counts.

A batch is one extractor run (``run_id``) of one client for one date. The records hold names,
keys, tokens and counts, never a row value. Tasks exchange them as XComs: :meth:`Batch.to_xcom`
and :meth:`Batch.from_xcom` convert at the Airflow edge (``clientflow.airflow_edge``) and nowhere
else.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from typing import Any

from clientflow.errors import Where


@dataclass(frozen=True)
class ClientLock:
    """A held client lock: its fencing token, and the Redis value that proves who holds it."""

    client: str
    token: int
    holder: str


@dataclass(frozen=True)
class BatchFile:
    """The S3 keys of one table's data and manifest in a batch."""

    table: str
    data_key: str
    manifest_key: str


@dataclass(frozen=True)
class LoadedFile:
    """One table of the batch after its raw load: verified against its manifest."""

    table: str
    job_id: str
    data_key: str
    rows: int
    byte_size: int
    sha256: str


@dataclass(frozen=True)
class Batch:
    """One batch as far as the pipeline has got with it.

    ``run_id`` is None until a complete run has been found; ``ingestion_id`` and ``lock`` are set
    by the raw load, ``loaded`` holds its per-table results.
    """

    client: str
    day: date
    run_id: str | None = None
    files: tuple[BatchFile, ...] = ()
    ingestion_id: str | None = None
    lock: ClientLock | None = None
    loaded: tuple[LoadedFile, ...] = field(default=())

    def where(self, table: str | None = None, file: str | None = None, column: str | None = None) -> Where:
        """What an error about this batch (or one of its tables) names."""
        return Where(client=self.client, table=table, batch_date=self.day.isoformat(),
                     run_id=self.run_id, file=file, column=column)

    def rows_of(self, table: str) -> int:
        """Rows the manifest of ``table`` declared (and the load verified)."""
        for loaded in self.loaded:
            if loaded.table == table:
                return loaded.rows
        raise KeyError(f"table {table!r} was not loaded in batch {self.ingestion_id}")

    def require_lock(self) -> ClientLock:
        if self.lock is None:
            raise ValueError(f"batch {self.ingestion_id} of client {self.client} holds no lock")
        return self.lock

    def require_ingestion_id(self) -> str:
        if self.ingestion_id is None:
            raise ValueError(f"batch of client {self.client} on {self.day} was not loaded yet")
        return self.ingestion_id

    def to_xcom(self) -> dict[str, Any]:
        """A JSON-able dict (identifiers and counts only)."""
        return {
            "client": self.client,
            "date": self.day.isoformat(),
            "run_id": self.run_id,
            "files": [vars(f) for f in self.files],
            "ingestion_id": self.ingestion_id,
            "lock": vars(self.lock) if self.lock else None,
            "loaded": [vars(f) for f in self.loaded],
        }

    @classmethod
    def from_xcom(cls, value: dict[str, Any]) -> Batch:
        lock = value.get("lock")
        return cls(
            client=value["client"],
            day=date.fromisoformat(value["date"]),
            run_id=value.get("run_id") or None,
            files=tuple(BatchFile(**f) for f in value.get("files") or ()),
            ingestion_id=value.get("ingestion_id"),
            lock=ClientLock(**lock) if lock else None,
            loaded=tuple(LoadedFile(**f) for f in value.get("loaded") or ()),
        )
