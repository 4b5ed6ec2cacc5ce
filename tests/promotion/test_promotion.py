"""Promotion: all of a batch lands or none does; soft deletes and revivals; lineage to the file and
row; tenants never meet; dummy production always ends equal to production.

Real batches through the bucket, the raw load, dbt and the gates, on real PostgreSQL, Redis and S3;
the killed promotion is a real pg_terminate_backend of the production connection mid-transaction.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from datetime import date, timedelta
from typing import Any

import psycopg
import pytest

from client_extractor.contract import parse_key
from clientflow import pipeline
from clientflow.db import set_tenant
from clientflow.errors import PermanentError
from tests.support.practice import (
    TABLES,
    Practice,
    assert_dummy_equals_production,
    mapping_for,
    production_rows,
    run_batch,
    snapshot,
    tables,
)
from tests.support.transform import as_transformer, transform

DAY = date(2026, 11, 2)


def _kill_when_blocked(admin_dsn: str, dbname: str, killed: list[int], stop: threading.Event) -> None:
    """Terminate the backend that waits for the lock the test holds on production's patients."""
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        while not stop.is_set():
            row = admin.execute("select pid from pg_stat_activity where datname = %s and wait_event_type = 'Lock' "
                                "and query ilike %s", (dbname, "%patients%")).fetchone()
            if row:
                admin.execute("select pg_terminate_backend(%s)", (row[0],))
                killed.append(row[0])
                return
            time.sleep(0.01)


def test_a_promotion_killed_after_the_first_entity_leaves_production_unchanged(settings: Any, admin_dsn: str) -> None:
    mapping = mapping_for("kill_promote")
    practice = Practice(settings, mapping.client)
    run_batch(settings, mapping, practice.write(DAY, "r1", tables(50, "one")))
    before = {e: production_rows(settings, mapping.client, e, "last_name") for e in ("providers", "patients")}
    second = tables(60, "two")
    second[TABLES["providers"]][0]["prov_last"] = "Renamed"  # so the first entity's upsert writes a row
    batch = pipeline.ingest(settings, mapping, practice.write(DAY + timedelta(days=1), "r2", second),
                            airflow_run_id="t")
    transform(settings, mapping, batch)
    pipeline.validate(settings, mapping, batch)
    killed: list[int] = []
    stop = threading.Event()
    # Providers are upserted first; the test holds production's patients, so the promotion waits
    # there, in the middle of its transaction, and is killed while it waits.
    blocker = psycopg.connect(psycopg.conninfo.make_conninfo(admin_dsn, dbname=settings.production.dbname))
    blocker.execute("lock table practice.patients in access exclusive mode")
    killer = threading.Thread(target=_kill_when_blocked, args=(admin_dsn, settings.production.dbname, killed, stop))
    killer.start()
    try:
        with pytest.raises(Exception, match="PostgreSQL AdminShutdown"):
            pipeline.promote(settings, mapping, batch, airflow_run_id="t")
    finally:
        stop.set()
        killer.join()
        blocker.rollback()
        blocker.close()
        pipeline.mark_failed(settings, batch, "killed", airflow_run_id="t")
    assert killed, "the promotion finished before it could be killed"
    assert {e: production_rows(settings, mapping.client, e, "last_name") for e in ("providers", "patients")} == before
    with psycopg.connect(settings.production.conninfo()) as conn:
        set_tenant(conn, mapping.client, local=False)  # production's row-level security
        assert conn.execute("select count(*) from practice.providers where ingestion_id = %s",
                            (batch.ingestion_id,)).fetchone() == (0,)  # the first entity's upsert was rolled back
    assert_dummy_equals_production(settings, mapping.client)

    run_batch(settings, mapping, practice.write(DAY + timedelta(days=1), "r2", second))  # the retry
    assert production_rows(settings, mapping.client, "patients", "last_name")["P55"] == ("Name55-two",)
    assert production_rows(settings, mapping.client, "providers", "last_name")["D0"] == ("Renamed",)
    assert_dummy_equals_production(settings, mapping.client)


