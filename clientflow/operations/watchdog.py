"""The watchdog: every 15 minutes, for every client, the conditions no single run can see.

- **stale**: the client's newest promoted batch is older than its schedule's interval plus a grace
  period (or the mapping's ``alerts.stale_after``): its data silently stopped arriving;
- **backlog**: complete batches wait in the bucket, unseen by the ledger, longer than
  ``alerts.backlog_after`` (what the rollout plan called a dead-letter queue building up);
- **failed_unreprocessed**: FAILED batches nobody reprocessed within ``alerts.failed_after``;
- **incomplete**: an upload left incomplete (a data file without its manifest, a table missing)
  longer than ``alerts.incomplete_after``, with no complete run of its date after it: the batch can
  never run, and the client's extractor probably died mid-upload;
- **stuck**: batches PENDING or PROCESSING, unchanged for longer than ``alerts.stuck_after``: their
  run died without recording an outcome (a killed worker whose failure callback never ran) or
  hangs. The client's next run settles such a batch (``pipeline.settle_earlier``); this says that
  none came.

Each is an incident (:mod:`clientflow.operations.incidents`): one alert when it starts, one
recovery notice when a later check finds it gone, however many checks see it in between. One
client's error (its listing, its mapping) is logged by type and does not stop the others; the
task fails at the end so that Airflow retries it and the DAG's failure shows.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from clientflow.arrival.batches import incomplete_since, waiting_since
from clientflow.config import PipelineSettings
from clientflow.db import connect
from clientflow.errors import PipelineError, Where
from clientflow.faults import named
from clientflow.mapping import ClientMapping
from clientflow.operations import alerts, incidents, ledger

log = logging.getLogger(__name__)
WATCHED = ("stale", "backlog", "failed_unreprocessed", "incomplete", "stuck")
Sender = Callable[[Sequence[str], str, str], None]


def schedule_interval(schedule: str | None) -> timedelta | None:
    """The time between two runs of a cron schedule (or preset such as ``@daily``); None if none."""
    if schedule is None:
        return None
    from croniter import croniter

    ticks = croniter(schedule, datetime(2026, 1, 1, tzinfo=UTC))
    first = ticks.get_next(datetime)
    return ticks.get_next(datetime) - first


def stale_limit(mapping: ClientMapping) -> timedelta | None:
    if mapping.alerts.stale_after is not None:
        return mapping.alerts.stale_after
    interval = schedule_interval(mapping.schedule)
    return None if interval is None else interval + mapping.alerts.grace


def _age(delta: timedelta) -> str:
    hours = delta.total_seconds() / 3600
    if hours < 1:
        return f"{delta.total_seconds() / 60:.0f} min"
    return f"{hours:.1f} h" if hours < 48 else f"{hours / 24:.1f} days"


@dataclass(frozen=True)
class Findings:
    """What one check saw of one client: kind -> detail, for each condition present."""

    client: str
    present: dict[str, str]


def check(settings: PipelineSettings, mapping: ClientMapping, now: datetime) -> Findings:
    where, policy = Where(client=mapping.client), mapping.alerts
    present: dict[str, str] = {}
    since = mapping.sweep_since(now.date())
    with named(where, "listing the bucket for the watchdog"):
        s3 = settings.s3.client()
        waiting = waiting_since(s3, settings.s3.bucket, mapping, since)
        partial = {run: missing for run, (at, missing) in incomplete_since(s3, settings.s3.bucket, mapping, since).items()
                   if now - at > policy.incomplete_after}
    with connect(settings.staging, where, "reading the ledger for the watchdog") as conn:
        unseen = ledger.unseen(conn, mapping.client, waiting)
        last = ledger.newest_promotion(conn, mapping.client)
        failed = ledger.left_in(conn, mapping.client, ("FAILED",), now - policy.failed_after)
        stuck = ledger.left_in(conn, mapping.client, ledger.IN_FLIGHT, now - policy.stuck_after)
    limit = stale_limit(mapping)
    if limit is not None:
        reference = last or datetime.combine(mapping.start_date, datetime.min.time(), tzinfo=UTC)
        if now - reference > limit:
            present["stale"] = (f"newest promoted batch {_age(now - last)} ago" if last else
                                f"no batch promoted since the start date {mapping.start_date}") + \
                               f"; the limit is {_age(limit)}"
    backlog = sorted(run for run in unseen if now - waiting[run] > policy.backlog_after)
    if backlog:
        oldest_day, oldest_run = backlog[0]
        present["backlog"] = (f"{len(backlog)} complete batch(es) waiting in the bucket longer than "
                              f"{_age(policy.backlog_after)}, unseen by the ledger; oldest {oldest_day} run {oldest_run}")
    if failed[0]:
        present["failed_unreprocessed"] = (f"{failed[0]} batch(es) FAILED and not reprocessed for longer than "
                                           f"{_age(policy.failed_after)}; the oldest since {failed[1]:%Y-%m-%d %H:%M} UTC")
    if stuck[0]:
        present["stuck"] = (f"{stuck[0]} batch(es) PENDING or PROCESSING, unchanged for longer than "
                            f"{_age(policy.stuck_after)}; the oldest since {stuck[1]:%Y-%m-%d %H:%M} UTC")
    if partial:
        (oldest_day, oldest_run), missing = next(iter(partial.items()))
        present["incomplete"] = (f"{len(partial)} upload(s) incomplete for longer than {_age(policy.incomplete_after)}; "
                                 f"oldest {oldest_day} run {oldest_run}, missing {', '.join(missing)}")
    return Findings(mapping.client, present)


def act(settings: PipelineSettings, mapping: ClientMapping, findings: Findings, send: Sender) -> list[str]:
    """Open the incidents of conditions that started, close those that ended, one message each."""
    said: list[str] = []
    recipients = mapping.owners
    with connect(settings.staging, Where(client=mapping.client), "recording the watchdog's incidents") as conn:
        for kind in WATCHED:
            if kind in findings.present:
                opened = incidents.open_incident(conn, mapping.client, kind, findings.present[kind])
                if opened is not None:
                    send(recipients, *alerts.compose_incident(opened))
                    said.append(f"{mapping.client}: {kind} alert sent ({opened.detail})")
            else:
                how = "the watchdog found the condition gone"
                closed = incidents.close_incident(conn, mapping.client, kind, how)
                if closed is not None:
                    send(recipients, *alerts.compose_recovery(closed, how))
                    said.append(f"{mapping.client}: {kind} recovered")
            conn.commit()  # each alert is recorded as soon as it is sent
    return said


def watch(settings: PipelineSettings, mappings: Sequence[ClientMapping], send: Sender,
          now: datetime | None = None) -> list[str]:
    """Check every client; returns what was sent. Raises after the last client if any failed."""
    now = now or datetime.now(UTC)
    said: list[str] = []
    broken: list[str] = []
    for mapping in mappings:
        try:
            findings = check(settings, mapping, now)
            said += act(settings, mapping, findings, send)
            log.info("[client=%s] watchdog: %s", mapping.client,
                     "; ".join(f"{k}: {v}" for k, v in findings.present.items()) or "all well")
        except (PipelineError, OSError) as exc:
            log.error("[client=%s] watchdog could not check the client: %s", mapping.client,
                      exc if isinstance(exc, PipelineError) else type(exc).__name__)
            broken.append(mapping.client)
    if broken:
        raise WatchdogIncomplete(broken)
    return said


class WatchdogIncomplete(Exception):
    def __init__(self, clients: list[str]) -> None:
        super().__init__(f"the watchdog could not check {len(clients)} client(s): {', '.join(clients)}")
