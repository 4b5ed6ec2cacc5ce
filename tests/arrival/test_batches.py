"""Arrival: a batch is processed only when one run holds every table; batches land in date order.

Real moto S3, PostgreSQL and Redis. The pipeline stages are called directly, except for the
backfill test, which runs the client DAG with a logical date and no params.
"""

from __future__ import annotations

import sys
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

from clientflow import pipeline
from clientflow.arrival.batches import complete_runs, sensor_check
from clientflow.batch import Batch
from clientflow.errors import BadInputError, TransientError
from tests.support.dags import test_client_dag
from tests.support.practice import Practice, mapping_for, production_rows, run_batch, tables
from tests.support.transform import transform

DAY = date(2026, 3, 10)


def _sensor_for(mapping: Any, settings: Any, day: date, run_id: str = "") -> Any:
    """The DAG's own wait_for_batch sensor, with its templates filled in as Airflow would."""
    from clientflow.dag_factory import build_client_dag

    sensor = build_client_dag(mapping).get_task("wait_for_batch")
    planned = pipeline.plan(mapping.client, day.isoformat(), run_id or None, None)
    sensor.bucket_name = settings.s3.bucket
    sensor.bucket_key = (sensor.bucket_key
                         .replace("{{ ti.xcom_pull(task_ids='plan')['date'] | replace('-', '') }}", f"{planned.day:%Y%m%d}")
                         .replace("{{ ti.xcom_pull(task_ids='plan')['run_id'] or '*' }}", planned.run_id or "*"))
    assert "{{" not in sensor.bucket_key
    return sensor


def _ledger_rows(settings: Any, client: str) -> int:
    with psycopg.connect(settings.staging.conninfo()) as conn:
        return conn.execute("select count(*) from pipeline.batches where client_name = %s", (client,)).fetchone()[0]


def test_partial_upload_triggers_nothing(settings: Any) -> None:
    mapping = mapping_for("arr_partial")
    practice = Practice(settings, mapping.client)
    data = tables(5)
    person = "person"
    # An upload that stopped before the manifest, one that lacks a table, and two runs that each
    # hold part of the tables: together every file exists, but no single run is complete.
    practice.write(DAY, "20260310T010000Z-a", data, skip_manifest=(person,))
    practice.write(DAY, "20260310T020000Z-b", data, skip_table=("visit",))
    practice.write(DAY, "20260310T030000Z-c", data, skip_table=("visit",))
    practice.write(DAY, "20260310T040000Z-d", {"visit": data["visit"]})
    sensor = _sensor_for(mapping, settings, DAY)

    assert sensor.poke({}) is False
    assert complete_runs(settings.s3.client(), settings.s3.bucket, mapping, DAY) == []
    with pytest.raises(TransientError, match="no complete batch"):
        pipeline.find_batch(settings, mapping, Batch(mapping.client, DAY))
    assert _ledger_rows(settings, mapping.client) == 0

    # The first upload finishes: now, and only now, the batch is there, and it is that run.
    practice.write(DAY, "20260310T010000Z-a", data)
    assert sensor.poke({}) is True
    assert pipeline.find_batch(settings, mapping, Batch(mapping.client, DAY)).run_id == "20260310T010000Z-a"


def test_a_deferred_wait_sees_the_batch_that_lands_while_it_waits(settings: Any) -> None:
    """The scheduled run starts before the upload, so its sensor defers; when the trigger fires,
    the sensor judges the bucket itself (the provider's trigger hands check_fn no key of our
    nested layout) and resumes only once one run is complete."""
    import asyncio

    from airflow.providers.amazon.aws.hooks.s3 import S3Hook
    from airflow.sdk.exceptions import TaskDeferred

    mapping = mapping_for("arr_deferred")
    practice = Practice(settings, mapping.client)
    sensor = _sensor_for(mapping, settings, DAY)
    assert sensor.deferrable
    data = tables(3)
    practice.write(DAY, "20260310T010000Z-a", data, skip_manifest=("person",))  # under way
    with pytest.raises(TaskDeferred):
        sensor.execute_complete({}, {"status": "running", "files": []})
    practice.write(DAY, "20260310T010000Z-a", data)  # finished

    async def trigger_files() -> list[Any]:  # what S3KeyTrigger would pass to check_fn
        hook = S3Hook(aws_conn_id=sensor.aws_conn_id)
        async with await hook.get_async_conn() as client:
            return await hook.get_files_async(client, sensor.bucket_name, sensor.bucket_key, True)

    assert asyncio.run(trigger_files()) == []  # the provider's listing: no key of ours
    assert sensor.execute_complete({}, {"status": "running", "files": []}) is None