def test_a_failed_first_load_keeps_one_undo_row_per_entity_and_leaves_other_clients_alone(settings: Any,
                                                                                          admin_dsn: str) -> None:
    """A client's first rows of an entity are undone by deleting the client's rows: the undo keeps
    one marker row instead of a key per inserted row, and another client's rows stay."""
    other = mapping_for("first_undo_other")
    run_batch(settings, other, Practice(settings, other.client).write(DAY, "r1", tables(12)))
    mapping = mapping_for("first_undo")
    batch = pipeline.ingest(settings, mapping, Practice(settings, mapping.client).write(DAY, "r1", tables(30)),
                            airflow_run_id="t")
    transform(settings, mapping, batch)
    staging_admin = psycopg.conninfo.make_conninfo(admin_dsn, dbname=settings.staging.dbname)
    with psycopg.connect(staging_admin) as admin:
        for name in ("providers", "patients", "appointments"):
            assert admin.execute(f"select count(*), count(undo_key) from stg_first_undo.undo_{name} "
                                 "where undo_for = %s", (batch.ingestion_id,)).fetchone() == (1, 0)
        assert admin.execute("select count(*) from practice.patients where client_id = 'first_undo'").fetchone() == (30,)
    pipeline.mark_failed(settings, batch, "stopped", airflow_run_id="t")
    with psycopg.connect(staging_admin) as admin:
        assert admin.execute("select count(*) from practice.patients where client_id = 'first_undo'").fetchone() == (0,)
        assert admin.execute("select count(*) from practice.patients where client_id = 'first_undo_other'"
                             ).fetchone() == (12,)
    assert_dummy_equals_production(settings, mapping.client)
    assert_dummy_equals_production(settings, other.client)


def test_a_change_set_a_crash_emptied_after_validation_stops_the_promotion(settings: Any, admin_dsn: str) -> None:
    """dbt's change sets are unlogged, and a crash of the staging database empties them (truncated
    here, as crash recovery does). The undo rows dbt kept with the merge are logged: the promotion
    finds the change set short of them and stops, instead of promoting less than dummy production
    holds; the batch then runs again from its files."""
    mapping = mapping_for("lost_changes")
    practice = Practice(settings, mapping.client)
    run_batch(settings, mapping, practice.write(DAY, "r1", tables(20, "one")))
    before = production_rows(settings, mapping.client, "patients", "last_name")
    batch = pipeline.ingest(settings, mapping, practice.write(DAY + timedelta(days=1), "r2", tables(25, "two")),
                            airflow_run_id="t")
    transform(settings, mapping, batch)
    pipeline.validate(settings, mapping, batch)
    staging_admin = psycopg.conninfo.make_conninfo(admin_dsn, dbname=settings.staging.dbname)
    with psycopg.connect(staging_admin, autocommit=True) as admin:
        admin.execute(f"truncate stg_{mapping.client}.changes_patients")
    with pytest.raises(PermanentError, match=r"the change set stg_lost_changes\.changes_patients holds 0 row\(s\), "
                                             r"but dbt merged 25 into dummy production's patients"):
        pipeline.promote(settings, mapping, batch, airflow_run_id="t")
    pipeline.mark_failed(settings, batch, "lost", airflow_run_id="t")
    assert production_rows(settings, mapping.client, "patients", "last_name") == before
    assert_dummy_equals_production(settings, mapping.client)

    run_batch(settings, mapping, practice.write(DAY + timedelta(days=1), "r2", tables(25, "two")))  # again
    assert production_rows(settings, mapping.client, "patients", "last_name")["P22"] == ("Name22-two",)
    assert_dummy_equals_production(settings, mapping.client)


@pytest.mark.parametrize("small_change_set", [200_000, 0], ids=["changed_keys_checked", "every_row_checked"])
@pytest.mark.parametrize("change", ["new_child", "child_moved"])
def test_a_child_naming_a_parent_production_lacks_stops_the_promotion(settings: Any, admin_dsn: str,
                                                                      monkeypatch: pytest.MonkeyPatch,
                                                                      change: str, small_change_set: int) -> None:
    """Production's foreign keys are checked by the promotion (its per-row triggers are off): a row
    the batch adds, or a row whose patient the batch changes, naming a patient production lacks
    stops the batch, production unchanged. A small change set checks only such rows; a large one
    every row. Production is made to lack P2 by hand (dummy production still holds it)."""
    monkeypatch.setattr(sys.modules["clientflow.promotion.promote"], "SMALL_CHANGE_SET", small_change_set)
    mapping = mapping_for(f"orphan_{change}_{small_change_set}")
    practice = Practice(settings, mapping.client)
    run_batch(settings, mapping, practice.write(DAY, "r1", tables(4, "one")))
    with psycopg.connect(psycopg.conninfo.make_conninfo(admin_dsn, dbname=settings.production.dbname)) as admin:
        admin.execute("delete from practice.appointments where client_id = %s and patient_id = 'P2'", (mapping.client,))
        admin.execute("delete from practice.patients where client_id = %s and patient_id = 'P2'", (mapping.client,))
    before = snapshot(settings.production.conninfo(), mapping.client)
    second = tables(4, "one")
    visits = second[TABLES["appointments"]]
    if change == "new_child":
        visits.append({**visits[2], "appt_id": "A9"})  # P2's
    else:
        visits[0]["pt_id"] = "P2"  # A0 moves from P0 to P2; A2 is unchanged

    with pytest.raises(PermanentError, match=r"1 row\(s\) of appointments\.patient_id refer to no patients row "
                                             r"in production; the promotion was rolled back"):
        run_batch(settings, mapping, practice.write(DAY + timedelta(days=1), "r2", second))
    assert snapshot(settings.production.conninfo(), mapping.client) == before


