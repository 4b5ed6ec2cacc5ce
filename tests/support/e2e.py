"""Helpers of the end-to-end tests: extract a sample client with the real binary, run its DAG,
read production and the ledger back, and compare production with the oracle value by value."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import date
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from client_extractor.contract import parse_key
from clientflow.db import set_tenant
from clientflow.entities import BY_NAME
from tests.support.extractor import build_binary
from tests.support.oracle import Rows

ROOT = Path(__file__).resolve().parents[2]


def sample_mapping_as(directory: Path, client: str) -> Path:
    """The sample client's mapping (ehrlogic's) under another client name, written to ``directory``."""
    text = (ROOT / "include" / "mappings" / "ehrlogic.yaml").read_text(encoding="utf-8")
    path = directory / f"{client}.yaml"
    path.write_text(text.replace("client: ehrlogic", f"client: {client}"), encoding="utf-8")
    return path


@contextmanager
def sample_source(admin_dsn: str, purpose: str, patients: int) -> Iterator[tuple[str, str]]:
    """A database of the sample practice system with ``patients`` patients, for this test session:
    (its name, its reader role's URL); dropped afterwards."""
    from clientflow.sample import ehrlogic

    name = f"{os.environ['CLIENTFLOW_STAGING_DB'].removesuffix('_staging')}_{purpose}_src"
    ehrlogic.create(admin_dsn, name, patients)
    info = psycopg.conninfo.conninfo_to_dict(psycopg.conninfo.make_conninfo(admin_dsn, dbname=name))
    try:
        yield name, f"postgresql://{ehrlogic.READER_ROLE}@{info['host']}:{info.get('port', 5432)}/{name}"
    finally:
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))


def extract(settings: Any, client: str, source_url: str, day: date, *, password: str,
            run_id: str | None = None, extra: Sequence[str] = ()) -> str:
    """Run dist/client-extractor against the client's database into the bucket; the run id.
    ``extra``: more options (e.g. --config with an [incremental] table, --full-refresh)."""
    args = [str(build_binary()), "--source", source_url, "--client", client, "--date", day.isoformat(),
            "--output", f"s3://{settings.s3.bucket}", "--endpoint-url", settings.s3.endpoint_url, *extra]
    if run_id:
        args += ["--run-id", run_id]
    env = {**os.environ, "EXTRACTOR_DB_PASSWORD": password}
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    if run_id:
        return run_id
    listed = settings.s3.client().list_objects_v2(Bucket=settings.s3.bucket, Prefix=f"client={client}/")
    runs = sorted({p.run_id for o in listed["Contents"] if (p := parse_key(o["Key"])) and p.day == day})
    return runs[-1]


def production_snapshot(settings: Any, client: str) -> Rows:
    """entity -> (client_id, key) -> business columns plus the row's version (xmin)."""
    out: Rows = {}
    with psycopg.connect(settings.production.conninfo()) as conn:
        set_tenant(conn, client, local=False)  # production's row-level security
        for name, entity in BY_NAME.items():
            cur = conn.execute(
                sql.SQL("select {}, xmin::text as row_version from practice.{} where client_id = %s").format(
                    sql.SQL(", ").join(sql.Identifier(c) for c in entity.business_columns), sql.Identifier(name)),
                (client,))
            names = [d.name for d in cur.description or []]
            rows = [dict(zip(names, r, strict=True)) for r in cur]
            out[name] = {(r["client_id"], r[entity.key]): r for r in rows}
    return out


def assert_production_equals(settings: Any, client: str, expected: Rows) -> None:
    """Production holds exactly the expected rows, value by value; columns not mapped are NULL."""
    actual = production_snapshot(settings, client)
    for entity, rows in expected.items():
        assert set(actual[entity]) == set(rows), entity
        for key, want in rows.items():
            got = actual[entity][key]
            assert {k: got[k] for k in want} == want, (entity, key)
            unmapped = [k for k in got if k not in want and k != "row_version" and got[k] is not None]
            assert unmapped == [], (entity, key, unmapped)


def ledger_events(settings: Any, client: str) -> list[tuple[str, str]]:
    with psycopg.connect(settings.staging.conninfo()) as conn:
        return conn.execute(
            "select ingestion_id, e.state from pipeline.batch_events e join pipeline.batches b using (ingestion_id) "
            "where b.client_name = %s order by event_id", (client,)).fetchall()
