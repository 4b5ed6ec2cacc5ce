"""Create the staging and production databases, their least-privilege roles, and their schemas.

Idempotent: running it again changes nothing; two at once take turns (``BOOTSTRAP_LOCK``).
Production DDL (``include/sql/production.sql``) is applied verbatim to production's ``practice``
schema and to staging's ``practice`` schema (the dummy production), so both always have the same
tables and constraints.

Each database records the version of the DDL it was built with (a hash of the SQL files, in the
database's comment). ``--reset-outdated`` (the local stack) drops and rebuilds databases built by
an older version; without it an outdated database is an error that says so, never a silent mix.

Roles (docs/security.md has the table):
- ``clientflow_owner`` (cannot log in) owns the staging database and its fixed schemas: the
  ledger (``pipeline``) and dummy production (``practice``). Only this bootstrap acts as it.
- ``clientflow_loader`` (connection ``clientflow_staging``: every Python task, the command line)
  creates and owns the raw schemas ``raw_<client>``, reads and writes the ledger, reads dbt's
  ``stg_<client>`` tables (validation, the promotion's change sets) and puts dummy production back
  after a failed batch (the undo, the restore). No DDL outside its raw schemas.
- ``clientflow_transformer`` (connection ``clientflow_transformer``: dbt, run by Cosmos) creates
  and owns the schemas ``stg_<client>``, reads the raw tables and the ledger's ``jobs``, merges
  into dummy production (select, insert, update) and checks the client's fence through
  ``pipeline.check_fence`` (security definer). It writes neither the ledger nor raw.
  Raw and dbt schemas appear at run time, so each role's default privileges grant the other what
  it reads in them.
- ``clientflow_promoter`` may only read and upsert production's practice tables: no DELETE, no
  DDL, nothing else; and only the rows of the client its transaction names (row-level security,
  ``include/sql/production_rls.sql``).
- ``clientflow_status`` (the status page, the metrics) may only read the ledger (schema
  ``pipeline`` of staging): not the raw tables, not dummy production, not production.
Only the promoter may connect to production. ``clientflow_staging``, the single owner-and-login
role of older versions, is neither created nor used any more.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from clientflow.entities import PRACTICE_SCHEMA

log = logging.getLogger(__name__)

SQL_DIR = Path(__file__).resolve().parent.parent / "include" / "sql"
OWNER_ROLE = "clientflow_owner"
LOADER_ROLE = "clientflow_loader"
TRANSFORMER_ROLE = "clientflow_transformer"
PROMOTER_ROLE = "clientflow_promoter"
STATUS_ROLE = "clientflow_status"
LOGIN_ROLES = {  # role: the variable of its password, and the local stack's default
    LOADER_ROLE: ("CLIENTFLOW_LOADER_PASSWORD", "local-only-loader"),
    TRANSFORMER_ROLE: ("CLIENTFLOW_TRANSFORMER_PASSWORD", "local-only-transformer"),
    PROMOTER_ROLE: ("CLIENTFLOW_PROMOTER_PASSWORD", "local-only-promoter"),
    STATUS_ROLE: ("CLIENTFLOW_STATUS_PASSWORD", "local-only-status"),
}

# The staging database's privileges, granted by the bootstrap's superuser (``{db}`` and the roles
# are identifiers). Everything not granted here is refused: SQLSTATE 42501.
STAGING_GRANTS = (
    # Only the pipeline's roles reach the staging database; the loader creates the schemas
    # raw_<client>, dbt the schemas stg_<client>, neither anything inside the other's.
    "revoke all on database {db} from public",
    "grant connect on database {db} to {loader}, {transformer}, {status}",
    "grant create on database {db} to {loader}, {transformer}",
    # The ledger: the tasks write it, dbt reads the batch's jobs and checks the client's fence
    # (pipeline.check_fence, security definer: the fence row is locked, never written, by dbt).
    "grant usage on schema pipeline to {loader}, {transformer}, {status}",
    "grant select, insert, update, delete on all tables in schema pipeline to {loader}",
    "grant usage on all sequences in schema pipeline to {loader}",
    "grant select on all tables in schema pipeline to {status}",
    "alter default privileges for role {owner} in schema pipeline"
    " grant select, insert, update, delete on tables to {loader}",
    "alter default privileges for role {owner} in schema pipeline grant usage on sequences to {loader}",
    "alter default privileges for role {owner} in schema pipeline grant select on tables to {status}",
    "grant select on pipeline.jobs to {transformer}",
    "revoke execute on function pipeline.check_fence(text, bigint) from public",
    "grant execute on function pipeline.check_fence(text, bigint) to {loader}, {transformer}",
    # Dummy production: dbt merges a batch in (dummy_upsert: insert, update); the undo of a failed
    # batch and `clientflow restore` put it back (update, delete, insert).
    "grant usage on schema practice to {loader}, {transformer}",
    "grant select, insert, update on all tables in schema practice to {transformer}",
    "grant select, insert, update, delete on all tables in schema practice to {loader}",
    "grant execute on function practice.refresh_statistics(text) to {loader}, {transformer}",
    # Created at run time: dbt reads the raw tables the loader creates; the tasks read dbt's
    # tables (validation, the change sets) and empty a failed batch's undo tables.
    "alter default privileges for role {loader} grant usage on schemas to {transformer}",
    "alter default privileges for role {loader} grant select on tables to {transformer}",
    "alter default privileges for role {transformer} grant usage on schemas to {loader}",
    "alter default privileges for role {transformer} grant select, delete on tables to {loader}",
)


def _ensure_role(admin: psycopg.Connection[Any], role: str, password: str | None) -> None:
    """A login role with this password; with None, a role that cannot log in (an owner)."""
    if not admin.execute("select 1 from pg_roles where rolname = %s", (role,)).fetchone():
        admin.execute(sql.SQL("create role {}").format(sql.Identifier(role)))
    if password is None:
        admin.execute(sql.SQL("alter role {} nologin").format(sql.Identifier(role)))
    else:
        admin.execute(sql.SQL("alter role {} login password {}").format(sql.Identifier(role), sql.Literal(password)))


def schema_version() -> str:
    """A hash of the DDL files: databases built from other files are outdated."""
    digest = hashlib.sha256()
    for name in ("production.sql", "production_rls.sql", "pipeline.sql"):
        digest.update((SQL_DIR / name).read_bytes())
    return "clientflow schema " + digest.hexdigest()[:16]


def _ensure_database(admin: psycopg.Connection[Any], name: str, owner: str, reset_outdated: bool) -> None:
    found = admin.execute(
        "select shobj_description(oid, 'pg_database') from pg_database where datname = %s", (name,)).fetchone()
    if found is not None and found[0] != schema_version():
        if not reset_outdated:
            raise SystemExit(f"database {name} was built by another version of include/sql ({found[0] or 'unknown'}); "
                             "migrate it, or rebuild it with --reset-outdated (the local stack does)")
        log.warning("database %s was built by another version of include/sql: rebuilding it", name)
        admin.execute(sql.SQL("drop database {} with (force)").format(sql.Identifier(name)))
        found = None
    if found is None:
        # UTF8 whatever template1 is (SQL_ASCII or LATIN1 on some clusters): JSON text is UTF-8, and a
        # LATIN1 database would store what it cannot encode as mojibake or refuse it.
        admin.execute(sql.SQL("create database {} owner {} encoding 'UTF8' template template0").format(
            sql.Identifier(name), sql.Identifier(owner)))
        admin.execute(sql.SQL("comment on database {} is {}").format(sql.Identifier(name), sql.Literal(schema_version())))


def apply_production_ddl(conn: psycopg.Connection[Any], *, row_security: bool = False) -> None:
    """Production's tables (and, with ``row_security``, its tenant policies) in schema practice."""
    conn.execute(sql.SQL("create schema if not exists {}").format(sql.Identifier(PRACTICE_SCHEMA)))
    conn.execute(sql.SQL("set local search_path to {}").format(sql.Identifier(PRACTICE_SCHEMA)))
    conn.execute((SQL_DIR / "production.sql").read_text(encoding="utf-8"))
    if row_security:
        conn.execute((SQL_DIR / "production_rls.sql").read_text(encoding="utf-8"))
    conn.execute("reset search_path")


