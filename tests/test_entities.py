"""Our target schema is declared once (clientflow/entities.py); every other place follows it.

- the dbt models and their YAML are generated from it: the committed files must be current;
- production.sql is written by hand: its catalog must equal that of tables built from the
  declaration (columns, types, NOT NULL, primary and foreign keys, CHECKs, foreign-key indexes);
- production and the staging replica (dummy production) hold exactly the declared columns.
"""

from __future__ import annotations

import json
import re
from typing import Any

import psycopg
import pytest
from psycopg import sql

from client_extractor.contract import CLIENT_NAME
from clientflow import bootstrap
from clientflow.entities import BY_NAME, CLIENT_KEY, ENTITIES, TENANT_CHECK, Column, Entity
from clientflow.transform import generate


def test_generated_dbt_files_are_current() -> None:
    stale = generate.stale()
    assert not stale, f"run `python -m clientflow.transform.generate`: {[p.name for p in stale]}"


def test_generator_follows_the_declaration() -> None:
    """A column added to the declaration appears in every generated layer (so a check can fail)."""
    patients = next(e for e in ENTITIES if e.name == "patients")
    grown = Entity(patients.name, patients.key, (*patients.columns, Column("shoe_size", "integer")),
                   patients.description)
    assert "shoe_size" in generate.staging_sql(grown)
    assert "shoe_size" in generate.practice_sql(grown)
    assert "shoe_size" in grown.production_columns


def test_a_child_is_typed_beside_its_parents() -> None:
    """In dbt's graph (the manifest `make install` parses), the typed model of an entity with
    parents waits for no other model, so dbt's threads type appointments and procedures while
    stg_patients runs; the child's staging model reads it and its parents' staging models."""
    manifest = json.loads((generate.DBT_DIR / "target" / "manifest.json").read_text(encoding="utf-8"))
    depends = {node["name"]: {manifest["nodes"][d]["name"] for d in node["depends_on"]["nodes"]}
               for node in manifest["nodes"].values() if node["resource_type"] == "model"}
    for entity in ENTITIES:
        if not entity.parents:
            assert f"typed_{entity.name}" not in depends, entity.name
            continue
        assert depends[f"typed_{entity.name}"] == set(), entity.name
        assert depends[f"stg_{entity.name}"] == {f"typed_{entity.name}", *(f"stg_{fk.parent}" for fk in entity.parents)}


def _column_ddl(column: Column) -> sql.Composable:
    parts: list[sql.Composable] = [sql.Identifier(column.name), sql.SQL(column.sql_type)]
    if column.required:
        parts.append(sql.SQL("not null"))
    if column.accepted:
        parts.append(sql.SQL("check ({} in ({}))").format(
            sql.Identifier(column.name), sql.SQL(", ").join(map(sql.Literal, column.accepted))))
    return sql.SQL(" ").join(parts)


def declared_ddl(entity: Entity) -> sql.Composable:
    """The table the declaration describes (what production.sql must be equivalent to)."""
    items = [_column_ddl(c) for c in entity.table_columns]
    items += [sql.SQL(f"check ({c.check})") for c in entity.table_columns if c.check]
    items.append(sql.SQL("primary key ({})").format(sql.SQL(", ").join(map(sql.Identifier, entity.primary_key))))
    for fk in entity.parents:
        items.append(sql.SQL("foreign key ({}, {}) references {} ({}, {})").format(
            sql.Identifier(CLIENT_KEY), sql.Identifier(fk.column), sql.Identifier(fk.parent),
            sql.Identifier(CLIENT_KEY), sql.Identifier(fk.column)))
    create = sql.SQL("create table {} ({})").format(sql.Identifier(entity.name), sql.SQL(", ").join(items))
    indexes = [sql.SQL("create index on {} ({}, {})").format(
        sql.Identifier(entity.name), sql.Identifier(CLIENT_KEY), sql.Identifier(fk.column)) for fk in entity.parents]
    indexes.append(sql.SQL("create index on {} (ingestion_id)").format(sql.Identifier(entity.name)))  # a batch's rows
    return sql.SQL("; ").join([create, *indexes])


