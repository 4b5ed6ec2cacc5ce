"""Errors that name the client, table, run and file, never a row value or a secret.

``PermanentError`` means retrying cannot help (bad checksum, drift, invalid JSON): the task fails
at once. ``TransientError`` means a retry may succeed (a dropped connection, an S3 5xx).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Where:
    """What an error is about. Every field is an identifier, never data."""

    client: str | None = None
    table: str | None = None
    batch_date: str | None = None
    run_id: str | None = None
    file: str | None = None
    column: str | None = None

    def describe(self) -> str:
        parts = [
            f"{name}={value}"
            for name, value in (
                ("client", self.client),
                ("table", self.table),
                ("date", self.batch_date),
                ("run", self.run_id),
                ("file", self.file),
                ("column", self.column),
            )
            if value is not None
        ]
        return ", ".join(parts)


@dataclass
class PipelineError(Exception):
    """Base error: what went wrong, where, and what was kept."""

    message: str
    where: Where = field(default_factory=Where)
    kept: str = "nothing was committed for this batch; earlier batches are untouched"

    def __str__(self) -> str:
        where = self.where.describe()
        prefix = f"[{where}] " if where else ""
        return f"{prefix}{self.message} ({self.kept})"


class PermanentError(PipelineError):
    """Retrying will not help; fail the batch now."""


class TransientError(PipelineError):
    """A retry with backoff may succeed."""


class IntegrityError(PermanentError):
    """The bytes do not match their manifest."""


class BadInputError(PermanentError):
    """A file or manifest that is not what the contract says."""


class DriftError(PermanentError):
    """The client's schema changed in a way the policy does not allow."""


class ValidationFailed(PermanentError):
    """A validation gate refused the batch before promotion."""


class NothingToProcess(Exception):
    """The run has no batch to process (every message that started it was dropped); not an error."""


class DuplicateBatch(Exception):
    """The batch was already promoted; not an error."""

    def __init__(self, ingestion_id: str) -> None:
        super().__init__(f"batch {ingestion_id} was already promoted")
        self.ingestion_id = ingestion_id