@pytest.mark.parametrize("nested_loop_max_rows", [0, 200_000], ids=["hash_joins", "index_lookups"])
def test_a_full_snapshot_soft_deletes_a_removed_row_and_revives_it(settings: Any, nested_loop_max_rows: int) -> None:
    """Both ways the staging models may be planned (a large batch's hash joins, a small one's index
    lookups: dbt/macros/staging/planner_settings.sql) write the same rows."""
    mapping = mapping_for(f"softdel_{nested_loop_max_rows}")
    practice = Practice(settings, mapping.client)
    plans = {"nested_loop_max_rows": nested_loop_max_rows}
    run_batch(settings, mapping, practice.write(DAY, "r1", tables(4, "one")), dbt_vars=plans)
    second = tables(4, "two")
    second[TABLES["patients"]] = [p for p in second[TABLES["patients"]] if p["pt_id"] != "P2"]
    second[TABLES["appointments"]] = [a for a in second[TABLES["appointments"]] if a["pt_id"] != "P2"]
    run_batch(settings, mapping, practice.write(DAY + timedelta(days=1), "r2", second), dbt_vars=plans)

    gone = production_rows(settings, mapping.client, "patients", "deleted_at", "last_name")
    assert gone["P2"][0] is not None and gone["P2"][1] == "Name2-one"  # soft-deleted, its last values kept
    assert all(v[0] is None for k, v in gone.items() if k != "P2")
    assert production_rows(settings, mapping.client, "appointments", "deleted_at")["A2"][0] is not None
    assert_dummy_equals_production(settings, mapping.client)

    run_batch(settings, mapping, practice.write(DAY + timedelta(days=2), "r3", tables(4, "three")), dbt_vars=plans)
    back = production_rows(settings, mapping.client, "patients", "deleted_at", "last_name")
    assert back["P2"] == (None, "Name2-three")  # revived when it returns
    assert production_rows(settings, mapping.client, "appointments", "deleted_at")["A2"] == (None,)
    assert_dummy_equals_production(settings, mapping.client)


def test_children_of_a_deleted_parent_are_deleted_with_it_and_incremental_batches_never_delete(settings: Any) -> None:
    full = mapping_for("cascade")
    specs = {n: s.model_dump(exclude_none=True) for n, s in full.tables.items()}
    specs[TABLES["appointments"]]["mode"] = "incremental"
    mapping = mapping_for("cascade", tables=specs)
    practice = Practice(settings, mapping.client)
    run_batch(settings, mapping, practice.write(DAY, "r1", tables(4, "one")))
    second = tables(4, "two", visits=0)  # the incremental appointments table sends nothing new
    second[TABLES["patients"]] = [p for p in second[TABLES["patients"]] if p["pt_id"] != "P1"]
    second[TABLES["appointments"]] = [{"appt_id": "A9", "pt_id": "P0", "prov_id": "D0",
                                       "appt_start": "2026-11-03T09:00:00Z", "appt_len": 30, "appt_status": "completed"}]
    run_batch(settings, mapping, practice.write(DAY + timedelta(days=1), "r2", second))

    deleted = {k for k, (at,) in production_rows(settings, mapping.client, "appointments", "deleted_at").items() if at}
    assert deleted == {"A1"}  # P1's appointment, with P1; A0, A2, A3 stay though absent from the increment
    assert "A9" in production_rows(settings, mapping.client, "appointments")
    assert_dummy_equals_production(settings, mapping.client)


