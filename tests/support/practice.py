"""A small synthetic client ("a practice") for tests that drive the pipeline stages directly.

``mapping_for`` builds the client's mapping in memory; ``Practice`` makes its three tables for a
given version of the data and writes them to the bucket as one extractor run, optionally broken
(a table missing, a manifest missing, a column renamed). Values are made up and deterministic.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import psycopg

from clientflow.arrival import batch_files
from clientflow.batch import Batch
from clientflow.db import set_tenant
from clientflow.entities import BY_NAME
from clientflow.mapping import ClientMapping
from clientflow.operations import ledger
from tests.support.batches import job_id, manifest_for, put_table

TABLES = {"providers": "clinician", "patients": "person", "appointments": "visit"}


def mapping_for(client: str, **overrides: Any) -> ClientMapping:
    data: dict[str, Any] = {
        "client": client,
        "display_name": f"Test practice {client}",
        "owners": ["oncall@clientflow.example"],
        "start_date": "2026-01-01",
        "raw_retention_batches": 2,
        "tables": {
            TABLES["providers"]: {"entity": "providers", "columns": {
                "provider_id": "prov_id", "last_name": "prov_last",
                "specialty": {"source": "prov_kind", "values": {"dentist": "general_dentistry", "rdh": "hygiene"}},
                "active": {"source": "is_active", "boolean": {"true": ["y"], "false": ["n"]}},
            }},
            TABLES["patients"]: {"entity": "patients", "columns": {
                "patient_id": "pt_id", "last_name": "pt_last", "date_of_birth": "patient_dob",
                "sex": {"source": "gender", "values": {"f": "female", "m": "male"}, "default": "unknown"},
            }},
            TABLES["appointments"]: {"entity": "appointments", "columns": {
                "appointment_id": "appt_id", "patient_id": "pt_id", "provider_id": "prov_id",
                "starts_at": "appt_start", "duration_minutes": "appt_len", "status": "appt_status",
            }},
        },
    }
    data.update(overrides)
    return ClientMapping.model_validate(data)


def tables(patients: int, version: str = "a", visits: int | None = None) -> dict[str, list[dict[str, Any]]]:
    """Rows of the three tables; ``version`` goes into every patient's last name."""
    providers = [{"prov_id": f"D{i}", "prov_last": f"Prov{i}", "prov_kind": "dentist" if i % 2 else "rdh",
                  "is_active": "y"} for i in range(3)]
    people = [{"pt_id": f"P{i}", "pt_last": f"Name{i}-{version}", "patient_dob": f"19{50 + i % 50}-0{1 + i % 9}-1{i % 10}",
               "gender": "fm"[i % 2]} for i in range(patients)]
    visits = [{"appt_id": f"A{i}", "pt_id": f"P{i % patients}", "prov_id": f"D{i % 3}",
               "appt_start": f"2026-0{1 + i % 9}-0{1 + i % 9}T09:30:00Z", "appt_len": 30 + i % 4 * 15,
               "appt_status": "completed"} for i in range(patients if visits is None else visits)]
    return {TABLES["providers"]: providers, TABLES["patients"]: people, TABLES["appointments"]: visits}


def _columns(rows: list[dict[str, Any]], encodings: dict[str, str]) -> list[dict[str, Any]]:
    return [{"name": n, "source_type": encodings.get(n, "text"), "encoding": encodings.get(n, "string"),
             "nullable": True, "primary_key": False} for n in rows[0]]