def catalog(conn: psycopg.Connection[Any], schema: str, table: str) -> dict[str, Any]:
    oid = f'"{schema}"."{table}"'
    columns = conn.execute(
        "select attname, format_type(atttypid, atttypmod), attnotnull from pg_attribute "
        "where attrelid = %s::regclass and attnum > 0 and not attisdropped order by attnum", (oid,)).fetchall()
    constraints = conn.execute(
        "select contype, pg_get_constraintdef(oid) from pg_constraint where conrelid = %s::regclass",
        (oid,)).fetchall()
    indexes = conn.execute(
        "select array(select attname from unnest(i.indkey) with ordinality k(n, o) "
        "join pg_attribute a on a.attrelid = i.indrelid and a.attnum = k.n order by o) "
        "from pg_index i where i.indrelid = %s::regclass", (oid,)).fetchall()
    return {
        "columns": columns,
        # A foreign key names its target's schema: compare without it.
        "constraints": sorted((kind, text.replace(f"REFERENCES {schema}.", "REFERENCES ")) for kind, text in constraints),
        "indexes": sorted(tuple(r[0]) for r in indexes),
    }


def test_production_ddl_matches_the_declaration(scratch_db: str) -> None:
    with psycopg.connect(scratch_db) as conn:
        bootstrap.apply_production_ddl(conn)
        conn.execute("create schema declared")
        conn.execute("set search_path to declared")
        for entity in ENTITIES:
            conn.execute(declared_ddl(entity))
        conn.execute("reset search_path")
        for entity in ENTITIES:
            written = catalog(conn, "practice", entity.name)
            declared = catalog(conn, "declared", entity.name)
            assert written == declared, entity.name


def test_production_and_dummy_production_hold_the_declared_columns(settings: Any) -> None:
    for target in (settings.production, settings.staging):
        with psycopg.connect(target.conninfo()) as conn:
            for entity in ENTITIES:
                found = [r[0] for r in conn.execute(
                    "select column_name from information_schema.columns where table_schema = 'practice' "
                    "and table_name = %s order by ordinal_position", (entity.name,))]
                assert found == list(entity.production_columns), (target.dbname, entity.name)


def _passes(conn: psycopg.Connection[Any], check: str, column: str, value: str) -> bool:
    """Whether PostgreSQL's CHECK ``check`` on ``column`` accepts ``value``."""
    row = conn.execute(sql.SQL("select coalesce({}, true) from (select %s::text as {}) as t").format(
        sql.SQL(check), sql.Identifier(column)), (value,)).fetchone()
    assert row is not None
    return bool(row[0])


NAMES = ["a", "ehrlogic", "a_b9", "a" * 40, "a" * 41, "", "A", "Acme", "1abc", "_a", "a-b", "a b", "aé", "é",
         "ab\n", "a\nb", "ab ", "a" * 39 + "_", "z" * 40 + "\n"]


def test_the_tenant_check_accepts_exactly_the_client_names(settings: Any) -> None:
    """production.sql's CHECK on client_id (written without a counted repeat, for speed) and the
    client-name rule every other place applies (client_extractor.contract.CLIENT_NAME) agree."""
    with psycopg.connect(settings.staging.conninfo()) as conn:
        for name in NAMES:
            assert _passes(conn, TENANT_CHECK, CLIENT_KEY, name) is bool(CLIENT_NAME.fullmatch(name)), repr(name)


@pytest.mark.parametrize(("entity", "column", "rule"), [
    ("patients", "phone", r"^\+?[0-9]{7,15}$"),  # an optional +, then 7 to 15 digits
    ("providers", "npi", r"^[0-9]{10}$"),  # ten digits
])
def test_a_check_written_for_speed_keeps_its_rule(settings: Any, entity: str, column: str, rule: str) -> None:
    """The CHECKs written with length() and an uncounted repeat accept what the counted rule does."""
    check = BY_NAME[entity].column(column).check
    assert check is not None
    values = ["", "+", "++1234567", "1234567+", "12345a7", "+12345a78", " 1234567890", "1234567890 ", "١٢٣٤٥٦٧٨٩٠",
              *("1" * n for n in range(5, 18)), *("+" + "1" * n for n in range(5, 18))]
    with psycopg.connect(settings.staging.conninfo()) as conn:
        for value in values:
            assert _passes(conn, check, column, value) is bool(re.fullmatch(rule, value)), repr(value)
