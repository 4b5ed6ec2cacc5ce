"""clientflow.db.relay_copy: rows streamed from one database into another (the promotion's change
sets, the restore's sync of dummy production), on two real PostgreSQL databases."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from clientflow.db import COPY_BUFFER, relay_copy

FINGERPRINT = "select count(*), md5(coalesce(string_agg(id::text || '|' || coalesce(note, '~'), ',' order by id), '')) from t"


@pytest.fixture
def two_databases(admin_dsn: str, databases: dict[str, str]) -> Iterator[tuple[psycopg.Connection[Any], ...]]:
    with psycopg.connect(admin_dsn, dbname=databases["staging"]) as source, \
            psycopg.connect(admin_dsn, dbname=databases["production"]) as target:
        for conn in (source, target):
            conn.execute("create temp table t (id bigint primary key, note text)")
        yield source, target


@pytest.mark.parametrize("rows", [0, 1, 60_000])
def test_relay_copy_moves_every_row_once_whatever_the_buffer_s_fill(
        two_databases: tuple[psycopg.Connection[Any], ...], rows: int) -> None:
    source, target = two_databases
    source.execute("insert into t select g, case when g %% 7 = 0 then null else repeat('x', g %% 40) || g end "
                   "from generate_series(1, %s) g", (rows,))
    relay_copy(source, sql.SQL("copy (select id, note from t) to stdout (format binary)").format(),
               target, sql.SQL("copy t (id, note) from stdin (format binary)").format())
    assert target.execute(FINGERPRINT).fetchone() == source.execute(FINGERPRINT).fetchone()
    if rows == 60_000:  # several full buffers and a partial one
        size = source.execute("select sum(pg_column_size(t.*)) from t").fetchone()
        assert size is not None and size[0] > 2 * COPY_BUFFER


def test_the_pipeline_s_databases_and_connections_speak_utf8(settings: Any) -> None:
    """Bootstrap creates its databases UTF8 (whatever template1 is), and every connection of the
    pipeline says UTF8, so a database that cannot store a character refuses it instead of
    storing it mangled."""
    from clientflow.db import connect
    from clientflow.errors import Where

    for target in (settings.staging, settings.production):
        with connect(target, Where(), "checking the encoding") as conn:
            assert conn.execute("show server_encoding").fetchone() == ("UTF8",)
            assert conn.execute("show client_encoding").fetchone() == ("UTF8",)
