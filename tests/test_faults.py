"""Transient faults: a PostgreSQL connection killed mid-load, S3 answering 5xx, Redis unreachable.

Each is retried (the DAG's `stage` wrapper turns it into a retry, never a fast failure) and the
retry ends with exactly the right rows: none duplicated in raw, none missing in production.
Real PostgreSQL (pg_terminate_backend from another session), moto S3 behind a proxy that fails
requests, and a Redis URL nobody listens on.
"""

from __future__ import annotations

import http.client
import http.server
import socket
import threading
import time
from collections.abc import Iterator
from datetime import date
from typing import Any
from urllib.parse import urlparse

import psycopg
import pytest

from clientflow import pipeline
from clientflow.airflow_edge import stage
from clientflow.errors import PermanentError, TransientError
from tests.support.practice import Practice, mapping_for, production_rows, raw_counts, run_batch, tables
from tests.support.transform import transform

BIG = 150_000  # patients: enough for the COPY to run for a while


def _kill_copy_when_running(admin_dsn: str, dbname: str, killed: list[int], stop: threading.Event) -> None:
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        while not stop.is_set():
            row = admin.execute(
                "select pid from pg_stat_activity where datname = %s and state = 'active' "
                "and query ilike 'copy %%person%%from stdin%%'", (dbname,)).fetchone()
            if row:
                time.sleep(0.05)  # some rows are in the table's transaction by now
                admin.execute("select pg_terminate_backend(%s)", (row[0],))
                killed.append(row[0])
                return
            time.sleep(0.005)


def test_connection_killed_mid_load_is_retried_without_duplicates(settings: Any, admin_dsn: str) -> None:
    mapping = mapping_for("fault_pg")
    practice = Practice(settings, mapping.client)
    found = practice.write(date(2026, 8, 1), "r1", tables(BIG, "big", visits=50))
    killed: list[int] = []
    stop = threading.Event()
    killer = threading.Thread(target=_kill_copy_when_running,
                              args=(admin_dsn, settings.staging.dbname, killed, stop))
    killer.start()
    try:
        with pytest.raises(TransientError, match="PostgreSQL OperationalError"):
            stage(pipeline.ingest)(settings, mapping, found, airflow_run_id="try_1")
    finally:
        stop.set()
        killer.join()
    assert killed, "the load finished before it could be interrupted; make BIG larger"
    assert raw_counts(settings, mapping.client, "person") == {}  # nothing of the attempt committed

    batch = stage(pipeline.ingest)(settings, mapping, found, airflow_run_id="try_2")  # Airflow's retry
    transform(settings, mapping, batch)
    pipeline.validate(settings, mapping, batch)
    pipeline.promote(settings, mapping, batch, airflow_run_id="try_2")

    assert raw_counts(settings, mapping.client, "person") == {batch.ingestion_id: BIG}
    with psycopg.connect(settings.staging.conninfo()) as conn:
        assert conn.execute("select count(distinct source_row) from raw_fault_pg.person").fetchone()[0] == BIG
    patients = production_rows(settings, mapping.client, "patients", "last_name")
    assert len(patients) == BIG and patients["P149999"] == ("Name149999-big",)


class _FlakyS3(http.server.BaseHTTPRequestHandler):
    """Forwards to moto, but answers 503 to the first ``failures`` GETs of a data file."""

    upstream: tuple[str, int]
    failures = 2
    served_503 = 0

    def _forward(self) -> None:
        if self.command == "GET" and "data.json" in self.path and type(self).served_503 < type(self).failures:
            type(self).served_503 += 1
            body = b"<Error><Code>SlowDown</Code><Message>try again</Message></Error>"
            self.send_response(503)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        length = int(self.headers.get("Content-Length") or 0)
        payload = self.rfile.read(length) if length else None
        conn = http.client.HTTPConnection(*self.upstream, timeout=30)
        conn.request(self.command, self.path, body=payload,
                     headers={k: v for k, v in self.headers.items() if k.lower() != "host"})
        reply = conn.getresponse()
        data = reply.read()
        self.send_response(reply.status)
        for key, value in reply.getheaders():
            if key.lower() not in ("transfer-encoding", "content-length", "connection"):
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_PUT = do_HEAD = do_POST = do_DELETE = _forward

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def flaky_s3(settings: Any) -> Iterator[str]:
    url = urlparse(settings.s3.endpoint_url)
    handler = type("Handler", (_FlakyS3,), {"upstream": (url.hostname, url.port), "served_503": 0})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", handler  # type: ignore[misc]
    server.shutdown()
    server.server_close()