def grant_staging_roles(conn: psycopg.Connection[Any], staging_db: str) -> None:
    """The loader's, the transformer's and the status role's privileges in staging (as superuser)."""
    names = {"db": staging_db, "owner": OWNER_ROLE, "loader": LOADER_ROLE, "transformer": TRANSFORMER_ROLE,
             "status": STATUS_ROLE}
    idents = {key: sql.Identifier(name) for key, name in names.items()}
    for statement in STAGING_GRANTS:
        conn.execute(sql.SQL(statement).format(**idents))


def _grant_production(conn: psycopg.Connection[Any], production_db: str) -> None:
    """The promoter reads and upserts practice's tables; nobody else may even connect."""
    promoter, practice = sql.Identifier(PROMOTER_ROLE), sql.Identifier(PRACTICE_SCHEMA)
    conn.execute(sql.SQL("revoke all on database {} from public").format(sql.Identifier(production_db)))
    conn.execute(sql.SQL("grant connect, temporary on database {} to {}").format(
        sql.Identifier(production_db), promoter))
    conn.execute(sql.SQL("grant usage on schema {} to {}").format(practice, promoter))
    conn.execute(sql.SQL("grant select, insert, update on all tables in schema {} to {}").format(practice, promoter))
    conn.execute(sql.SQL("grant execute on function {}.refresh_statistics(text) to {}").format(practice, promoter))


