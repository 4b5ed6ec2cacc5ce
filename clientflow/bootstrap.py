"""Create the staging and production databases, their least-privilege roles, and their schemas.

Idempotent: running it again changes nothing. Production DDL (``include/sql/production.sql``) is
applied verbatim to production's ``practice`` schema and to staging's ``practice`` schema (the
dummy production), so both always have the same tables and constraints.

Each database records the version of the DDL it was built with (a hash of the SQL files, in the
database's comment). ``--reset-outdated`` (the local stack) drops and rebuilds databases built by
an older version; without it an outdated database is an error that says so, never a silent mix.

Roles:
- ``clientflow_staging`` owns the staging database (raw tables, dummy production, ledger, dbt).
- ``clientflow_promoter`` may only read and upsert production's practice tables: no DELETE, no
  DDL, nothing else; and only the rows of the client its transaction names (row-level security,
  ``include/sql/production_rls.sql``).
- ``clientflow_status`` (the status page, the metrics) may only read the ledger (schema
  ``pipeline`` of staging): not the raw tables, not dummy production, not production.
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

log = logging.getLogger(__name__)

SQL_DIR = Path(__file__).resolve().parent.parent / "include" / "sql"
STAGING_ROLE = "clientflow_staging"
PROMOTER_ROLE = "clientflow_promoter"
STATUS_ROLE = "clientflow_status"
PRACTICE_SCHEMA = "practice"


def _ensure_role(admin: psycopg.Connection[Any], role: str, password: str) -> None:
    if not admin.execute("select 1 from pg_roles where rolname = %s", (role,)).fetchone():
        admin.execute(sql.SQL("create role {} login").format(sql.Identifier(role)))
    admin.execute(sql.SQL("alter role {} password {}").format(sql.Identifier(role), sql.Literal(password)))


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
        admin.execute(sql.SQL("create database {} owner {}").format(sql.Identifier(name), sql.Identifier(owner)))
        admin.execute(sql.SQL("comment on database {} is {}").format(sql.Identifier(name), sql.Literal(schema_version())))


def apply_production_ddl(conn: psycopg.Connection[Any], *, row_security: bool = False) -> None:
    """Production's tables (and, with ``row_security``, its tenant policies) in schema practice."""
    conn.execute(sql.SQL("create schema if not exists {}").format(sql.Identifier(PRACTICE_SCHEMA)))
    conn.execute(sql.SQL("set local search_path to {}").format(sql.Identifier(PRACTICE_SCHEMA)))
    conn.execute((SQL_DIR / "production.sql").read_text(encoding="utf-8"))
    if row_security:
        conn.execute((SQL_DIR / "production_rls.sql").read_text(encoding="utf-8"))
    conn.execute("reset search_path")


def grant_status_role(conn: psycopg.Connection[Any], staging_db: str) -> None:
    """The status role reads the ledger and nothing else (run as the ledger's owner)."""
    role = sql.Identifier(STATUS_ROLE)
    conn.execute(sql.SQL("grant connect on database {} to {}").format(sql.Identifier(staging_db), role))
    conn.execute(sql.SQL("grant usage on schema pipeline to {}").format(role))
    conn.execute(sql.SQL("grant select on all tables in schema pipeline to {}").format(role))
    conn.execute(sql.SQL("alter default privileges in schema pipeline grant select on tables to {}").format(role))


def bootstrap(admin_dsn: str, staging_db: str, production_db: str, *, reset_outdated: bool = False) -> None:
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        _ensure_role(admin, STAGING_ROLE, os.environ.get("CLIENTFLOW_STAGING_PASSWORD", "local-only-staging"))
        _ensure_role(admin, PROMOTER_ROLE, os.environ.get("CLIENTFLOW_PROMOTER_PASSWORD", "local-only-promoter"))
        _ensure_role(admin, STATUS_ROLE, os.environ.get("CLIENTFLOW_STATUS_PASSWORD", "local-only-status"))
        _ensure_database(admin, staging_db, STAGING_ROLE, reset_outdated)
        _ensure_database(admin, production_db, "postgres", reset_outdated)

    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        # Both write a batch with per-row foreign-key triggers off and check the keys once per
        # batch instead (clientflow.promotion.promote, the dummy_upsert materialization).
        admin.execute(sql.SQL("grant set on parameter session_replication_role to {}, {}").format(
            sql.Identifier(STAGING_ROLE), sql.Identifier(PROMOTER_ROLE)))

    with psycopg.connect(psycopg.conninfo.make_conninfo(admin_dsn, dbname=staging_db)) as conn:
        conn.execute(sql.SQL("set role {}").format(sql.Identifier(STAGING_ROLE)))
        apply_production_ddl(conn)
        conn.execute((SQL_DIR / "pipeline.sql").read_text(encoding="utf-8"))
        grant_status_role(conn, staging_db)

    with psycopg.connect(psycopg.conninfo.make_conninfo(admin_dsn, dbname=production_db)) as conn:
        apply_production_ddl(conn, row_security=True)
        conn.execute(sql.SQL("revoke all on database {} from public").format(sql.Identifier(production_db)))
        conn.execute(
            sql.SQL("grant connect, temporary on database {} to {}").format(
                sql.Identifier(production_db), sql.Identifier(PROMOTER_ROLE)
            )
        )
        conn.execute(
            sql.SQL("grant usage on schema {} to {}").format(
                sql.Identifier(PRACTICE_SCHEMA), sql.Identifier(PROMOTER_ROLE)
            )
        )
        conn.execute(
            sql.SQL("grant select, insert, update on all tables in schema {} to {}").format(
                sql.Identifier(PRACTICE_SCHEMA), sql.Identifier(PROMOTER_ROLE)
            )
        )
        conn.execute(sql.SQL("grant execute on function {}.refresh_statistics(text) to {}").format(
            sql.Identifier(PRACTICE_SCHEMA), sql.Identifier(PROMOTER_ROLE)))
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
