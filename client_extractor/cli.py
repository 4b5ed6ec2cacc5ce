"""The command: one run extracts the chosen tables one at a time, then prints a summary.

``main`` is the only place that turns an error into an exit code and a message on stderr: an
ExtractorError prints its own (safe) text, anything else only its type and the file and line where
it was raised, since its message might quote a value.
"""

from __future__ import annotations

import datetime as dt
import os
import sys
import time
import traceback
from dataclasses import dataclass

from client_extractor import PROG, VERSION, incremental
from client_extractor.contract import run_prefix
from client_extractor.datafile import DataFileWriter, Progress, human_bytes
from client_extractor.errors import (
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_OK,
    ExtractorError,
    OutputError,
    UsageError,
)
from client_extractor.manifest import build_manifest
from client_extractor.settings import Settings, build_settings, resolve_password
from client_extractor.sources import READERS, Reader
from client_extractor.targets import S3Target, Target, make_target


@dataclass
class TableResult:
    table: str
    rows: int = 0
    size: int = 0
    seconds: float = 0.0
    skipped: bool = False
    how: str = "full snapshot"


def extract_table(settings: Settings, reader: Reader, target: Target, table: str, show_progress: bool,
                  state: incremental.StateFile | None = None) -> TableResult:
    """One table: stream to data.json, commit it, then the manifest (skipped if this run already wrote
    it), then, for an incremental table, its new high mark in the state file."""
    prefix = run_prefix(settings.client, table, settings.date, settings.run_id)
    if target.manifest_exists(prefix):
        return TableResult(table, skipped=True)
    started = time.monotonic()
    extracted_at = dt.datetime.now(dt.UTC)
    columns = reader.columns(settings.schema, table)
    plan, previous = incremental.FULL, None
    cursor_name = settings.cursor_of(table)
    if cursor_name is not None and state is not None:
        previous = state.get(settings.schema, table)
        plan = incremental.plan(table, incremental.cursor_column(table, cursor_name, columns), previous,
                                settings.full_refresh)
    # the high mark first, in the same snapshot as the rows: a row changed after it is the next run's
    high = reader.high_mark(settings.schema, table, plan.cursor) if plan.cursor is not None else None
    window = None
    if plan.mode == "incremental":
        assert plan.cursor is not None and plan.low is not None
        window = incremental.Window(plan.cursor, plan.low, high)
    progress = Progress(table, show_progress)
    fh, tmp = target.open_data(prefix)
    try:
        with fh:
            writer = DataFileWriter(fh, progress)
            for page, count in reader.stream(settings.schema, table, columns, window):
                try:
                    writer.add_lines(page, count)
                except OSError as exc:
                    raise OutputError(f"writing data for table {table} failed: {exc.strerror}") from None
            try:
                sha = writer.finish()
            except OSError as exc:
                raise OutputError(f"writing data for table {table} failed: {exc.strerror}") from None
        progress.done(writer.rows, writer.size, " - uploading" if isinstance(target, S3Target) else "")
        target.commit_data(prefix, tmp, writer.size)
        extraction = {"mode": plan.mode, "cursor_column": plan.cursor.name if plan.cursor else None,
                      "low_mark": plan.low, "high_mark": high}
        manifest = build_manifest(settings, reader.dialect, table, columns, extracted_at, writer.rows, writer.size,
                                  sha, extraction)
        target.put_manifest(prefix, manifest)
    finally:
        target.discard(tmp)  # the S3 temp copy, or a local partial file left by a failure
    if plan.cursor is not None and state is not None:
        # no cursor value now (all deleted, or NULL): the next run starts where this one did
        kept = high if high is not None else (previous.high_mark if previous and plan.mode == "incremental" else None)
        state.put(settings.schema, table, incremental.Mark(plan.cursor.name, plan.cursor.source_type, kept,
                                                           settings.run_id, settings.date.isoformat()))
    return TableResult(table, writer.rows, writer.size, time.monotonic() - started, how=plan.reason)


def select_tables(settings: Settings, reader: Reader) -> list[str]:
    if settings.tables is None:
        tables = reader.list_tables(settings.schema)
        if not tables:
            raise UsageError(f"schema {settings.schema!r} in {reader.src.describe()} has no tables; pass --schema or --tables")
        return tables
    found = reader.existing(settings.schema, settings.tables)
    missing = [t for t in settings.tables if t not in found]
    if missing:
        raise UsageError(f"table(s) not found in schema {settings.schema!r} of {reader.src.describe()}: {', '.join(missing)}")
    return sorted(dict.fromkeys(settings.tables))


def check_incremental(settings: Settings, tables: list[str]) -> None:
    """Every table the config's [incremental] names is one this run extracts (or a typo)."""
    unknown = [t for t, _ in settings.incremental if t not in tables]
    if unknown and settings.tables is None:
        raise UsageError(f"config [incremental] names table(s) not found in schema {settings.schema!r}: {', '.join(unknown)}")


def print_summary(settings: Settings, target: Target, results: list[TableResult], seconds: float) -> None:
    done = [r for r in results if not r.skipped]
    rows = sum(r.rows for r in done)
    size = sum(r.size for r in done)
    out = sys.stdout
    out.write(
        f"{PROG} {VERSION}: client {settings.client}, run {settings.run_id}, date {settings.date.isoformat()}: "
        f"{len(done)} table(s) extracted, {len(results) - len(done)} already complete, {rows:,} rows, {human_bytes(size)} "
        f"in {seconds:.1f} s -> {target.description}\n"
    )
    width = max((len(r.table) for r in results), default=0)
    for r in results:
        if r.skipped:
            out.write(f"  {r.table:<{width}}  already complete in this run (skipped)\n")
        else:
            out.write(f"  {r.table:<{width}}  {r.rows:>12,} rows  {human_bytes(r.size):>10}  {r.seconds:7.1f} s  {r.how}\n")
    out.flush()


def run(argv: list[str] | None) -> int:
    settings = build_settings(argv)
    target = make_target(settings)
    target.check()
    password = resolve_password(settings)
    reader = READERS[settings.source.dialect](settings.source, password)
    reader.connect()
    started = time.monotonic()
    results: list[TableResult] = []
    show_progress = sys.stderr.isatty()
    try:
        tables = select_tables(settings, reader)
        check_incremental(settings, tables)
        state = (incremental.StateFile(settings.state_file, settings.client, reader.src.describe())
                 if settings.incremental else None)
        for table in tables:
            try:
                results.append(extract_table(settings, reader, target, table, show_progress, state))
            except ExtractorError as exc:
                if show_progress:
                    sys.stderr.write("\n")
                done = [r.table for r in results]
                raise type(exc)(
                    f"{exc} [table {table}; run {settings.run_id}; completed: {', '.join(done) or 'none'}; "
                    f"re-run with --run-id {settings.run_id} --date {settings.date.isoformat()} to complete the batch]"
                ) from None
    finally:
        reader.close()
    print_summary(settings, target, results, time.monotonic() - started)
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    try:
        return run(argv)
    except ExtractorError as exc:
        sys.stderr.write(f"{PROG}: error: {exc}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        sys.stderr.write(f"\n{PROG}: interrupted; no manifest was written for the table in progress\n")
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - never print a message that might quote a value
        tb = traceback.extract_tb(exc.__traceback__)
        where = f"{os.path.basename(tb[-1].filename)}:{tb[-1].lineno}" if tb else "?"
        sys.stderr.write(f"{PROG}: internal error ({type(exc).__name__} at {where}); please report this with the command you ran (not the password)\n")
        return EXIT_INTERNAL
