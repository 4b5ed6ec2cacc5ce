"""What every source reader is, and the helpers the Python-side readers share.

A Reader connects once (one read-only snapshot for the whole run), lists and checks tables, describes
a table's columns, reads a cursor column's high mark (``client_extractor.incremental``), and streams
its rows (all of them, or those of an incremental window) as pages of JSON lines: ``(page, count)``, where page holds
``count`` rows, each one JSON object followed by one newline. Messages name tables and columns, never
a value; ``Reader.scrub`` removes the password from the driver text that connection errors quote.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from json.encoder import encode_basestring  # type: ignore[attr-defined]  # C-accelerated, no ASCII escaping
from typing import Any

from client_extractor.encoding import Column
from client_extractor.errors import ExtractError
from client_extractor.incremental import Window
from client_extractor.settings import SourceUrl

PAGE_ROWS = 2000  # rows per page: bounds memory, amortises per-page overhead


class Reader:
    dialect = ""

    def __init__(self, src: SourceUrl, password: str | None) -> None:
        self.src = src
        self.password = password

    def scrub(self, text: str) -> str:
        if self.password:
            text = text.replace(self.password, "***")
        if self.src.url_password:
            text = text.replace(self.src.url_password, "***")
        return text

    def connect(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def list_tables(self, schema: str) -> list[str]:
        raise NotImplementedError

    def existing(self, schema: str, names: tuple[str, ...]) -> set[str]:
        raise NotImplementedError

    def columns(self, schema: str, table: str) -> list[Column]:
        raise NotImplementedError

    def high_mark(self, schema: str, table: str, cursor: Column) -> str | None:
        """The cursor column's largest value in the run's snapshot, as the source writes it as text
        (None when no row has one). Read before the rows, in the same snapshot."""
        raise NotImplementedError

    def stream(self, schema: str, table: str, columns: list[Column],
               window: Window | None = None) -> Iterator[tuple[bytes, int]]:
        """Every row, or with a window only those whose cursor lies in [window.low, window.high]."""
        raise NotImplementedError


def pages_from_rows(columns: list[Column], fetch: Callable[[int], list[Any]]) -> Iterator[tuple[bytes, int]]:
    """Python-side row encoding (MySQL, SQLite): every cell through its column's encoder."""
    keys = [encode_basestring(c.name) + ":" for c in columns]
    encoders = [c.encode for c in columns]
    triples = list(zip(keys, encoders, strict=False))
    while True:
        batch = fetch(PAGE_ROWS)
        if not batch:
            return
        lines = [
            "{" + ",".join([k + ("null" if v is None else e(v)) for (k, e), v in zip(triples, row, strict=False)]) + "}"  # type: ignore[misc]
            for row in batch
        ]
        lines.append("")
        yield "\n".join(lines).encode("utf-8"), len(batch)


def guard_encoders(columns: list[Column]) -> list[Column]:
    """Wrap encoders so a value that cannot be encoded names its column, never its content."""
    out = []
    for c in columns:
        enc = c.encode
        assert enc is not None

        def guarded(v: Any, _enc: Callable[[Any], str] = enc, _col: str = c.name, _kind: str = c.encoding) -> str:
            try:
                return _enc(v)
            except (ValueError, TypeError, UnicodeError):
                raise ExtractError(f"column {_col!r}: a value could not be encoded as {_kind}") from None

        out.append(Column(c.name, c.source_type, c.encoding, c.nullable, c.primary_key, c.select_sql, guarded))
    return out


def as_text(v: Any) -> str:
    """A catalog value (name, type, flag) as str: drivers hand some of them over as bytes."""
    return v.decode("utf-8") if isinstance(v, (bytes, bytearray)) else str(v)
