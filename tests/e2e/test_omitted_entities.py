"""A client that feeds only some of our entities: its DAG runs, production gets those entities,
and the others stay untouched (empty staging models, nothing promoted for them)."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.support.dags import test_client_dag
from tests.support.practice import TABLES, Practice, mapping_for, production_rows, tables

pytestmark = pytest.mark.e2e


def test_a_client_without_appointments_or_procedures(settings: Any, airflow_db: Path) -> None:
    full = mapping_for("only_people")
    mapping = mapping_for("only_people", tables={
        name: spec.model_dump(exclude_none=True) for name, spec in full.tables.items() if spec.entity != "appointments"})
    assert list(mapping.entities) == ["providers", "patients"]
    data = {k: v for k, v in tables(4).items() if k != TABLES["appointments"]}
    Practice(settings, mapping.client).write(date(2026, 9, 20), "r1", data, mapping=mapping)

    dag_run = test_client_dag(mapping, conf={"batch_date": "2026-09-20"})

    assert dag_run.state == "success"
    assert len(production_rows(settings, mapping.client, "patients")) == 4
    assert len(production_rows(settings, mapping.client, "providers")) == 3
    assert production_rows(settings, mapping.client, "appointments") == {}
    with psycopg.connect(settings.staging.conninfo()) as conn:
        assert conn.execute("select count(*) from stg_only_people.stg_appointments").fetchone() == (0,)
