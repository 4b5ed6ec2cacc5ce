"""Bucket events: S3 notifications of manifest uploads on moto's S3 and SQS, the messages' parsing,
the sweep that finds what a lost message left behind, and the DAG's schedule with and without events."""

from __future__ import annotations

import json
import logging
import urllib.parse
from datetime import date
from typing import Any

import boto3
import psycopg
import pytest

from client_extractor.contract import batch_key
from clientflow import pipeline
from clientflow.arrival import events
from clientflow.arrival.events import Announced, EventSettings
from clientflow.errors import NothingToProcess
from tests.support.practice import Practice, mapping_for, run_batch, tables

DAY = date(2026, 11, 20)


def _notification(key: str, event: str = "ObjectCreated:Put") -> dict[str, Any]:
    """A message as S3 sends it (the key URL-encoded, as S3 and moto write it)."""
    record = {"eventVersion": "2.1", "eventSource": "aws:s3", "eventName": event,
              "s3": {"bucket": {"name": "landing"}, "object": {"key": urllib.parse.quote_plus(key), "size": 10}}}
    return {"MessageId": f"m-{abs(hash(key)) % 10_000}", "Body": json.dumps({"Records": [record]})}


def _sqs(endpoint: str) -> Any:
    return boto3.client("sqs", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="local-access-key",
                        aws_secret_access_key="local-secret-key")


def _received(sqs: Any, url: str) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    while batch := sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1).get("Messages"):
        messages.extend(batch)
        sqs.delete_message_batch(QueueUrl=url, Entries=[{"Id": m["MessageId"], "ReceiptHandle": m["ReceiptHandle"]}
                                                         for m in batch])
    return messages


