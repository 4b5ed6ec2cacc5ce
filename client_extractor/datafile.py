"""The data file and the progress line.

data.json is "[", the rows joined by ",\n", then "]": DataFileWriter writes it and feeds sha256 in the
same pass, so the manifest's byte_size and sha256 describe exactly the bytes written. Progress shows
one live line per table on a terminal (stderr): counts and sizes only, never a value.
"""

from __future__ import annotations

import hashlib
import sys
import time
from typing import BinaryIO


class DataFileWriter:
    def __init__(self, fh: BinaryIO, progress: Progress) -> None:
        self._fh = fh
        self._sha = hashlib.sha256()
        self._progress = progress
        self.rows = 0
        self.size = 0
        self._emit(b"[")

    def _emit(self, chunk: bytes) -> None:
        self._sha.update(chunk)
        self._fh.write(chunk)
        self.size += len(chunk)

    def add_lines(self, page: bytes, count: int) -> None:
        """page: `count` rows, each a JSON object terminated by one b"\\n" and holding no other raw newline."""
        if not count:
            return
        self._emit(b"\n" if self.rows == 0 else b",\n")
        self._emit(page[:-1].replace(b"\n", b",\n"))
        self.rows += count
        self._progress.update(self.rows, self.size)

    def finish(self) -> str:
        self._emit(b"\n]\n" if self.rows else b"]\n")
        self._fh.flush()
        return self._sha.hexdigest()


class Progress:
    """One live line per table on a terminal (stderr); silent otherwise."""

    def __init__(self, label: str, enabled: bool) -> None:
        self.label = label
        self.enabled = enabled
        self.started = time.monotonic()
        self._last = 0.0

    def update(self, rows: int, size: int, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._last < 0.2:
            return
        self._last = now
        elapsed = max(now - self.started, 1e-6)
        sys.stderr.write(f"\r{self.label}: {rows:,} rows, {human_bytes(size)}, {rows / elapsed:,.0f} rows/s\x1b[K")
        sys.stderr.flush()

    def done(self, rows: int, size: int, note: str = "") -> None:
        if not self.enabled:
            return
        self.update(rows, size, force=True)
        sys.stderr.write(f"{note}\n")
        sys.stderr.flush()


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1000
    return f"{n:,.1f} TB"
