"""The status page's figures and API, read through the read-only status role, from real DAG runs.
(The page inside the running Airflow UI, logged in, is tested on the stack: tests/stack.)"""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fastapi import Header, HTTPException
from fastapi.testclient import TestClient
from pydantic import SecretStr

from clientflow.config import PostgresSettings
from clientflow.operations import status
from clientflow.operations.status_page import create_app
from tests.support.dags import test_client_dag
from tests.support.practice import Practice, mapping_for, tables

pytestmark = pytest.mark.e2e
CLIENT = "status_page"


def _status_role(settings: Any) -> PostgresSettings:
    return settings.staging.model_copy(update={"user": "clientflow_status", "password": SecretStr("local-only-status")})


@pytest.fixture(scope="module")
def two_batches(settings: Any, airflow_db: Path, smtp_mailbox: Path) -> dict[str, str]:
    """One promoted batch (one value refused) and one failed batch of the same client."""
    mapping = mapping_for(CLIENT)
    practice = Practice(settings, CLIENT)
    good = tables(200)
    good["person"][5]["patient_dob"] = "not a date"
    practice.write(date(2026, 9, 1), "r1", good)
    assert test_client_dag(mapping, conf={"batch_date": "2026-09-01"}).state == "success"
    practice.write(date(2026, 9, 2), "r1", tables(200, "b"), corrupt=("person",))
    assert test_client_dag(mapping, conf={"batch_date": "2026-09-02"}).state == "failed"
    with psycopg.connect(settings.staging.conninfo()) as conn:
        ids = dict(conn.execute("select state, ingestion_id from pipeline.batches where client_name = %s",
                                (CLIENT,)).fetchall())
    return ids


def test_client_status_counts_every_stage(settings: Any, two_batches: dict[str, str]) -> None:
    with psycopg.connect(_status_role(settings).conninfo()) as conn:
        found = status.client_status(conn, CLIENT)
        promoted = status.batch_timeline(conn, two_batches["SUCCESS"])
    assert found.batches == {"PENDING": 0, "PROCESSING": 0, "SUCCESS": 1, "FAILED": 1, "REOFFERED": 0}
    assert found.last_promoted is not None and found.last_promoted.batch_date == date(2026, 9, 1)
    assert found.last_promoted_age_seconds is not None and 0 <= found.last_promoted_age_seconds < 3600
    assert found.last_batch is not None and found.last_batch.state == "FAILED"
    assert {s.table for s in found.schemas} == {"clinician", "person", "visit"}
    assert promoted is not None
    # 3 providers + 200 patients + 200 visits; one patient refused, and so its one visit
    assert promoted.rows == status.StageCounts(manifest=403, raw=403, rejects=2, dummy_production=401,
                                               production=401)
    assert [e.state for e in promoted.events] == ["PENDING", "PROCESSING", "SUCCESS"]
    assert [s.stage for s in promoted.stages] == ["ingest", "transform", "validate", "promote"]
    assert all(f.source_file.startswith(f"client={CLIENT}/table=") for f in promoted.files)


def test_the_status_role_reads_the_ledger_and_nothing_else(settings: Any, two_batches: dict[str, str]) -> None:
    with psycopg.connect(_status_role(settings).conninfo(), autocommit=True) as conn:
        for forbidden in (f"select * from raw_{CLIENT}.person limit 1", "select * from practice.patients limit 1",
                          "update pipeline.batches set state = 'SUCCESS'", "delete from pipeline.batch_events",
                          "create table pipeline.mine (x int)"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(forbidden)
    production = settings.production.model_copy(update={"user": "clientflow_status",
                                                        "password": SecretStr("local-only-status")})
    with pytest.raises(psycopg.OperationalError, match="permission denied|not have CONNECT"):
        psycopg.connect(production.conninfo()).close()


def _client(settings: Any, auth: Any = None) -> TestClient:
    return TestClient(create_app(database=lambda: _status_role(settings), auth=auth))


def _token(authorization: str | None = Header(default=None)) -> None:
    if authorization != "Bearer test":
        raise HTTPException(401, "Not authenticated")


def test_anonymous_requests_are_refused_by_airflows_own_check(settings: Any) -> None:
    client = _client(settings)  # the default: Airflow's auth manager decides
    for path in ("/", "/status", "/api/clients", f"/api/clients/{CLIENT}", "/openapi.json"):
        response = client.get(path)
        assert response.status_code == 401, path
        assert response.json() == {"detail": "Not authenticated"}


def test_api_and_pages(settings: Any, two_batches: dict[str, str]) -> None:
    client = _client(settings, auth=_token)
    assert client.get("/api/clients").status_code == 401
    headers = {"Authorization": "Bearer test"}
    clients = client.get("/api/clients", headers=headers).json()
    mine = next(c for c in clients if c["client"] == CLIENT)
    assert mine["batches"]["FAILED"] == 1 and mine["last_promoted"]["run_id"] == "r1"
    assert {"ehrlogic", "iriscare"} <= {c["client"] for c in clients}  # every mapping file, even without batches
    timeline = client.get(f"/api/batches/{two_batches['FAILED']}", headers=headers).json()
    assert timeline["batch"]["state"] == "FAILED" and timeline["events"][-1]["state"] == "FAILED"
    assert client.get("/api/batches/nope", headers=headers).status_code == 404
    document = client.get("/openapi.json", headers=headers).json()
    assert set(document["paths"]) == {"/api/clients", "/api/clients/{client}", "/api/batches/{ingestion_id}"}

    overview = client.get("/status", headers=headers).text
    assert f'data-client="{CLIENT}"' in overview and "FAILED" in overview
    page = client.get(f"/clients/{CLIENT}", headers=headers).text
    assert page.count('data-state="SUCCESS"') == 1 and page.count('data-state="FAILED"') == 1
    batch = client.get(f"/batches/{two_batches['SUCCESS']}", headers=headers).text
    assert f"/dags/client_{CLIENT}/runs/" in batch and "/tasks/promote" in batch
    assert "not a date" not in overview + page + batch  # a refused value is never shown


def _series(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_metrics_read_the_ledger(settings: Any, two_batches: dict[str, str]) -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from clientflow.operations.metrics import LedgerCollector

    registry = CollectorRegistry()
    registry.register(LedgerCollector(lambda: _status_role(settings)))
    found = _series(generate_latest(registry).decode())
    me = (("client", CLIENT),)
    assert found[("clientflow_ledger_up", ())] == 1
    assert found[("clientflow_batches", (*me, ("state", "FAILED")))] == 1
    assert found[("clientflow_batches", (*me, ("state", "SUCCESS")))] == 1
    assert found[("clientflow_rows_total", (*me, ("stage", "promoted")))] == 401
    assert found[("clientflow_rows_total", (*me, ("stage", "rejected")))] == 2
    assert found[("clientflow_stage_duration_seconds_count", (*me, ("stage", "promote")))] == 1
    assert found[("clientflow_last_success_timestamp_seconds", me)] > 1.7e9

    registry = CollectorRegistry()  # the ledger unreachable: the scrape still answers, and says so
    registry.register(LedgerCollector(lambda: _status_role(settings).model_copy(update={"port": 1})))
    assert _series(generate_latest(registry).decode()) == {("clientflow_ledger_up", ()): 0}


def test_metrics_server_serves_http(settings: Any, two_batches: dict[str, str]) -> None:
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "clientflow.cli", "metrics-server", "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, "the metrics server did not start"
                time.sleep(0.3)
    finally:
        server.terminate()
        server.wait(10)
    assert _series(text)[("clientflow_batches", (("client", CLIENT), ("state", "FAILED")))] == 1