def test_a_late_older_snapshot_deletes_no_child_a_newer_batch_wrote(settings: Any) -> None:
    """An older full snapshot arriving after a newer one: a parent it lacks is deleted (last changed
    before it), but a child that the newer batch changed is newer than the late batch, in dummy
    production as in production (whose merge never lets an older batch overwrite a newer row)."""
    mapping = mapping_for("late_child")
    practice = Practice(settings, mapping.client)
    run_batch(settings, mapping, practice.write(DAY, "r1", tables(4, "one")))
    newer = tables(4, "one")
    newer[TABLES["appointments"]][1]["appt_len"] = 90  # A1 (of P1) changed in the newer batch; P1 unchanged
    run_batch(settings, mapping, practice.write(DAY + timedelta(days=2), "r3", newer))
    late = tables(4, "one")
    late[TABLES["patients"]] = [p for p in late[TABLES["patients"]] if p["pt_id"] != "P1"]
    late[TABLES["appointments"]] = [a for a in late[TABLES["appointments"]] if a["pt_id"] != "P1"]
    run_batch(settings, mapping, practice.write(DAY + timedelta(days=1), "r2", late))

    assert production_rows(settings, mapping.client, "patients", "deleted_at")["P1"][0] is not None
    assert production_rows(settings, mapping.client, "appointments", "deleted_at")["A1"] == (None,)
    assert_dummy_equals_production(settings, mapping.client)


def test_a_production_row_traces_to_its_file_and_row(settings: Any) -> None:
    mapping = mapping_for("lineage")
    batch = run_batch(settings, mapping, Practice(settings, mapping.client).write(DAY, "r1", tables(5)))
    job_id, source_file, source_row, ingestion_id = production_rows(
        settings, mapping.client, "patients", "job_id", "source_file", "source_row", "ingestion_id")["P3"]
    assert ingestion_id == batch.ingestion_id
    with psycopg.connect(settings.production.conninfo()) as conn:  # when it reached production: its batch's row
        set_tenant(conn, mapping.client, local=False)  # production's row-level security
        promoted = conn.execute("select promoted_at from practice.promotions where client_id = %s and "
                                "ingestion_id = %s", (mapping.client, ingestion_id)).fetchone()
    assert promoted is not None and promoted[0] is not None
    key = source_file.removeprefix(f"s3://{settings.s3.bucket}/")
    assert parse_key(key).table == TABLES["patients"]  # type: ignore[union-attr]
    rows = json.loads(settings.s3.client().get_object(Bucket=settings.s3.bucket, Key=key)["Body"].read())
    assert rows[source_row - 1]["pt_id"] == "P3"
    with psycopg.connect(settings.staging.conninfo()) as conn:
        assert conn.execute("select source_file from pipeline.jobs where job_id = %s and ingestion_id = %s",
                            (job_id, ingestion_id)).fetchone() == (key,)


def test_two_tenants_with_the_same_keys_keep_their_own_rows(settings: Any) -> None:
    for client, version in (("tenant_a", "a"), ("tenant_b", "b")):
        run_batch(settings, mapping_for(client), Practice(settings, client).write(DAY, "r1", tables(3, version)))
    assert production_rows(settings, "tenant_a", "patients", "last_name")["P1"] == ("Name1-a",)
    assert production_rows(settings, "tenant_b", "patients", "last_name")["P1"] == ("Name1-b",)
    run_batch(settings, mapping_for("tenant_b"), Practice(settings, "tenant_b").write(
        DAY + timedelta(days=1), "r2", tables(3, "b2")))
    assert production_rows(settings, "tenant_a", "patients", "last_name")["P1"] == ("Name1-a",)
    assert production_rows(settings, "tenant_b", "patients", "last_name")["P1"] == ("Name1-b2",)


@pytest.mark.parametrize("small_change_set", [200_000, 0], ids=["looked_up_once", "joined"])
def test_a_batch_that_changes_one_row_writes_one_row(settings: Any, monkeypatch: pytest.MonkeyPatch,
                                                     small_change_set: int) -> None:
    monkeypatch.setattr(sys.modules["clientflow.promotion.promote"], "SMALL_CHANGE_SET", small_change_set)
    mapping = mapping_for(f"one_change_{small_change_set}")
    practice = Practice(settings, mapping.client)
    run_batch(settings, mapping, practice.write(DAY, "r1", tables(20)))
    again = tables(20)
    again[TABLES["patients"]][7]["pt_last"] = "Changed"
    batch = run_batch(settings, mapping, practice.write(DAY + timedelta(days=1), "r2", again))
    with psycopg.connect(settings.production.conninfo()) as conn:
        set_tenant(conn, mapping.client, local=False)  # production's row-level security
        written = conn.execute("select rows_written from practice.promotions where ingestion_id = %s",
                               (batch.ingestion_id,)).fetchone()[0]
        versions = dict(conn.execute("select patient_id, ingestion_id from practice.patients where client_id = %s",
                                     (mapping.client,)).fetchall())
    assert written == {"providers": 0, "patients": 1, "appointments": 0}
    assert [p for p, i in versions.items() if i == batch.ingestion_id] == ["P7"]


