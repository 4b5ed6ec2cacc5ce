"""Schema registry and drift, on real PostgreSQL and S3: a renamed mapped column stops the batch
before dbt with the rename named; other changes follow the client's evolve / warn / fail policy."""

from __future__ import annotations

import logging
from datetime import date
from pathlib import Path
from typing import Any

import psycopg
import pytest

from clientflow import pipeline
from clientflow.arrival.manifest import Manifest
from clientflow.errors import DriftError, Where
from clientflow.integrity import registry
from tests.support.dags import test_client_dag
from tests.support.mail import body_of, read_mail
from tests.support.practice import Practice, mapping_for, production_rows, raw_counts, run_batch, tables


def _renamed(data: dict[str, list[dict[str, Any]]], old: str, new: str) -> dict[str, list[dict[str, Any]]]:
    return {t: [{(new if k == old else k): v for k, v in row.items()} for row in rows] for t, rows in data.items()}


def _versions(settings: Any, client: str) -> int:
    with psycopg.connect(settings.staging.conninfo()) as conn:
        return conn.execute("select count(*) from pipeline.schema_registry where client_name = %s",
                            (client,)).fetchone()[0]


@pytest.mark.parametrize("mode", ["full", "incremental"])
def test_renamed_mapped_column_stops_the_batch_before_dbt(settings: Any, mode: str) -> None:
    """The same check for a full snapshot and an incremental file (the registry and drift apply to both)."""
    client = "drift_rename" if mode == "full" else "drift_rename_inc"
    mapping = mapping_for(client)
    practice = Practice(settings, mapping.client)
    earlier = run_batch(settings, mapping, practice.write(date(2026, 6, 1), "r1", tables(3)))
    versions = _versions(settings, mapping.client)
    incremental = {"person": "pt_id"} if mode == "incremental" else None
    renamed = practice.write(date(2026, 6, 2), "r2", _renamed(tables(3, "b"), "patient_dob", "dob"),
                             incremental=incremental)

    with pytest.raises(DriftError) as caught:
        pipeline.ingest(settings, mapping, renamed, airflow_run_id="drift")

    message = str(caught.value)
    assert "mapped column 'patient_dob' (our patients.date_of_birth) is missing" in message
    assert "probably renamed to 'dob'" in message and f"include/mappings/{client}.yaml" in message
    assert "table=person" in message and "stopped before transformation" in message
    assert raw_counts(settings, mapping.client, "person") == {earlier.ingestion_id: 3}
    assert _versions(settings, mapping.client) == versions
    with psycopg.connect(settings.staging.conninfo()) as conn:  # in the ledger, for the failure callback
        assert conn.execute("select state from pipeline.batches where client_name = %s and batch_date = %s",
                            (mapping.client, date(2026, 6, 2))).fetchall() == [("PENDING",)]
    pipeline.mark_failed(settings, renamed, "drift", airflow_run_id="drift")  # what the callback does
    with psycopg.connect(settings.staging.conninfo()) as conn:
        assert conn.execute("select state from pipeline.batches where client_name = %s and batch_date = %s",
                            (mapping.client, date(2026, 6, 2))).fetchall() == [("FAILED",)]


def test_rename_through_the_dag_fails_without_retries(settings: Any, airflow_db: Path, smtp_mailbox: Path) -> None:
    mapping = mapping_for("drift_dag")
    practice = Practice(settings, mapping.client)
    practice.write(date(2026, 6, 3), "r1", _renamed(tables(3), "patient_dob", "dob"))
    mail_before = len(read_mail(smtp_mailbox))

    dag_run = test_client_dag(mapping, conf={"batch_date": "2026-06-03"})

    assert dag_run.state == "failed"
    ingest = dag_run.get_task_instance("ingest")
    assert ingest.state == "failed" and ingest.try_number == 1
    assert dag_run.get_task_instance("promote").state != "success"
    assert production_rows(settings, mapping.client, "patients") == {}
    mails = read_mail(smtp_mailbox)[mail_before:]
    assert len(mails) == 1
    assert "probably renamed to 'dob'" in body_of(mails[0])
    with psycopg.connect(settings.staging.conninfo()) as conn:  # FAILED: reprocessed once the mapping is fixed
        assert conn.execute("select state from pipeline.batches where client_name = %s",
                            (mapping.client,)).fetchall() == [("FAILED",)]
        (ingestion_id,) = conn.execute("select ingestion_id from pipeline.batches where client_name = %s",
                                       (mapping.client,)).fetchone()
    assert f"job {ingestion_id}:" in mails[0]["Subject"]  # the email names the batch the ledger knows