def test_every_message_is_handled_and_a_bad_one_is_dropped_with_a_clear_line(caplog: pytest.LogCaptureFixture) -> None:
    manifest = batch_key("acme", "dim patient", DAY, "r1", "manifest.json")  # a table name that needs quoting
    messages = [
        _notification(manifest),
        _notification(manifest),  # the same message again: a redelivery
        _notification(batch_key("acme", "visits", DAY, "r1", "manifest.json"), "ObjectCreated:Copy"),
        _notification(batch_key("acme", "visits", date(2026, 11, 19), "r0", "manifest.json"),
                      "ObjectCreated:CompleteMultipartUpload"),
        _notification(batch_key("acme", "visits", DAY, "r1", "data.json")),
        _notification(batch_key("other", "visits", DAY, "r1", "manifest.json")),
        _notification("client=acme/table=visits/date=20261340/run_id=r1/manifest.json"),
        _notification("somewhere/else.txt"),
        {"MessageId": "not-json", "Body": "{truncated"},
        {"MessageId": "test", "Body": json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent"})},
        {"MessageId": "no-records", "Body": json.dumps({"hello": "world"})},
        {"MessageId": "removed", "Body": json.dumps({"Records": [{"eventName": "ObjectRemoved:Delete"}]})},
        "not even a message",
    ]
    with caplog.at_level(logging.INFO, logger="clientflow.arrival.events"):
        found = events.announced_batches("acme", messages, where="client=acme")
    assert found == [Announced(date(2026, 11, 19), "r0"), Announced(DAY, "r1")]  # oldest first, each once
    text = caplog.text
    assert "is for client 'other', not acme" in text
    assert "20261340" in text and "is not in our layout" in text
    assert "'somewhere/else.txt' is not in our layout" in text
    assert "not-json" in text and "is not JSON" in text
    assert "S3's test event" in text and "no Records" in text and "not an object-created event" in text
    assert "is not a manifest" in text
    assert "the message has no text body" in text


def test_messages_are_read_from_every_asset_event_of_a_run() -> None:
    class Event:
        def __init__(self, extra: dict[str, Any]) -> None:
            self.extra = extra
            self.source_dag_id = None

    one, two = (_notification(batch_key("acme", "visits", d, "r1", "manifest.json")) for d in (DAY, date(2026, 11, 21)))
    folded = {"asset": [Event({"from_trigger": True, "payload": {"status": "success", "message_batch": [one]}}),
                        Event({"from_trigger": True, "payload": {"status": "success", "message_batch": [two, one]}}),
                        Event({"manual": True})]}
    assert events.messages_of(folded) == [one, two, one]
    assert [a.day for a in events.announced_batches("acme", events.messages_of(folded))] == [DAY, date(2026, 11, 21)]


def test_a_run_started_by_events_plans_the_oldest_announced_batch() -> None:
    announced = [Announced(date(2026, 11, 19), "r0"), Announced(DAY, "r1")]
    planned = pipeline.plan("acme", None, None, None, announced)
    assert (planned.day, planned.run_id) == (date(2026, 11, 19), "r0")
    with pytest.raises(NothingToProcess, match="dropped"):
        pipeline.plan("acme", None, None, None, [])
    assert pipeline.plan("acme", "2026-11-18", None, None, announced).day == date(2026, 11, 18)  # params win
    assert pipeline.plan("acme", None, None, None, None).run_id is None  # no event: as before


def test_a_run_whose_messages_announce_a_batch_already_taken_up_takes_the_new_one(settings: Any) -> None:
    """Events queue while a run of the client is busy: the next run's messages can announce the
    batch the busy run took (more manifests of the same upload) beside a new one. The run takes the
    new one at once; if the ledger holds every announced batch, it has nothing to do."""
    mapping = mapping_for("ev_seen")
    practice = Practice(settings, mapping.client)
    run_batch(settings, mapping, practice.write(DAY, "r1", tables(3, "one")))  # the busy run's batch, now SUCCESS
    announced = [Announced(DAY, "r1"), Announced(DAY, "r1"), Announced(date(2026, 11, 21), "r1")]
    seen = pipeline.seen_of(settings, mapping.client, announced)
    assert seen == {(DAY, "r1")}
    planned = pipeline.plan(mapping.client, None, None, None, announced, seen)
    assert (planned.day, planned.run_id) == (date(2026, 11, 21), "r1")
    with pytest.raises(NothingToProcess, match="ledger already holds every batch"):
        pipeline.plan(mapping.client, None, None, None, announced[:2], seen)
    assert pipeline.seen_of(settings, mapping.client, None) == set()


def test_the_bucket_notifies_each_clients_queue_of_its_manifests_only(s3_server: str) -> None:
    s3 = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1", aws_access_key_id="local-access-key",
                      aws_secret_access_key="local-secret-key")
    s3.create_bucket(Bucket="events-landing")
    sqs = _sqs(s3_server)
    urls = events.configure(s3, sqs, "events-landing", ["ev_a", "ev_b"])
    assert events.configure(s3, sqs, "events-landing", ["ev_a", "ev_b"]) == urls  # idempotent
    for url in urls.values():
        _received(sqs, url)  # S3's test events, if the endpoint sends them

    manifest = batch_key("ev_a", "visits", DAY, "r1", "manifest.json")
    s3.put_object(Bucket="events-landing", Key=batch_key("ev_a", "visits", DAY, "r1", "data.json"), Body=b"[]")
    s3.put_object(Bucket="events-landing", Key=manifest, Body=b"{}")
    s3.copy_object(Bucket="events-landing", Key=batch_key("ev_a", "visits", DAY, "r2", "manifest.json"),
                   CopySource={"Bucket": "events-landing", "Key": manifest})
    upload = s3.create_multipart_upload(Bucket="events-landing", Key=batch_key("ev_a", "visits", DAY, "r3",
                                                                                 "manifest.json"))
    part = s3.upload_part(Bucket="events-landing", Key=upload["Key"], UploadId=upload["UploadId"], PartNumber=1,
                          Body=b"{}")
    s3.complete_multipart_upload(Bucket="events-landing", Key=upload["Key"], UploadId=upload["UploadId"],
                                 MultipartUpload={"Parts": [{"ETag": part["ETag"], "PartNumber": 1}]})

    announced = events.announced_batches("ev_a", _received(sqs, urls["ev_a"]))
    assert announced == [Announced(DAY, "r1"), Announced(DAY, "r2"), Announced(DAY, "r3")]  # Put, Copy, multipart
    assert _received(sqs, urls["ev_b"]) == []  # another client's queue hears nothing of it


def test_event_settings_come_from_the_deployment() -> None:
    assert EventSettings.from_env({}) is None
    settings = EventSettings.from_env({"CLIENTFLOW_EVENTS_QUEUE_URL": "http://127.0.0.1:5055/123456789012/{queue}",
                                       "CLIENTFLOW_EVENTS_DELAY_SECONDS": "3"})
    assert settings is not None and settings.delay_seconds == 3
    # by default SQS's longest poll, which a message ends at once, and a short sleep after an empty
    # one: a manifest landing during the sleep waits at most 1 s
    default = EventSettings.from_env({"CLIENTFLOW_EVENTS_QUEUE_URL": "http://127.0.0.1:5055/1/{queue}"})
    assert default is not None and (default.wait_seconds, default.delay_seconds) == (20, 1)
    assert settings.url_for("acme_dental") == "http://127.0.0.1:5055/123456789012/clientflow-acme-dental-manifests"
    with pytest.raises(ValueError, match="must contain"):
        EventSettings.from_env({"CLIENTFLOW_EVENTS_QUEUE_URL": "http://127.0.0.1:5055/123456789012/fixed"})


