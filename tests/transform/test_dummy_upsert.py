"""The dummy-production write (dbt/macros/materializations/dummy_upsert.sql) checks each foreign key
of the rows it writes once per batch, with the per-row triggers off: a reference to no parent fails
the model and rolls it back. Real dbt, real staging database."""

from __future__ import annotations

from datetime import date
from typing import Any

import psycopg
import pytest
from psycopg import sql

from clientflow import pipeline
from tests.support.practice import Practice, mapping_for, tables
from tests.support.transform import TransformFailed, as_transformer, transform

DAY = date(2026, 10, 12)
ONE_MODEL = {"command": "run", "select": "practice.appointments"}  # dummy production's appointments only


def _offer_one_appointment(conn: psycopg.Connection[Any], client: str, appointment_id: str, patient_id: str) -> None:
    """Make the batch's change set of appointments one new row, referring to ``patient_id``."""
    changes = sql.Identifier(f"stg_{client}", "changes_appointments")
    conn.execute(sql.SQL("delete from {} where ctid <> (select min(ctid) from {})").format(changes, changes))
    conn.execute(sql.SQL("update {} set appointment_id = %s, patient_id = %s, change = 'insert'").format(changes),
                 (appointment_id, patient_id))


def _dummy_appointment(settings: Any, client: str, appointment_id: str) -> tuple[Any, ...] | None:
    with psycopg.connect(settings.staging.conninfo()) as conn:
        return conn.execute("select patient_id from practice.appointments where client_id = %s and appointment_id = %s",
                            (client, appointment_id)).fetchone()


def test_a_row_whose_parent_dummy_production_lacks_fails_its_model(settings: Any) -> None:
    mapping = mapping_for("dummy_fk")
    found = Practice(settings, mapping.client).write(DAY, "r1", tables(3))
    batch = pipeline.ingest(settings, mapping, found, airflow_run_id="t")
    transform(settings, mapping, batch)  # the batch as it is: dummy production holds it
    try:
        with psycopg.connect(as_transformer(settings).conninfo()) as conn:  # dbt's role owns the change sets
            _offer_one_appointment(conn, mapping.client, "A-orphan", "P-nowhere")
        with pytest.raises(TransformFailed) as failed:
            transform(settings, mapping, batch, **ONE_MODEL)
        assert "1 row(s) of appointments.patient_id refer to no parent row" in failed.value.output
        assert _dummy_appointment(settings, mapping.client, "A-orphan") is None  # the model rolled back
    finally:
        pipeline.mark_failed(settings, batch, "test", airflow_run_id="t")  # undoes the first load
    with psycopg.connect(settings.staging.conninfo()) as conn:
        assert conn.execute("select count(*) from practice.appointments where client_id = %s",
                            (mapping.client,)).fetchone() == (0,)