def _manifest(client: str, columns: list[tuple[str, str]]) -> Manifest:
    return Manifest.model_validate({
        "format_version": 1, "job_id": "0" * 32, "client": client, "table": "person", "schema": "public",
        "date": "2026-06-04", "run_id": "r1", "extracted_at": "2026-06-04T00:00:00Z",
        "extractor_version": "test", "source_dialect": "postgresql", "row_count": 0, "byte_size": 2,
        "sha256": "0" * 64,
        "columns": [{"name": n, "source_type": t, "encoding": "string"} for n, t in columns],
    })


BASE = [("pt_id", "text"), ("pt_last", "text"), ("patient_dob", "date"), ("gender", "text"), ("note", "text")]
CHANGES = {
    "new_columns": [*BASE, ("middle_name", "text")],
    "removed_columns": BASE[:-1],
    "type_changes": [*BASE[:-1], ("note", "varchar(40)")],
}


@pytest.mark.parametrize("rule", ["evolve", "warn", "fail"])
@pytest.mark.parametrize("setting", sorted(CHANGES))
def test_schema_policy(settings: Any, caplog: pytest.LogCaptureFixture, setting: str, rule: str) -> None:
    client = f"drift_policy_{setting[:3]}_{rule}"
    mapping = mapping_for(client, schema_policy={"new_columns": "evolve", "removed_columns": "evolve",
                                                 "type_changes": "evolve", setting: rule})
    where = Where(client=client, table="person")
    with psycopg.connect(settings.staging.conninfo()) as conn:  # rolled back at the end
        registry.register(conn, mapping, _manifest(client, BASE), "first", where)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="clientflow.integrity.registry"):
            if rule == "fail":
                with pytest.raises(DriftError, match="schema change not allowed by policy"):
                    registry.register(conn, mapping, _manifest(client, CHANGES[setting]), "second", where)
            else:
                registry.register(conn, mapping, _manifest(client, CHANGES[setting]), "second", where)
        versions = conn.execute("select version, change from pipeline.schema_registry where client_name = %s "
                                "order by 1", (client,)).fetchall()
        conn.rollback()
    assert [v for v, _ in versions] == ([1] if rule == "fail" else [1, 2])
    assert versions[0][1] is None  # the first version of a table is not a change
    if rule != "fail":  # the registry says what changed
        word = {"new_columns": "added", "removed_columns": "removed", "type_changes": "type changed"}[setting]
        assert versions[1][1].startswith(word)
    warned = [r.getMessage() for r in caplog.records]
    if rule == "warn":
        assert len(warned) == 1 and "schema change" in warned[0] and "table=person" in warned[0]
    else:
        assert warned == []


def test_diff_names_added_removed_renamed_and_retyped() -> None:
    before = [{"name": n, "source_type": t, "encoding": "string"} for n, t in BASE]
    after = _manifest("drift_diff", [("pt_id", "text"), ("pt_last", "text"), ("dob", "date"),
                                     ("gender", "varchar(1)"), ("insurer", "text")])
    drift = registry.diff(before, after)
    assert drift.renamed == {"patient_dob": "dob"}
    assert set(drift.added) == {"dob", "insurer"} and set(drift.removed) == {"patient_dob", "note"}
    assert drift.type_changed == ["gender"]
    assert "'patient_dob' -> 'dob' (guessed)" in drift.describe()


def test_new_column_evolves_into_the_raw_table(settings: Any) -> None:
    mapping = mapping_for("drift_evolve")
    practice = Practice(settings, mapping.client)
    data = tables(3)
    data["person"] = [{**row, "insurer": "x"} for row in data["person"]]
    batch = pipeline.ingest(settings, mapping, practice.write(date(2026, 6, 5), "r1", data), airflow_run_id="t")
    pipeline.mark_failed(settings, batch, "test cleanup", airflow_run_id="t")  # frees the lock
    with psycopg.connect(settings.staging.conninfo()) as conn:
        filled = conn.execute("select count(insurer) from raw_drift_evolve.person where ingestion_id = %s",
                              (batch.ingestion_id,)).fetchone()[0]
    assert filled == 3