def test_the_sweep_finds_the_complete_batch_no_message_announced(settings: Any) -> None:
    mapping = mapping_for("sweep_a")
    practice = Practice(settings, mapping.client)
    run_batch(settings, mapping, practice.write(DAY, "r1", tables(3, "one")))  # in the ledger
    practice.write(date(2026, 11, 21), "r1", tables(3, "two"))  # complete; its message was lost
    practice.write(date(2026, 11, 22), "r1", tables(3, "three"), skip_manifest=("visit",))  # not complete yet
    today = date(2026, 11, 23)
    assert pipeline.next_batch(settings, mapping, None, today) == {"batch_date": "2026-11-21", "run_id": "r1"}
    planned = pipeline.plan(mapping.client, "2026-11-21", None, None)
    assert pipeline.next_batch(settings, mapping, planned, today) is None  # this run takes it
    assert pipeline.next_batch(settings, mapping.model_copy(update={"sweep_days": 1}), None, today) is None


@pytest.mark.parametrize("automatic", [f"sweep__{DAY}__r1", "asset_triggered__2026-11-20T10:00:05+00:00_x",
                                       "scheduled__2026-11-20T00:00:00+00:00"])
def test_a_run_nobody_asked_for_leaves_a_batch_another_run_failed_to_a_person(settings: Any, automatic: str) -> None:
    """The run of one bucket event took the batch up and failed it; the sweep's run, or the run of a
    second message of the same upload, queued behind it. It must not process the batch again (a
    second failure and email, or a promotion behind the back of the person fixing it): it ends with
    nothing to do. A person's run (a manual trigger, clientflow reprocess, a backfill) still runs it."""
    mapping = mapping_for(f"left_{automatic.split('__')[0]}")
    found = pipeline.find_batch(settings, mapping, Practice(settings, mapping.client).write(DAY, "r1", tables(3)))
    first = pipeline.ingest(settings, mapping, found, airflow_run_id="asset_triggered__first")
    pipeline.mark_failed(settings, first, "ValidationFailed", airflow_run_id="asset_triggered__first")

    with pytest.raises(NothingToProcess, match="waits for a person"):
        pipeline.ingest(settings, mapping, found, airflow_run_id=automatic)
    with psycopg.connect(settings.staging.conninfo()) as conn:
        events_ = [r[0] for r in conn.execute("select state from pipeline.batch_events where ingestion_id = %s "
                                               "order by event_id", (first.ingestion_id,))]
    assert events_ == ["PENDING", "PROCESSING", "FAILED"]  # the automatic run recorded nothing
    again = pipeline.ingest(settings, mapping, found, airflow_run_id="manual__reprocess")  # a person's reprocess
    assert again.ingestion_id == first.ingestion_id
    pipeline.mark_failed(settings, again, "test", airflow_run_id="manual__reprocess")


def test_the_dag_watches_its_queue_and_keeps_its_timetable_for_backfills() -> None:
    from airflow.sdk import AssetOrTimeSchedule

    from clientflow.dag_factory import build_client_dag

    mapping = mapping_for("sched_a")
    plain = build_client_dag(mapping)
    assert "run_next_batch" in plain.task_ids and "next_batch" in plain.task_ids
    settings = EventSettings.from_env({"CLIENTFLOW_EVENTS_QUEUE_URL": "http://127.0.0.1:5055/123456789012/{queue}"})
    assert settings is not None
    dag = build_client_dag(mapping, settings)
    assert isinstance(dag.timetable, AssetOrTimeSchedule)
    (asset,) = dag.timetable.asset_condition.iter_assets().values() if hasattr(
        dag.timetable.asset_condition, "iter_assets") else [dag.timetable.asset_condition]
    (watcher,) = asset.watchers
    classpath, kwargs = watcher.trigger.serialize()
    assert classpath.endswith("SqsSensorTrigger")
    assert kwargs["sqs_queue"] == settings.url_for("sched_a") and kwargs["aws_conn_id"] == "clientflow_s3"
    assert kwargs["waiter_delay"] == settings.delay_seconds
    sensor = dag.get_task("wait_for_batch")
    assert sensor.soft_fail and sensor.timeout == settings.sensor_timeout.total_seconds()
    assert sensor.poke_interval == settings.sensor_poke_seconds == 5  # the batch starts soon after its last manifest
    assert not plain.get_task("wait_for_batch").soft_fail  # without events the scheduled run waits all day
    assert plain.get_task("wait_for_batch").poke_interval == 30
    slower = EventSettings.from_env({"CLIENTFLOW_EVENTS_QUEUE_URL": "http://h/{queue}", "CLIENTFLOW_EVENTS_POKE_SECONDS": "12"})
    assert slower is not None and build_client_dag(mapping, slower).get_task("wait_for_batch").poke_interval == 12
