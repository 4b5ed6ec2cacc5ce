"""Validate ``data.json`` as it streams and turn its rows into COPY text lines.

How it keeps up with ``psql \\copy`` (docs/loader.md has the figures):

- The extractor writes one row a line, so the stream is cut into ~1 MiB slices at the last
  ``},\\n``; msgspec validates each slice (strict JSON, exactly the manifest's keys) and hands
  back every value's JSON text without building Python strings.
- In a slice without a backslash, brace or bracket, a value's JSON text is its COPY text once
  the string quotes are dropped (``null`` is the COPY's NULL marker), so a slice becomes COPY
  data in a few C-level joins; other rows are converted value by value.
- Any other layout, and every malformed file, goes through :class:`_Scanner`, which finds each
  row's end itself and names the byte where the file goes wrong.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterator
from itertools import chain
from operator import itemgetter
from typing import IO, Any

import msgspec

from clientflow.errors import BadInputError, Where

MAX_DEPTH = 64
"""Deepest nesting allowed inside one value (``[[1]]`` is 2)."""
MAX_ROW_BYTES = 64 << 20
"""Largest row accepted; a bigger one is refused rather than held in memory."""

_CHUNK = 1 << 20
_FAST_LIMIT = MAX_ROW_BYTES  # bytes without a "},\n" before the scanner takes over
_ROW_END = b"},\n"
_BATCH_ROWS = 2000
_WHITESPACE = re.compile(rb"[ \t\n\r]*")
_STRUCTURAL = re.compile(rb'["\[\]{}]')
_BYTE_IN_MESSAGE = re.compile(r"\(byte (\d+)\)")
_astuple = msgspec.structs.astuple
_NULL_STRING = b'"null"'
_DECODE_ERRORS = (msgspec.DecodeError, RecursionError, UnicodeDecodeError, ValueError)


def _key_bytes(name: str) -> int:
    """The fewest bytes a JSON text of the key ``name`` takes: its UTF-8 and quotes, and a
    backslash before each quote or backslash (control characters are refused in names; an escape
    is never shorter than the UTF-8 it stands for)."""
    return 2 + len(name.encode("utf-8")) + name.count('"') + name.count("\\")


def _as_is(text: str) -> str:
    return text


def _duplicate_key(text: bytes) -> tuple[int, str] | None:
    """(index, key) of the first row of the JSON array ``text`` holding a top-level key twice.
    ``text`` is valid JSON nesting no deeper than MAX_DEPTH (msgspec and RowFormat checked it);
    numbers are left as text (a 5,000-digit integer is fine in data.json, not in ``int``)."""
    rows = json.loads(text, object_pairs_hook=list, parse_int=_as_is, parse_float=_as_is, parse_constant=_as_is)
    for index, pairs in enumerate(rows):
        seen: set[str] = set()
        for key, _value in pairs:
            if key in seen:
                return index, key
            seen.add(key)
    return None


class HashingReader:
    """A file-like wrapper that hashes and counts every byte read through it."""

    def __init__(self, raw: IO[bytes]) -> None:
        self._raw = raw
        self.sha256 = hashlib.sha256()
        self.size = 0

    def read(self, n: int = _CHUNK) -> bytes:
        chunk = self._raw.read(n if n > 0 else _CHUNK)
        self.sha256.update(chunk)
        self.size += len(chunk)
        return chunk


def _copy_escape(value: bytes) -> bytes:
    """COPY text format: backslash, tab, newline and carriage return are written as escapes."""
    if b"\\" in value:
        value = value.replace(b"\\", b"\\\\")
    if b"\t" in value or b"\n" in value or b"\r" in value:
        value = value.replace(b"\t", b"\\t").replace(b"\n", b"\\n").replace(b"\r", b"\\r")
    return value


def _depth(text: bytes) -> int:
    """How deeply a JSON value nests (strings are skipped, so brackets inside them don't count)."""
    depth = deepest = 0
    pos = 0
    while match := _STRUCTURAL.search(text, pos):
        char = text[match.start()]
        if char == 0x22:  # '"'
            pos = _string_end(text, match.start() + 1)
            if pos < 0:
                break
            continue
        depth += 1 if char in b"[{" else -1
        deepest = max(deepest, depth)
        pos = match.end()
    return deepest


def _string_end(buf: bytes, pos: int) -> int:
    """Index just past the closing quote of the string whose content starts at ``pos``; -1 if none yet."""
    while True:
        quote = buf.find(b'"', pos)
        if quote < 0:
            return -1
        back = quote - 1
        while buf[back] == 0x5C:  # backslash: the opening quote stops this loop
            back -= 1
        if (quote - 1 - back) % 2 == 0:
            return quote + 1
        pos = quote + 1


class RowFormat:
    """Turns decoded rows into COPY text lines: ``source_row``, then the manifest's columns."""

    def __init__(self, names: list[str], jsonb: list[bool], where: Where) -> None:
        self.names = names
        self.jsonb = jsonb
        self.any_jsonb = any(jsonb)
        self.where = where
        self.keys = msgspec.json.Decoder(dict[str, msgspec.Raw])
        self.known = set(names)
        if any(char in name for name in names for char in '"\\'):
            # msgspec cannot match such keys to struct fields: decode plain dicts, check keys here
            self.many = msgspec.json.Decoder(list[dict[str, msgspec.Raw]])
            self.one = self.keys
            pick = itemgetter(*names)
            self.values: Callable[[Any], tuple[Any, ...]] = (
                pick if len(names) > 1 else lambda row: (pick(row),))
            self.checked = False
        else:
            fields = [(f"c{i}", msgspec.Raw) for i in range(len(names))]
            rename = {f"c{i}": name for i, name in enumerate(names)}
            struct = msgspec.defstruct("RawRow", fields, rename=rename, forbid_unknown_fields=True,
                                       gc=False)
            self.many = msgspec.json.Decoder(list[struct])  # type: ignore[valid-type]
            self.one = msgspec.json.Decoder(struct)
            self.values = _astuple
            self.checked = True  # msgspec refuses unknown and missing keys itself
        # The bytes of one row written compactly, less its values: braces, keys, colons, commas.
        self.frame = 2 + sum(_key_bytes(n) + 1 for n in names) + len(names) - 1

    def decode(self, document: Any) -> list[Any]:
        """All rows of a slice; raises a msgspec error if any is not an object with the right keys."""
        rows: list[Any] = self.many.decode(document)
        if not self.checked and any(len(row) != len(self.known) or row.keys() != self.known for row in rows):
            raise msgspec.ValidationError("keys differ from the manifest's columns")
        return rows

    def refuse_repeated_keys(self, text: bytes, rows: list[Any], first: int,
                             sizes: tuple[int, int] | None = None) -> None:
        """Refuse a row of ``text`` (the JSON array of ``rows``, numbered from ``first``, or one row
        object) that names a key twice: msgspec keeps the last value, and which one is the
        column's would be a guess.

        Told by counting bytes (``sizes``: the bytes of the rows' values, and the newlines among
        them; :meth:`lines_sized` has them): ``text`` minus the compact rows it decoded into leaves
        its whitespace and, for each key named twice, at least six bytes more. Newlines outside
        values are whitespace, and the extractor writes no other: if what is left is exactly the
        newlines outside values, no key is named twice. Any other layout is checked key by key
        with Python's json module, about ten times slower (docs/loader.md)."""
        if sizes is None:
            sizes = self._sizes(list(map(b"\t".join, map(self.values, rows))), plain=False)
        framing = 2 + max(len(rows) - 1, 0) if text[:1] == b"[" else 0  # brackets and commas
        spare = len(text) - framing - len(rows) * self.frame - sizes[0]
        if spare == text.count(b"\n") - sizes[1]:
            return
        found = _duplicate_key(text if text[:1] == b"[" else b"".join((b"[", text, b"]")))
        if found is not None:
            raise BadInputError(f"row {first + found[0]} of data.json names this column twice: which of its "
                                "values is the column's cannot be told", self._at(found[1]))

    def _sizes(self, joined: list[bytes], *, plain: bool) -> tuple[int, int]:
        """The bytes of the values in ``joined`` (each row's values' JSON text joined by tabs) and
        how many of them are newlines: only a nested value's whitespace can be one, so none if
        the rows are ``plain`` (no object or array)."""
        size = sum(map(len, joined)) - len(joined) * (len(self.names) - 1)
        return size, 0 if plain else sum(line.count(b"\n") for line in joined)

    def lines(self, rows: list[Any], first: int) -> bytes:
        """COPY text lines for ``rows``, numbered from ``first`` (the COPY reads ``null`` as NULL)."""
        return self.lines_sized(rows, first)[0]

    def lines_sized(self, rows: list[Any], first: int) -> tuple[bytes, tuple[int, int]]:
        """:meth:`lines`, and the sizes of the rows' values that :meth:`refuse_repeated_keys` needs.

        A batch without a backslash, brace or bracket holds only numbers, literals, nulls and
        strings without escapes: their JSON text joined by tabs, less the quotes, is exactly the
        COPY text, unless a string is "null" itself. Otherwise the rows that need it are redone
        value by value.
        """
        joined = list(map(b"\t".join, map(self.values, rows)))
        data = self._join(joined, first)
        nested = b"{" in data or b"[" in data
        sizes = self._sizes(joined, plain=not nested)
        if not (self.any_jsonb or b"\\" in data or nested or _NULL_STRING in data):
            return data.translate(None, b'"'), sizes
        for i, line in enumerate(joined):
            if self.any_jsonb or b"\\" in line or b"{" in line or b"[" in line or _NULL_STRING in line:
                joined[i] = self._fix(self.values(rows[i]), first + i)
            else:
                joined[i] = line.translate(None, b'"')
        return self._join(joined, first), sizes

    @staticmethod
    def _join(joined: list[bytes], first: int) -> bytes:
        if not joined:
            return b""
        starts = list(map(b"\n%d\t".__mod__, range(first, first + len(joined))))
        starts[0] = starts[0][1:]
        return b"".join(chain(chain.from_iterable(zip(starts, joined, strict=True)), (b"\n",)))

    def _fix(self, cells: tuple[msgspec.Raw, ...], number: int) -> bytes:
        """One row, value by value: unescape strings, escape for COPY, check depth and NUL."""
        out = []
        for raw, jsonb, name in zip(cells, self.jsonb, self.names, strict=True):
            value = bytes(raw)
            head = value[:1]
            if value == b"null":
                out.append(value)  # NULL
                continue
            if head in (b"{", b"[") and value.count(b"[") + value.count(b"{") > MAX_DEPTH:
                if _depth(value) > MAX_DEPTH:
                    raise BadInputError(
                        f"row {number} of data.json nests deeper than {MAX_DEPTH} levels",
                        self._at(name),
                    )
            if jsonb or head in (b"{", b"["):
                out.append(_copy_escape(value))  # JSON text as received
            elif head == b'"':
                text = self._unescape(value, number, name) if b"\\" in value else value[1:-1]
                out.append(b"nul\\l" if text == b"null" else _copy_escape(text))  # "\\l" reads as "l"
            else:
                out.append(value)  # a number, true or false: its JSON text
        return b"\t".join(out)

    def _unescape(self, value: bytes, number: int, name: str) -> bytes:
        try:
            text = msgspec.json.decode(value, type=str)
            if "\x00" in text:
                raise BadInputError(
                    f"row {number} of data.json holds a NUL character (\\u0000), which PostgreSQL "
                    "text cannot store", self._at(name),
                )
            return text.encode("utf-8")
        except (msgspec.DecodeError, UnicodeError):
            raise BadInputError(
                f"row {number} of data.json holds a string that is not valid Unicode (a lone "
                "\\uD800-\\uDFFF escape or bytes that are not UTF-8)", self._at(name),
            ) from None

    def check(self, element: bytes, number: int, offset: int) -> Any:
        """Decode one row found by the scanner; errors say what is wrong and where."""
        try:
            row = self.one.decode(element)
            if self.checked or row.keys() == self.known:
                return row
        except msgspec.ValidationError:
            pass  # valid JSON so far, but not the manifest's keys (or invalid further on)
        except _DECODE_ERRORS as exc:
            raise self._invalid(exc, number, offset) from None
        try:
            keys = set(self.keys.decode(element))
        except _DECODE_ERRORS as exc:
            raise self._invalid(exc, number, offset) from None
        missing = [n for n in self.names if n not in keys]
        unexpected = len(keys - set(self.names))
        found = [f"missing {', '.join(missing[:5])}" + (" ..." if len(missing) > 5 else "")] if missing else []
        found += [f"{unexpected} key(s) not in the manifest"] if unexpected else []
        raise BadInputError(
            f"row {number} of data.json has keys that differ from the manifest's columns "
            f"({'; '.join(found)})",
            self.where,
        )

    def _invalid(self, exc: Exception, number: int, offset: int) -> BadInputError:
        if isinstance(exc, RecursionError):
            return BadInputError(f"row {number} of data.json nests deeper than {MAX_DEPTH} levels",
                                 self.where)
        found = _BYTE_IN_MESSAGE.search(str(exc)) if isinstance(exc, msgspec.DecodeError) else None
        at = f"at byte {offset + int(found.group(1))}" if found else f"in the row starting at byte {offset}"
        return BadInputError(f"data.json is not valid JSON {at} (row {number})", self.where)

    def _at(self, column: str) -> Where:
        w = self.where
        return Where(w.client, w.table, w.batch_date, w.run_id, w.file, column)


class RowStream:
    """Splits data.json into batches of decoded rows, validating every byte on the way."""

    def __init__(self, reader: HashingReader, rows: RowFormat, where: Where) -> None:
        self.reader = reader
        self.fmt = rows
        self.where = where
        self.count = 0

    def batches(self) -> Iterator[bytes]:
        """COPY lines, batch by batch, until the array's end; then the rest must be whitespace."""
        pending = self._open()
        first = True
        while True:
            chunk = self.reader.read(_CHUNK)
            if chunk:
                pending += chunk
                cut = pending.rfind(_ROW_END, max(0, len(pending) - len(chunk) - len(_ROW_END)))
                if cut <= 0:
                    if len(pending) > _FAST_LIMIT:
                        break
                    continue
                body = memoryview(pending)[0 if first else 1 : cut + 1]
                document = b"".join((b"[", body, b"]"))
            else:
                body = memoryview(pending)[0 if first else 1 :]
                document = b"".join((b"[", body))
            try:
                decoded = self.fmt.decode(document)
            except _DECODE_ERRORS:
                break
            if not chunk and not first and not decoded:
                break  # a comma before "]": let the scanner name the byte
            lines, sizes = self.fmt.lines_sized(decoded, self.count + 1)  # refuses deep nesting first
            self.fmt.refuse_repeated_keys(document, decoded, self.count + 1, sizes)
            yield lines
            self.count += len(decoded)
            if not chunk:
                return
            pending = pending[cut + 1 :]
            first = False
        yield from _Scanner(self, pending, self.reader.size - len(pending), first).batches()

    def _open(self) -> bytes:
        """Everything after the opening "["; refuse anything but a top-level array at once."""
        while True:
            head = self.reader.read(_CHUNK)
            if not head:
                raise BadInputError("data.json is empty; expected a JSON array of row objects",
                                    self.where)
            start = _WHITESPACE.match(head).end()  # type: ignore[union-attr]
            if start == len(head):
                continue
            if head.startswith(b"\xef\xbb\xbf", start):
                raise BadInputError("data.json starts with a byte-order mark; expected plain UTF-8",
                                    self.where)
            if head[start] != 0x5B:  # "["
                raise BadInputError("data.json is not a JSON array of row objects", self.where)
            return head[start + 1 :]


class _Scanner:
    """The careful path: finds each row's end itself, so any layout works and errors have a byte."""

    def __init__(self, parent: RowStream, buf: bytes, base: int, first: bool) -> None:
        self.parent = parent
        self.fmt = parent.fmt
        self.where = parent.where
        self.buf = buf
        self.base = base  # file offset of buf[0]
        self.pos = 0
        self.first = first  # nothing since "[": a row or "]" may follow; else "," or "]"

    def batches(self) -> Iterator[bytes]:
        rows: list[Any] = []
        expect_row = self.first
        while True:
            char = self._next()
            at = self.base + self.pos
            number = self.parent.count + len(rows) + 1
            if expect_row:
                if char == 0x7B:  # "{"
                    start = self.pos
                    element = self._element(number)
                    rows.append(self.fmt.check(element, number, self.base + start))
                    self.fmt.refuse_repeated_keys(element, rows[-1:], number)
                    expect_row = False
                elif char == 0x5D and self.first and not rows and not self.parent.count:  # "[]"
                    break
                elif char is None:
                    raise BadInputError(f"data.json ends at byte {at} before its closing ']'; the "
                                        "file is truncated", self.where)
                elif char == 0x5D:
                    raise BadInputError(f"data.json is not valid JSON at byte {at}: a ',' before "
                                        "']' (trailing comma)", self.where)
                else:
                    raise BadInputError(f"row {number} of data.json (byte {at}) is not a JSON "
                                        "object; expected a JSON array of row objects", self.where)
            elif char == 0x2C:  # ","
                self.pos += 1
                expect_row = True
                self.first = False
            elif char == 0x5D:  # "]"
                break
            elif char is None:
                raise BadInputError(f"data.json ends at byte {at} before its closing ']'; the file "
                                    "is truncated", self.where)
            else:
                raise BadInputError(f"data.json is not valid JSON at byte {at}: expected ',' or ']' "
                                    f"after row {number - 1}", self.where)
            if len(rows) >= _BATCH_ROWS:
                yield self._flush(rows)
        self.pos += 1
        if rows:
            yield self._flush(rows)
        if self._next() is not None:
            raise BadInputError(f"data.json has content after its top-level array (byte "
                                f"{self.base + self.pos})", self.where)

    def _flush(self, rows: list[Any]) -> bytes:
        lines = self.fmt.lines(rows, self.parent.count + 1)
        self.parent.count += len(rows)
        rows.clear()
        return lines

    def _more(self, keep: int) -> bool:
        """Read another chunk, dropping what is before ``keep``; False at the end of the file."""
        chunk = self.parent.reader.read(_CHUNK)
        if not chunk:
            return False
        self.buf = self.buf[keep:] + chunk
        self.base += keep
        self.pos -= keep
        return True

    def _next(self) -> int | None:
        """Skip whitespace; the next byte (not consumed), or None at the end of the file."""
        while True:
            self.pos = _WHITESPACE.match(self.buf, self.pos).end()  # type: ignore[union-attr]
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if not self._more(self.pos):
                return None

    def _check_size(self, number: int, size: int, start: int) -> None:
        if size > MAX_ROW_BYTES:
            raise BadInputError(f"row {number} of data.json is larger than {MAX_ROW_BYTES:,} bytes "
                                f"(it starts at byte {self.base + start})", self.where)

    def _element(self, number: int) -> bytes:
        """The bytes of the object starting at ``pos``, found by bracket depth outside strings."""
        start, pos, depth = self.pos, self.pos, 0
        while True:
            match = _STRUCTURAL.search(self.buf, pos)
            if match is None:
                pos = len(self.buf)
            else:
                char = self.buf[match.start()]
                if char == 0x22:
                    end = _string_end(self.buf, match.start() + 1)
                    if end >= 0:
                        pos = end
                        continue
                    pos = match.start()  # rescan this string once more bytes have arrived
                else:
                    depth += 1 if char in b"[{" else -1
                    pos = match.end()
                    if depth == 0:
                        self._check_size(number, pos - start, start)
                        self.pos = pos
                        return self.buf[start:pos]
                    if depth > MAX_DEPTH + 1:
                        raise BadInputError(f"row {number} of data.json nests deeper than "
                                            f"{MAX_DEPTH} levels (byte {self.base + pos})", self.where)
                    continue
            self._check_size(number, len(self.buf) - start, start)  # all of it is this row so far
            if not self._more(start):
                raise BadInputError(f"data.json ends inside row {number} (byte {self.base + len(self.buf)}); "
                                    "the file is truncated", self.where)
            pos -= start
            start = 0
