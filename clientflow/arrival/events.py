"""Bucket events: a manifest's upload starts its client's DAG run, through a queue.

The bucket sends an ``s3:ObjectCreated:*`` notification (Put, Copy, CompleteMultipartUpload) for
every key ending in ``/manifest.json`` under ``client=<client>/`` to that client's SQS queue
(:func:`queue_name`); :func:`configure` sets the queues and the notifications up. The client's DAG
has an asset whose ``AssetWatcher`` runs a ``MessageQueueTrigger(scheme="sqs")`` on the queue in
Airflow's triggerer: each message becomes (part of) an asset event, and the asset event starts a
DAG run. That run's first task reads the messages (:func:`announced_batches`) and processes the
batch they name through the same sensor, checks and lock as a scheduled run.

The triggerer only forwards messages; every judgement happens in the run, so a malformed message
can never stop the triggerer. A message that names another client, a key outside our layout, a
key that is not a manifest, or a body that is not an S3 notification is logged with a clear line
and dropped. Duplicated or redelivered messages name a batch the ledger already holds and change
nothing. A lost message delays its batch until the next sweep (:mod:`clientflow.arrival.sweep`).

Whether the DAGs watch queues at all is a deployment setting read at parse time
(:class:`EventSettings`, from the environment): without ``CLIENTFLOW_EVENTS_QUEUE_URL`` the DAGs
keep only their time-based schedule.
"""

from __future__ import annotations

import json
import logging
import os
import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from client_extractor.contract import CLIENT_NAME, parse_key

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
QUEUE_URL_ENV = "CLIENTFLOW_EVENTS_QUEUE_URL"
_MAX_SHOWN = 160
"""Characters of a refused key shown in a log line (a key holds names, never row values)."""


def queue_name(client: str) -> str:
    """The SQS queue of one client's manifest notifications (SQS allows 80 characters: ours are at most 58)."""
    if not CLIENT_NAME.fullmatch(client):
        raise ValueError("not a client name")
    return f"clientflow-{client.replace('_', '-')}-manifests"