def test_a_dbt_build_retried_after_a_lost_connection_starts_from_dummy_production_as_it_was(settings: Any) -> None:
    """The dbt build merged part of a batch into dummy production, then lost its database; before
    the retried build runs (airflow_edge.undo_before_retry) the merged part is undone under the run's own token, so
    the retried build computes the same change set and the promotion writes every changed row."""
    mapping = mapping_for("dbt_retry")
    practice = Practice(settings, mapping.client)
    run_batch(settings, mapping, practice.write(DAY, "r1", tables(20)))
    again = tables(20)
    again[TABLES["patients"]][3]["pt_last"] = "Retried"
    batch = pipeline.ingest(settings, mapping, practice.write(DAY + timedelta(days=1), "r2", again),
                            airflow_run_id="retry")
    transform(settings, mapping, batch)  # the first try got this far before its connection died
    assert pipeline.undo_partial_transform(settings, batch)["patients"] == 1
    assert_dummy_equals_production(settings, mapping.client)

    transform(settings, mapping, batch)  # the retry
    pipeline.validate(settings, mapping, batch)
    promoted = pipeline.promote(settings, mapping, batch, airflow_run_id="retry")
    assert promoted["patients"]["updated"] == 1
    assert production_rows(settings, mapping.client, "patients", "last_name")["P3"] == ("Retried",)
    assert_dummy_equals_production(settings, mapping.client)


def test_a_batch_refreshes_dummy_production_s_statistics_through_the_owner_s_function(settings: Any,
                                                                                       admin_dsn: str) -> None:
    """dbt's role may not ANALYZE dummy production either; a batch that wrote more than a share of a
    table (here any: statistics_refresh_share 0) refreshes its statistics through the owner's
    function, in the model's transaction, so the next model and batch are planned for its rows
    (autovacuum may be off, as on the machines this project was built on)."""
    mapping = mapping_for("fresh_dummy_stats")
    run_batch(settings, mapping, Practice(settings, mapping.client).write(DAY, "r1", tables(40)),
              dbt_vars={"statistics_refresh_share": 0})
    with psycopg.connect(psycopg.conninfo.make_conninfo(admin_dsn, dbname=settings.staging.dbname)) as conn:
        for name in ("providers", "patients", "appointments"):
            (rows,) = conn.execute(f"select count(*) from practice.{name}").fetchone()  # noqa: S608
            (estimated,) = conn.execute("select reltuples from pg_class where oid = %s::regclass",
                                        (f"practice.{name}",)).fetchone()
            assert estimated == rows, name  # ANALYZE of a small table counts every row
    with psycopg.connect(as_transformer(settings).conninfo(), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="not a production entity"):
            conn.execute("select practice.refresh_statistics('promotions; drop table practice.patients')")
        conn.execute("select practice.refresh_statistics('patients')")


def test_a_first_load_refreshes_production_s_statistics_through_the_owner_s_function(settings: Any,
                                                                                      admin_dsn: str) -> None:
    """Without fresh statistics the next promotion's lookups were planned for a client of no rows:
    150,000 incoming rows each compared with every row of the client (minutes, on the failure suite's
    stack). The promoter may not ANALYZE; the owner's function does it, for entities only."""
    mapping = mapping_for("fresh_stats")
    run_batch(settings, mapping, Practice(settings, mapping.client).write(DAY, "r1", tables(40)))
    admin = psycopg.conninfo.make_conninfo(admin_dsn, dbname=settings.production.dbname)
    with psycopg.connect(admin) as conn:
        for name in ("providers", "patients"):
            (rows,) = conn.execute(f"select count(*) from practice.{name}").fetchone()  # noqa: S608
            (estimated,) = conn.execute("select reltuples from pg_class where oid = %s::regclass",
                                        (f"practice.{name}",)).fetchone()
            assert estimated == rows, name  # ANALYZE of a small table counts every row
        mcv = conn.execute("select most_common_vals::text from pg_stats where schemaname = 'practice' "
                           "and tablename = 'patients' and attname = 'client_id'").fetchone()
        assert mcv is None or mapping.client in (mcv[0] or "") or rows < 100
    with psycopg.connect(settings.production.conninfo(), autocommit=True) as conn:
        notices: list[str] = []
        conn.add_notice_handler(lambda diag: notices.append(diag.message_primary or ""))
        conn.execute("analyze practice.patients")  # PostgreSQL skips it, with a warning
        assert any("only table or database owner can analyze" in n for n in notices), notices
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="not a production entity"):
            conn.execute("select practice.refresh_statistics('promotions; drop table practice.patients')")
        conn.execute("select practice.refresh_statistics('patients')")