BOOTSTRAP_LOCK = 0x636C_6965_6E74
"""The advisory lock (in the admin connection's database) that bootstraps take in turn. Roles,
their passwords and the parameter grant are the cluster's, not one database's: two bootstraps at
once (parallel test workers, two checkouts' stacks, a container's init beside a person) would
race on them ("tuple concurrently updated", a role created twice)."""


def bootstrap(admin_dsn: str, staging_db: str, production_db: str, *, reset_outdated: bool = False) -> None:
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        admin.execute("select pg_advisory_lock(%s)", (BOOTSTRAP_LOCK,))  # held until this connection closes
        _bootstrap(admin, admin_dsn, staging_db, production_db, reset_outdated)


def _bootstrap(admin: psycopg.Connection[Any], admin_dsn: str, staging_db: str, production_db: str,
               reset_outdated: bool) -> None:
    _ensure_role(admin, OWNER_ROLE, None)
    for role, (variable, default) in LOGIN_ROLES.items():
        _ensure_role(admin, role, os.environ.get(variable, default))
    _ensure_database(admin, staging_db, OWNER_ROLE, reset_outdated)
    _ensure_database(admin, production_db, "postgres", reset_outdated)
    # Both write a batch with per-row foreign-key triggers off and check the keys once per
    # batch instead (clientflow.promotion.promote, the dummy_upsert materialization).
    admin.execute(sql.SQL("grant set on parameter session_replication_role to {}, {}").format(
        sql.Identifier(TRANSFORMER_ROLE), sql.Identifier(PROMOTER_ROLE)))

    with psycopg.connect(psycopg.conninfo.make_conninfo(admin_dsn, dbname=staging_db)) as conn:
        conn.execute(sql.SQL("set role {}").format(sql.Identifier(OWNER_ROLE)))
        apply_production_ddl(conn)
        conn.execute((SQL_DIR / "pipeline.sql").read_text(encoding="utf-8"))
        conn.execute("reset role")
        grant_staging_roles(conn, staging_db)

    with psycopg.connect(psycopg.conninfo.make_conninfo(admin_dsn, dbname=production_db)) as conn:
        apply_production_ddl(conn, row_security=True)
        _grant_production(conn, production_db)
    log.info("bootstrapped staging=%s production=%s", staging_db, production_db)


def drop(admin_dsn: str, *databases: str) -> None:
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        for name in databases:
            admin.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Create clientflow's databases, roles and schemas.")
    parser.add_argument("--admin-dsn", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--staging-db", default="clientflow_staging")
    parser.add_argument("--production-db", default="clientflow_production")
    parser.add_argument("--reset-outdated", action="store_true",
                        help="drop and rebuild databases built by another version of include/sql")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    bootstrap(args.admin_dsn, args.staging_db, args.production_db, reset_outdated=args.reset_outdated)


if __name__ == "__main__":
    main()
