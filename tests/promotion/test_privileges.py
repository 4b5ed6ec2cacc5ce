"""Least privilege in PostgreSQL: each role can do its job and nothing else, and production's rows
are fenced by tenant (row-level security on ``client_id``, the connection's ``app.client_id``).

Every attempt here is a real statement on the session's own databases, as the real role; what a
role must not do fails with PostgreSQL's own privilege error (SQLSTATE 42501).
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

import psycopg
import pytest
from psycopg import errors
from pydantic import SecretStr

from clientflow import pipeline
from clientflow.bootstrap import LOADER_ROLE, LOGIN_ROLES, STATUS_ROLE, TRANSFORMER_ROLE
from clientflow.db import set_tenant
from clientflow.errors import PermanentError
from tests.support.practice import Practice, mapping_for, production_rows, run_batch, tables
from tests.support.transform import transform

DAY = date(2026, 11, 3)
A, B = "rls_a", "rls_b"


@pytest.fixture(scope="module")
def two_tenants(settings: Any) -> None:
    for client, version in ((A, "a"), (B, "b")):
        run_batch(settings, mapping_for(client), Practice(settings, client).write(DAY, "r1", tables(3, version)))


def _admin(settings: Any, admin_dsn: str, db: str) -> psycopg.Connection[Any]:
    dbname = settings.production.dbname if db == "production" else settings.staging.dbname
    return psycopg.connect(psycopg.conninfo.make_conninfo(admin_dsn, dbname=dbname), autocommit=True)


def _refused(conninfo: str, statement: str, tenant: str | None = None) -> None:
    with psycopg.connect(conninfo) as conn:
        if tenant:
            set_tenant(conn, tenant)
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute(statement)


@pytest.mark.parametrize("statement", [
    "delete from practice.patients",
    "truncate practice.appointments",
    "drop table practice.procedures",
    "alter table practice.patients add column note text",
    "create table practice.sneaky (id int)",
    "alter table practice.patients disable row level security",
    "drop policy tenant_isolation on practice.patients",
    "delete from practice.promotions",
])
def test_the_promoter_may_not_delete_or_change_production_s_schema(settings: Any, two_tenants: None,
                                                                   statement: str) -> None:
    _refused(settings.production.conninfo(), statement, tenant=A)


def _as(settings: Any, role: str, db: str = "staging") -> str:
    target = settings.staging if db == "staging" else settings.production
    return target.model_copy(update={"user": role, "password": SecretStr(LOGIN_ROLES[role][1])}).conninfo()


def _status(settings: Any, db: str = "staging") -> str:
    return _as(settings, STATUS_ROLE, db)


@pytest.mark.parametrize("statement", [
    "update pipeline.batches set state = 'SUCCESS'",
    "delete from pipeline.batch_events",
    "insert into pipeline.incidents (client_name, kind, detail) values ('x', 'stale', 'x')",
    f"select count(*) from raw_{A}.person",
    "select count(*) from practice.patients",
    f"select count(*) from stg_{A}.changes_patients",
    "create table pipeline.sneaky (id int)",
])
def test_the_status_role_only_reads_the_ledger(settings: Any, two_tenants: None, statement: str) -> None:
    _refused(_status(settings), statement)


def test_the_status_role_reads_the_ledger_and_cannot_reach_production(settings: Any, two_tenants: None) -> None:
    with psycopg.connect(_status(settings)) as conn:
        assert conn.execute("select count(*) from pipeline.batches where client_name = %s", (A,)).fetchone() == (1,)
    with pytest.raises(psycopg.OperationalError, match="permission denied"):
        psycopg.connect(_status(settings, "production")).close()


def test_production_shows_each_connection_only_its_tenant(settings: Any, admin_dsn: str, two_tenants: None) -> None:
    with psycopg.connect(settings.production.conninfo()) as conn:
        assert conn.execute("select count(*) from practice.patients").fetchone() == (0,)  # no tenant named: nothing
        set_tenant(conn, A)
        assert set(conn.execute("select distinct client_id from practice.patients").fetchall()) == {(A,)}
        assert conn.execute("update practice.patients set last_name = 'x' where client_id = %s", (B,)).rowcount == 0
        with pytest.raises(errors.InsufficientPrivilege, match="row-level security"):
            conn.execute("insert into practice.providers (client_id, provider_id, last_name, specialty, active, "
                         "ingestion_id, job_id, source_file, source_row) values (%s, 'D9', 'X', 'other', true, "
                         "'i', 'j', 'f', 1)", (B,))
    with _admin(settings, admin_dsn, "production") as admin:
        forced = admin.execute("select relname from pg_class where relnamespace = 'practice'::regnamespace and "
                               "relkind = 'r' and relrowsecurity and relforcerowsecurity order by 1").fetchall()
    assert [r[0] for r in forced] == ["appointments", "patients", "procedures", "promotions", "providers"]


def test_a_promotion_cannot_touch_another_tenant_even_with_a_forged_key(settings: Any, admin_dsn: str,
                                                                        two_tenants: None) -> None:
    mapping = mapping_for(A)
    before = {c: production_rows(settings, c, "patients", "last_name") for c in (A, B)}
    batch = pipeline.ingest(settings, mapping, Practice(settings, A).write(DAY + timedelta(days=1), "r2",
                                                                          tables(3, "a2")), airflow_run_id="t")
    transform(settings, mapping, batch)
    pipeline.validate(settings, mapping, batch)
    with _admin(settings, admin_dsn, "staging") as admin:  # the change set now claims one of B's patients
        forged = admin.execute(f"update stg_{A}.changes_patients set client_id = %s where patient_id = 'P1'",
                               (B,)).rowcount
    assert forged == 1
    with pytest.raises(PermanentError, match="InsufficientPrivilege"):
        pipeline.promote(settings, mapping, batch, airflow_run_id="t")
    pipeline.mark_failed(settings, batch, "forged key", airflow_run_id="t")
    assert {c: production_rows(settings, c, "patients", "last_name") for c in (A, B)} == before


@pytest.mark.parametrize("statement", [
    f"insert into raw_{A}.person (source_row) values (1)",
    f"delete from raw_{A}.person",
    f"truncate raw_{A}.person",
    f"alter table raw_{A}.person add column note text",
    f"drop schema raw_{A} cascade",
    "update pipeline.batches set state = 'SUCCESS'",
    "insert into pipeline.batch_events (ingestion_id, state) values ('x', 'SUCCESS')",
    "delete from pipeline.rejects",
    "update pipeline.client_fence set token = token + 1",
    "select count(*) from pipeline.batches",
    "create table pipeline.sneaky (id int)",
    "delete from practice.patients",
    "truncate practice.appointments",
    "drop table practice.procedures",
    "alter table practice.patients add column note text",
])
def test_the_transformer_may_not_write_raw_or_the_ledger_or_delete_dummy_production(
        settings: Any, two_tenants: None, statement: str) -> None:
    _refused(_as(settings, TRANSFORMER_ROLE), statement)


@pytest.mark.parametrize("statement", [
    f"create table stg_{A}.sneaky (id int)",
    f"drop table stg_{A}.stg_patients",
    f"alter table stg_{A}.changes_patients add column note text",
    f"insert into stg_{A}.changes_patients (client_id) values ('x')",
    f"truncate stg_{A}.undo_patients",
    f"drop schema stg_{A} cascade",
    "drop table practice.patients",
    "alter table practice.patients add column note text",
    "truncate practice.patients",
    "create table practice.sneaky (id int)",
    "drop table pipeline.batches",
    "alter table pipeline.batches add column note text",
    "create table pipeline.sneaky (id int)",
    "set session_replication_role = replica",
])
def test_the_loader_may_not_do_dbt_s_ddl_or_change_the_fixed_schemas(settings: Any, two_tenants: None,
                                                                      statement: str) -> None:
    _refused(settings.staging.conninfo(), statement)


@pytest.mark.parametrize("role", [LOADER_ROLE, TRANSFORMER_ROLE])
def test_the_staging_roles_cannot_reach_production(settings: Any, two_tenants: None, role: str) -> None:
    with pytest.raises(psycopg.OperationalError, match="permission denied"):
        psycopg.connect(_as(settings, role, "production")).close()


def test_the_transformer_reads_raw_and_the_batch_s_jobs_and_checks_the_fence(settings: Any, two_tenants: None) -> None:
    with psycopg.connect(_as(settings, TRANSFORMER_ROLE)) as conn:
        (raw_rows,) = conn.execute(f"select count(*) from raw_{A}.person").fetchone() or (0,)
        (jobs,) = conn.execute("select count(*) from pipeline.jobs where client_name = %s", (A,)).fetchone() or (0,)
        assert raw_rows >= 3 and jobs >= 3
        # the fence check runs as the ledger's owner: a stale token is refused as stale, not for privileges
        with pytest.raises(psycopg.Error) as stale:
            conn.execute("select pipeline.check_fence(%s, -1)", (A,))
    assert stale.value.sqlstate == "CF001"


def test_the_loader_reads_dbt_s_tables_and_empties_the_undo_tables(settings: Any, two_tenants: None) -> None:
    with psycopg.connect(settings.staging.conninfo()) as conn:
        assert conn.execute(f"select count(*) from stg_{A}.stg_patients").fetchone() == (3,)
        conn.execute(f"delete from stg_{A}.undo_patients")
        conn.rollback()