def test_sensor_pinned_to_a_run_waits_for_that_run(settings: Any) -> None:
    mapping = mapping_for("arr_pinned")
    practice = Practice(settings, mapping.client)
    practice.write(DAY, "20260310T010000Z-done", tables(3))
    practice.write(DAY, "20260310T020000Z-half", tables(3), skip_manifest=("clinician",))

    assert _sensor_for(mapping, settings, DAY).poke({}) is True
    assert _sensor_for(mapping, settings, DAY, "20260310T020000Z-half").poke({}) is False
    with pytest.raises(TransientError, match="not complete"):
        pipeline.find_batch(settings, mapping, Batch(mapping.client, DAY, "20260310T020000Z-half"))
    check = sensor_check(mapping)
    assert check([{"Key": f"client=arr_pinned/table=person/date=20260310/run_id=x/{f}"}
                  for f in ("data.json", "manifest.json")]) is False


@pytest.mark.parametrize(("batch_date", "run_id", "message"), [
    ("2026-13-01", None, "calendar date"),
    ("10/03/2026", None, "YYYY-MM-DD"),
    ("2026-03-10", "../../etc", "run_id must be"),
    ("2026-03-10", "x" * 65, "run_id must be"),
    ("2026-03-10", "manual:1", "run_id must be"),
])
def test_dag_params_are_validated(batch_date: str, run_id: str | None, message: str) -> None:
    with pytest.raises(BadInputError, match=message):
        pipeline.plan("arr_params", batch_date, run_id, None)


def test_plan_defaults_to_the_logical_date() -> None:
    planned = pipeline.plan("arr_params", None, None, datetime(2026, 3, 9, tzinfo=UTC))
    assert planned == Batch(client="arr_params", day=date(2026, 3, 9))


@pytest.mark.parametrize("small_change_set", [200_000, 0], ids=["looked_up_once", "joined"])
def test_late_older_batch_never_overwrites_newer_rows(settings: Any, monkeypatch: pytest.MonkeyPatch,
                                                      small_change_set: int) -> None:
    """Both ways the promotion merges (a small change set's rows looked up once, a large one's
    joined with the client's rows) keep the same rule."""
    monkeypatch.setattr(sys.modules["clientflow.promotion.promote"], "SMALL_CHANGE_SET", small_change_set)
    mapping = mapping_for(f"arr_late_{small_change_set}")
    practice = Practice(settings, mapping.client)
    today, yesterday = date(2026, 3, 11), date(2026, 3, 10)
    run_batch(settings, mapping, practice.write(today, "20260311T010000Z", tables(4, "today")))

    # Yesterday's files arrive after today's batch was promoted; they also hold one patient
    # today's extract no longer has (extracts never delete, so that row is still welcome).
    late = tables(5, "yesterday")
    late_batch = pipeline.ingest(settings, mapping, practice.write(yesterday, "20260310T230000Z", late),
                                 airflow_run_id="test")
    transform(settings, mapping, late_batch)
    validated = pipeline.validate(settings, mapping, late_batch)
    assert validated["kept_newer"]["patients"] == 4  # yesterday's versions of P0-P3 stay out: today's are newer
    pipeline.promote(settings, mapping, late_batch, airflow_run_id="test")

    rows = production_rows(settings, mapping.client, "patients", "last_name", "source_batch_date")
    assert {k: v[0] for k, v in rows.items()} == {
        "P0": "Name0-today", "P1": "Name1-today", "P2": "Name2-today", "P3": "Name3-today",
        "P4": "Name4-yesterday",
    }
    assert rows["P0"][1] == today and rows["P4"][1] == yesterday

    # The next day's batch, with changed values, wins again.
    run_batch(settings, mapping, practice.write(date(2026, 3, 12), "20260312T010000Z", tables(4, "next")))
    rows = production_rows(settings, mapping.client, "patients", "last_name")
    assert rows["P0"] == ("Name0-next",) and rows["P4"] == ("Name4-yesterday",)