@dataclass(frozen=True)
class EventSettings:
    """How the DAGs watch their queues; read when the DAG file is parsed.

    ``queue_url`` is a template with ``{queue}`` (e.g. ``http://127.0.0.1:5055/123456789012/{queue}``
    on the local stack, ``https://sqs.eu-west-1.amazonaws.com/<account>/{queue}`` on AWS). The
    trigger long-polls for ``wait_seconds`` (a message ends the poll at once) and, after an empty
    poll, sleeps ``delay_seconds``: a manifest that lands during that sleep waits for its end, so
    the sleep is short (1 s). The long poll is SQS's longest (20 s): one request per client
    every 21 s while its queue is empty (a 5-s sleep after 10-s polls, before, delayed a batch by up
    to 5 s: 3.6 s in one benchmark run).
    """

    queue_url: str
    wait_seconds: int = 20
    delay_seconds: int = 1
    max_messages: int = 10
    sensor_timeout: timedelta = timedelta(minutes=2)
    """How long a run waits for the rest of its batch (the other tables' files) before it ends
    skipped; each later manifest starts a run of its own. Short, because runs of a client queue
    behind each other: a scheduled run waiting for a batch that is not there would hold back the
    runs the events start."""
    sensor_poke_seconds: int = 5
    """How often that waiting run looks at the bucket again. Short for the same reason: while it
    waits, the run a manifest's event started queues behind it, so the batch starts within a few
    seconds of its last manifest instead of up to a poke interval (30 s) plus a resume later.
    Each look is one listing of the client's prefix for the day."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> EventSettings | None:
        env = os.environ if env is None else env
        url = env.get(QUEUE_URL_ENV, "").strip()
        if not url:
            return None
        if "{queue}" not in url:
            raise ValueError(f"{QUEUE_URL_ENV} must contain {{queue}} (where each client's queue name goes)")
        return cls(url, int(env.get("CLIENTFLOW_EVENTS_WAIT_SECONDS", "20")),
                   int(env.get("CLIENTFLOW_EVENTS_DELAY_SECONDS", "1")),
                   sensor_timeout=timedelta(minutes=float(env.get("CLIENTFLOW_EVENTS_SENSOR_MINUTES", "2"))),
                   sensor_poke_seconds=int(env.get("CLIENTFLOW_EVENTS_POKE_SECONDS", "5")))

    def url_for(self, client: str) -> str:
        return self.queue_url.format(queue=queue_name(client))


@dataclass(frozen=True, order=True)
class Announced:
    """A batch a message announced: its date and run (one message per table's manifest)."""

    day: date
    run_id: str


def _shown(text: object) -> str:
    value = str(text)
    return repr(value if len(value) <= _MAX_SHOWN else value[:_MAX_SHOWN] + "...")


def _records(body: object) -> tuple[list[Any], str | None]:
    """The S3 records of a message body, or the reason the body is not a notification."""
    if not isinstance(body, str):
        return [], "the message has no text body"
    try:
        parsed = json.loads(body)
    except ValueError:
        return [], "the message body is not JSON"
    if isinstance(parsed, dict) and parsed.get("Event") == "s3:TestEvent":
        return [], "S3's test event (sent when notifications are configured)"
    records = parsed.get("Records") if isinstance(parsed, dict) else None
    if not isinstance(records, list):
        return [], "the message body is not an S3 notification (no Records)"
    return records, None


def _record_key(record: object) -> str | None:
    """The object key of an object-created record (S3 writes it URL-encoded), else None."""
    if not isinstance(record, dict) or not str(record.get("eventName", "")).startswith("ObjectCreated:"):
        return None
    s3 = record.get("s3")
    obj = s3.get("object") if isinstance(s3, dict) else None
    key = obj.get("key") if isinstance(obj, dict) else None
    return urllib.parse.unquote_plus(key) if isinstance(key, str) else None


def announced_batches(client: str, messages: Iterable[Any], where: str = "") -> list[Announced]:
    """The batches of ``client`` that SQS messages announce, oldest first, each once.

    ``messages`` are the SQS messages of the run's asset events (dicts with ``MessageId`` and
    ``Body``). Every message is handled: each refused one is logged (why, its message id and the
    key, never more) and dropped.
    """
    found: set[Announced] = set()
    prefix = f"[{where}] " if where else ""
    for message in messages:
        message_id = message.get("MessageId", "?") if isinstance(message, dict) else "?"
        records, problem = _records(message.get("Body") if isinstance(message, dict) else None)
        if problem:
            log.warning("%sdropped message %s: %s", prefix, _shown(message_id), problem)
            continue
        for record in records:
            key = _record_key(record)
            parsed = parse_key(key) if key is not None else None
            if key is None:
                log.warning("%sdropped a record of message %s: not an object-created event", prefix, _shown(message_id))
            elif parsed is None:
                log.warning("%sdropped message %s: key %s is not in our layout "
                            "(client=X/table=T/date=YYYYMMDD/run_id=R/FILE)", prefix, _shown(message_id), _shown(key))
            elif parsed.client != client:
                log.warning("%sdropped message %s: key %s is for client %s, not %s", prefix, _shown(message_id),
                            _shown(key), _shown(parsed.client), client)
            elif parsed.file != MANIFEST:
                log.info("%signored message %s: key %s is not a manifest", prefix, _shown(message_id), _shown(key))
            else:
                found.add(Announced(parsed.day, parsed.run_id))
    return sorted(found)


def messages_of(triggering_asset_events: Mapping[Any, Iterable[Any]] | None) -> list[Any]:
    """Every SQS message of a run's asset events (one event may carry several messages; several
    events may fold into one run)."""
    messages: list[Any] = []
    for events in (triggering_asset_events or {}).values():
        for event in events:
            extra = getattr(event, "extra", None) or {}
            payload = extra.get("payload") if isinstance(extra, dict) else None
            batch = payload.get("message_batch") if isinstance(payload, dict) else None
            if isinstance(batch, list):
                messages.extend(batch)
            else:
                log.warning("an asset event without SQS messages (source %s): nothing to read from it",
                            _shown(getattr(event, "source_dag_id", None) or "trigger"))
    return messages


def configure(s3: Any, sqs: Any, bucket: str, clients: Iterable[str]) -> dict[str, str]:
    """Create each client's queue and send the bucket's manifest notifications to it; returns the
    queue URLs. Idempotent: the bucket's notification configuration is replaced as a whole."""
    urls: dict[str, str] = {}
    configs = []
    for client in sorted(set(clients)):
        url = sqs.create_queue(QueueName=queue_name(client))["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        urls[client] = url
        configs.append({
            "Id": f"clientflow-{client}-manifests",
            "QueueArn": arn,
            "Events": ["s3:ObjectCreated:*"],
            "Filter": {"Key": {"FilterRules": [{"Name": "prefix", "Value": f"client={client}/"},
                                               {"Name": "suffix", "Value": f"/{MANIFEST}"}]}},
        })
    s3.put_bucket_notification_configuration(Bucket=bucket, NotificationConfiguration={"QueueConfigurations": configs})
    return urls
