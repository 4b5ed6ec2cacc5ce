"""``clientflow restore``: production's rows of a client rebuilt from the JSON files kept in the bucket.

A client of its own (``restoreco``: EHR Logic's practice system under another name) promotes two
batches, the second changing a patient. Then production loses every row of the client (a table
restored from a backup that predates it, say). The restore syncs dummy production from production,
re-offers both batches and replays them oldest first through the client's DAG: production ends
exactly as it was, value by value, the reconciliation is clean again, and the ledger says who
restored and why.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from clientflow.entities import ENTITY_ORDER
from clientflow.mapping import load_mapping
from clientflow.operations import ledger, reconciliation, restore
from tests.support import e2e
from tests.support.dags import test_client_dag

pytestmark = pytest.mark.e2e
CLIENT = "restoreco"
FIRST, SECOND = date(2026, 11, 20), date(2026, 11, 21)
PATIENTS = 80


@pytest.fixture(scope="module")
def mapping(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return load_mapping(e2e.sample_mapping_as(tmp_path_factory.mktemp("mappings"), CLIENT))


@pytest.fixture(scope="module")
def source(admin_dsn: str) -> Any:
    with e2e.sample_source(admin_dsn, "restore", PATIENTS) as found:
        yield found


def _run(mapping: Any, day: date, run_id: str) -> str:
    return str(test_client_dag(mapping, conf={"batch_date": day.isoformat(), "run_id": run_id}).state)


def _values(settings: Any) -> dict[str, dict[Any, dict[str, Any]]]:
    """Production's rows of the client without their row versions (a restore writes them anew)."""
    return {name: {key: {k: v for k, v in row.items() if k != "row_version"} for key, row in rows.items()}
            for name, rows in e2e.production_snapshot(settings, CLIENT).items()}


@pytest.fixture(scope="module")
def promoted(mapping: Any, source: Any, settings: Any, admin_dsn: str, airflow_db: Path) -> dict[str, Any]:
    name, url = source
    e2e.extract(settings, CLIENT, url, FIRST, password="unused-with-trust-auth", run_id="r1")
    assert _run(mapping, FIRST, "r1") == "success"
    with psycopg.connect(psycopg.conninfo.make_conninfo(admin_dsn, dbname=name), autocommit=True) as conn:
        conn.execute("update dim_patient set pt_last_nm = pt_last_nm || '-Moved' where pt_id = (select min(pt_id) "
                     "from dim_patient)")
    e2e.extract(settings, CLIENT, url, SECOND, password="unused-with-trust-auth", run_id="r2")
    assert _run(mapping, SECOND, "r2") == "success"
    values = _values(settings)
    assert len(values["patients"]) == PATIENTS
    return values


def _lose_everything(settings: Any, admin_dsn: str) -> None:
    with psycopg.connect(psycopg.conninfo.make_conninfo(admin_dsn, dbname=settings.production.dbname)) as conn:
        for name in reversed(ENTITY_ORDER):
            conn.execute(sql.SQL("delete from practice.{} where client_id = %s").format(sql.Identifier(name)),
                         (CLIENT,))


def test_a_restore_refuses_while_a_batch_is_in_flight(promoted: dict[str, Any], settings: Any) -> None:
    with psycopg.connect(settings.staging.conninfo(), autocommit=True) as conn:
        newest = restore.plan(conn, CLIENT)[-1].ingestion_id
        ledger.set_state(conn, newest, "PROCESSING", detail="a run in flight (test)")
    try:
        with pytest.raises(restore.RestoreRefused, match=f"client {CLIENT} has batches in flight: {newest}"):
            restore.prepare(settings, CLIENT, by="oncall", reason="test")
    finally:
        with psycopg.connect(settings.staging.conninfo(), autocommit=True) as conn:
            ledger.set_state(conn, newest, "SUCCESS", detail="back (test)")
    with pytest.raises(restore.RestoreRefused, match="no promoted batch of nobody"):
        restore.prepare(settings, "nobody", by="oncall", reason="test")


def test_production_lost_is_rebuilt_from_the_bucket(promoted: dict[str, Any], mapping: Any, settings: Any,
                                                   admin_dsn: str) -> None:
    _lose_everything(settings, admin_dsn)
    assert all(rows == {} for rows in _values(settings).values())
    lost = reconciliation.reconcile(settings, mapping)
    assert any("production" in problem for _line, problem in lost.differences), lost.differences

    replays, copied = restore.prepare(settings, CLIENT, by="oncall", reason="production restored from an old backup")
    assert [(r.day, r.run_id) for r in replays] == [(FIRST, "r1"), (SECOND, "r2")]
    assert copied == dict.fromkeys(ENTITY_ORDER, 0)  # dummy production now holds what production holds
    with psycopg.connect(settings.staging.conninfo()) as conn:
        states = [ledger.state_of(conn, r.ingestion_id) for r in replays]
        details = [d for (d,) in conn.execute("select detail from pipeline.batch_events where state = 'REOFFERED' "
                                              "and ingestion_id = any(%s)", ([r.ingestion_id for r in replays],))]
    assert states == ["REOFFERED", "REOFFERED"]
    assert details == ["by oncall: restore: production restored from an old backup"] * 2

    done = restore.replay_all(replays, lambda r: _run(mapping, r.day, r.run_id))
    assert [state for _r, state in done] == ["success", "success"]
    assert _values(settings) == promoted  # every row, every value, the second batch's change included
    assert reconciliation.reconcile(settings, mapping).differences == []


def test_a_restore_of_an_intact_client_changes_nothing(promoted: dict[str, Any], mapping: Any,
                                                      settings: Any) -> None:
    before = e2e.production_snapshot(settings, CLIENT)
    replays, copied = restore.prepare(settings, CLIENT, by="oncall", reason="drill", since=SECOND)
    assert [(r.day, r.run_id) for r in replays] == [(SECOND, "r2")]
    assert copied["patients"] == PATIENTS
    assert [s for _r, s in restore.replay_all(replays, lambda r: _run(mapping, r.day, r.run_id))] == ["success"]
    assert e2e.production_snapshot(settings, CLIENT) == before  # row versions too: nothing rewritten