def test_backfill_run_reprocesses_its_logical_date(settings: Any, airflow_db: Path) -> None:
    mapping = mapping_for("arr_backfill")
    practice = Practice(settings, mapping.client)
    practice.write(date(2026, 3, 8), "20260308T010000Z", tables(3, "eighth"))
    practice.write(date(2026, 3, 9), "20260309T010000Z", tables(3, "ninth"))

    # What `airflow backfill create --from-date 2026-03-08 --to-date 2026-03-08` schedules: a run
    # whose logical date is the day, with no params.
    dag_run = test_client_dag(mapping, logical_date=datetime(2026, 3, 8, tzinfo=UTC))

    assert dag_run.state == "success"
    rows = production_rows(settings, mapping.client, "patients", "last_name", "source_batch_date")
    assert rows == {f"P{i}": (f"Name{i}-eighth", date(2026, 3, 8)) for i in range(3)}
    with psycopg.connect(settings.staging.conninfo()) as conn:
        done = conn.execute("select batch_date, run_id, state from pipeline.batches where client_name = %s",
                            (mapping.client,)).fetchall()
    assert done == [(date(2026, 3, 8), "20260308T010000Z", "SUCCESS")]


def test_the_newest_run_of_a_date_is_the_last_upload_whatever_its_name(settings: Any) -> None:
    """A client's hand-named ``--run-id retry1``, then the scheduled extractor's timestamped run: the
    second is the newer batch, though its id sorts first."""
    import time

    from clientflow.arrival import complete_batches

    mapping = mapping_for("arr_newest")
    practice = Practice(settings, mapping.client)
    practice.write(DAY, "retry1", tables(3, "hand"))
    time.sleep(1.1)  # S3 keeps upload times to the second
    practice.write(DAY, "20260310T050000Z-e", tables(3, "scheduled"))
    s3, bucket = settings.s3.client(), settings.s3.bucket

    assert complete_runs(s3, bucket, mapping, DAY) == ["retry1", "20260310T050000Z-e"]
    assert pipeline.find_batch(settings, mapping, Batch(mapping.client, DAY)).run_id == "20260310T050000Z-e"
    assert complete_batches(s3, bucket, mapping, DAY) == [(DAY, "20260310T050000Z-e")]


def test_a_manifest_whose_job_id_is_not_its_own_is_refused_before_the_duplicate_check(settings: Any) -> None:
    """A job id copied from a promoted batch's manifest would have new data skipped as a duplicate."""
    import json

    from client_extractor.contract import MANIFEST_FILE, batch_key
    from clientflow.arrival import read_manifests

    mapping = mapping_for("arr_copied_job")
    practice = Practice(settings, mapping.client)
    promoted = run_batch(settings, mapping, practice.write(DAY, "r1", tables(3)))
    found = practice.write(DAY.replace(day=11), "r2", tables(3, "new"))
    s3, bucket = settings.s3.client(), settings.s3.bucket
    old = json.loads(s3.get_object(Bucket=bucket, Key=promoted.files[0].manifest_key)["Body"].read())
    key = batch_key(mapping.client, found.files[0].table, found.day, "r2", MANIFEST_FILE)
    edited = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read()) | {"job_id": old["job_id"]}
    s3.put_object(Bucket=bucket, Key=key, Body=json.dumps(edited).encode())

    with pytest.raises(BadInputError, match="job_id is not the one of its client, table, date, sha256") as caught:
        read_manifests(s3, bucket, found)
    assert f"table={found.files[0].table}" in str(caught.value) and "run=r2" in str(caught.value)
    with pytest.raises(BadInputError, match="job_id"):
        pipeline.ingest(settings, mapping, found, airflow_run_id="t")
    assert _ledger_rows(settings, mapping.client) == 1  # the promoted batch only: nothing recorded