def test_s3_5xx_is_retried_with_backoff(settings: Any, flaky_s3: Any) -> None:
    endpoint, handler = flaky_s3
    mapping = mapping_for("fault_s3")
    found = Practice(settings, mapping.client).write(date(2026, 8, 2), "r1", tables(5))
    through_proxy = settings.model_copy(update={"s3": settings.s3.model_copy(update={"endpoint_url": endpoint})})

    batch = run_batch(through_proxy, mapping, found)

    assert handler.served_503 == 2
    assert raw_counts(settings, mapping.client, "person") == {batch.ingestion_id: 5}
    assert len(production_rows(settings, mapping.client, "patients")) == 5


def test_unreachable_redis_is_a_retry_not_a_failure(settings: Any) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nobody listens there
    mapping = mapping_for("fault_redis")
    found = Practice(settings, mapping.client).write(date(2026, 8, 3), "r1", tables(2))
    no_redis = settings.model_copy(update={"redis": settings.redis.model_copy(
        update={"url": settings.redis.url.__class__(f"redis://127.0.0.1:{port}/0")})})

    with pytest.raises(TransientError, match="Redis error ConnectionError"):
        stage(pipeline.ingest)(no_redis, mapping, found, airflow_run_id="t")
    assert raw_counts(settings, mapping.client, "person") == {}


def test_permanent_errors_fail_fast() -> None:
    from airflow.sdk.exceptions import AirflowFailException

    def drifted() -> None:
        raise PermanentError("mapped column missing")

    with pytest.raises(AirflowFailException, match="mapped column missing"):
        stage(drifted)()


def test_the_pipeline_s_connections_run_without_jit_with_ssd_costs_and_start_outside_a_transaction(settings: Any) -> None:
    """JIT compilation cost 1.5-2 s per query on our machines, more than a small batch's queries take
    to run; the setting must not leave the block inside a transaction (``conn.transaction()`` would
    then be a savepoint, committed only when the block ends)."""
    from clientflow.db import connect
    from clientflow.errors import Where

    with connect(settings.staging, Where(client="jit"), "checking the session") as conn:
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        assert conn.execute("show jit").fetchone() == ("off",)
        assert conn.execute("show random_page_cost").fetchone() == ("1.1",)


def test_database_errors_are_retried_by_their_class_not_by_their_python_type(admin_dsn: str) -> None:
    """psycopg raises OperationalError for a lost connection and for a program limit alike; only the
    first is worth a retry (a table past 1,600 columns stays past it), so the SQLSTATE decides."""
    from clientflow.db import is_transient

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(psycopg.OperationalError) as refused:
        psycopg.connect(f"host=127.0.0.1 port={port} dbname=postgres connect_timeout=2")
    with psycopg.connect(admin_dsn) as conn:
        conn.execute("create temp table wide (" + ", ".join(f"c{i} int" for i in range(1600)) + ")")
        with pytest.raises(psycopg.OperationalError) as too_wide:
            conn.execute("alter table wide add column one_more int")
        conn.rollback()
        with pytest.raises(psycopg.Error) as cancelled:
            conn.execute("set statement_timeout = '10ms'")
            conn.execute("select pg_sleep(1)")
    assert is_transient(refused.value)  # no SQLSTATE: the server never answered
    assert too_wide.value.sqlstate == "54011" and not is_transient(too_wide.value)
    assert cancelled.value.sqlstate == "57014" and is_transient(cancelled.value)  # a timeout: try again