@dataclass
class Practice:
    """Writes batches of one test client to the bucket."""

    settings: Any
    client: str
    written: list[tuple[date, str]] = field(default_factory=list)

    def write(self, day: date, run_id: str, data: dict[str, list[dict[str, Any]]], *,
              skip_manifest: tuple[str, ...] = (), skip_table: tuple[str, ...] = (),
              encodings: dict[str, str] | None = None, corrupt: tuple[str, ...] = (),
              mapping: ClientMapping | None = None, incremental: dict[str, str] | None = None) -> Batch:
        """Upload one run; returns the batch ``find_batch`` would return for it (its files as the
        given mapping, by default the standard test mapping, names them). ``incremental``: table ->
        cursor column of the files written as incremental ones."""
        s3 = self.settings.s3.client()
        for table, rows in data.items():
            if table in skip_table:
                continue
            body = json.dumps(rows).encode()
            manifest = manifest_for(self.client, table, day, run_id, body, len(rows),
                                    _columns(rows, encodings or {}), (incremental or {}).get(table))
            if table in corrupt:  # uploaded bytes no longer match the manifest
                body = body.replace(b"Name", b"Nane", 1)
            put_table(s3, self.settings.s3.bucket, self.client, table, day, run_id, body,
                      None if table in skip_manifest else manifest)
        self.written.append((day, run_id))
        mapping = mapping or mapping_for(self.client)
        return Batch(client=self.client, day=day, run_id=run_id, files=batch_files(mapping, day, run_id))


def ingestion_id(client: str, day: date, data: dict[str, list[dict[str, Any]]]) -> str:
    """The ledger id the pipeline derives for these exact tables."""
    import hashlib

    jobs = [job_id(client, t, day, hashlib.sha256(json.dumps(rows).encode()).hexdigest()) for t, rows in data.items()]
    return ledger.ingestion_id_for(client, day, jobs)


def production_rows(settings: Any, client: str, entity: str, *columns: str) -> dict[str, tuple[Any, ...]]:
    key = BY_NAME[entity].key
    cols = ", ".join([key, *columns])
    with psycopg.connect(settings.production.conninfo()) as conn:
        set_tenant(conn, client, local=False)  # production's row-level security
        return {r[0]: tuple(r[1:]) for r in conn.execute(
            f"select {cols} from practice.{entity} where client_id = %s", (client,))}  # noqa: S608 (test names)


def raw_counts(settings: Any, client: str, table: str) -> dict[str, int]:
    """ingestion_id -> rows of the client's raw table."""
    with psycopg.connect(settings.staging.conninfo()) as conn:
        if not conn.execute("select to_regclass(%s)", (f'raw_{client}."{table}"',)).fetchone()[0]:
            return {}
        return dict(conn.execute(
            f'select ingestion_id, count(*) from raw_{client}."{table}" group by 1').fetchall())  # noqa: S608


def history(settings: Any, ingestion: str) -> list[str]:
    with psycopg.connect(settings.staging.conninfo()) as conn:
        return ledger.history(conn, ingestion)


def run_batch(settings: Any, mapping: ClientMapping, found: Batch, *, holder: str = "test",
              dbt_vars: dict[str, Any] | None = None) -> Batch:
    """ingest -> dbt -> validate -> promote, as the DAG would; returns the promoted batch.
    ``dbt_vars``: the project's own dbt vars to set (tests/support/transform.py)."""
    from clientflow import pipeline
    from tests.support.transform import transform

    batch = pipeline.ingest(settings, mapping, found, airflow_run_id=holder)
    try:
        transform(settings, mapping, batch, dbt_vars)
        pipeline.validate(settings, mapping, batch)
        pipeline.promote(settings, mapping, batch, airflow_run_id=holder)
    except BaseException as exc:
        pipeline.mark_failed(settings, batch, type(exc).__name__, airflow_run_id=holder)
        raise
    return batch


def snapshot(conninfo: str, client: str) -> dict[str, set[tuple[Any, ...]]]:
    """Every row (all production columns) of a client, per entity: to compare dummy production
    (the staging database's practice schema) with production."""
    out = {}
    with psycopg.connect(conninfo) as conn:
        set_tenant(conn, client, local=False)  # production's row-level security
        for name, entity in BY_NAME.items():
            cols = ", ".join(entity.production_columns)
            out[name] = set(conn.execute(f"select {cols} from practice.{name} where client_id = %s",  # noqa: S608
                                         (client,)).fetchall())
    return out


def assert_dummy_equals_production(settings: Any, client: str) -> None:
    assert snapshot(settings.staging.conninfo(), client) == snapshot(settings.production.conninfo(), client)
