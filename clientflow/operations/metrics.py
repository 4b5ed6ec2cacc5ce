"""Prometheus metrics of the pipeline, read from the ledger at each scrape (``prometheus_client``).

``clientflow metrics-server`` serves them on loopback (port 9469 by default) through the read-only
status role; the local stack's Prometheus scrapes it. Every series is labelled by client (and
state, stage or kind): no value of a row ever becomes a label.

- ``clientflow_last_success_timestamp_seconds{client}``: when the newest batch was promoted
  ("clients staler than a day": ``time() - clientflow_last_success_timestamp_seconds > 86400``);
- ``clientflow_batches{client,state}``: batches in each ledger state;
- ``clientflow_rows_total{client,stage}``: rows loaded into raw, rejected, and promoted;
- ``clientflow_stage_duration_seconds{client,stage}``: a summary (count, sum) of stage times;
- ``clientflow_lock_waits_total{client}``: times a stage found the client locked by another run;
- ``clientflow_open_incidents{client,kind}``: incidents the alerts are holding open;
- ``clientflow_ledger_up``: 1 when the last scrape could read the ledger.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric, SummaryMetricFamily
from prometheus_client.registry import Collector

from clientflow.config import PostgresSettings
from clientflow.operations.status import STATES

log = logging.getLogger(__name__)
DEFAULT_PORT = 9469


class LedgerCollector(Collector):
    def __init__(self, database: Callable[[], PostgresSettings]) -> None:
        self.database = database

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("clientflow_ledger_up", "1 when the last scrape could read the ledger")
        try:
            with psycopg.connect(self.database().conninfo(), connect_timeout=5) as conn:
                conn.read_only = True
                families = list(_families(conn))
        except psycopg.Error as exc:
            log.warning("metrics: cannot read the ledger: %s", type(exc).__name__)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families


def _families(conn: psycopg.Connection[Any]) -> Iterator[Metric]:
    last = GaugeMetricFamily("clientflow_last_success_timestamp_seconds",
                             "When the client's newest batch was promoted (Unix time)", labels=["client"])
    for client, at in conn.execute("select client_name, extract(epoch from max(updated_at))::float8 "
                                   "from pipeline.batches where state = 'SUCCESS' group by 1 order by 1"):
        last.add_metric([client], at)
    yield last

    batches = GaugeMetricFamily("clientflow_batches", "Batches in each ledger state", labels=["client", "state"])
    counts: dict[tuple[str, str], int] = {}
    for client, state, n in conn.execute("select client_name, state, count(*) from pipeline.batches group by 1, 2"):
        counts[(client, state)] = n
    for client in sorted({c for c, _ in counts}):
        for state in STATES:
            batches.add_metric([client, state], counts.get((client, state), 0))
    yield batches

    rows = CounterMetricFamily("clientflow_rows", "Rows loaded into raw, rejected, and promoted",
                               labels=["client", "stage"])
    for client, loaded, rejected, promoted in conn.execute(
        """
        select b.client_name,
               coalesce(sum((select sum(rows_received) from pipeline.batch_profiles p
                             where p.ingestion_id = b.ingestion_id)), 0),
               coalesce(sum((select sum(rows_refused) from pipeline.batch_profiles p
                             where p.ingestion_id = b.ingestion_id)), 0),
               coalesce(sum((select sum((v ->> 'offered')::bigint) from jsonb_each(b.promoted) as e(k, v))), 0)
        from pipeline.batches b group by 1 order by 1
        """
    ):
        rows.add_metric([client, "loaded"], loaded)
        rows.add_metric([client, "rejected"], rejected)
        rows.add_metric([client, "promoted"], promoted)
    yield rows

    durations = SummaryMetricFamily("clientflow_stage_duration_seconds", "Time of each stage that finished",
                                    labels=["client", "stage"])
    waits = CounterMetricFamily("clientflow_lock_waits", "Times a stage found the client locked by another run",
                                labels=["client"])
    for client, stage, n, total in conn.execute(
        "select client_name, stage, count(*), sum(extract(epoch from finished_at - started_at))::float8 "
        "from pipeline.stage_runs where outcome in ('success', 'failed') group by 1, 2 order by 1, 2"
    ):
        durations.add_metric([client, stage], count_value=n, sum_value=total)
    for client, n in conn.execute("select client_name, count(*) from pipeline.stage_runs where outcome = 'waiting' "
                                  "group by 1 order by 1"):
        waits.add_metric([client], n)
    yield durations
    yield waits

    incidents = GaugeMetricFamily("clientflow_open_incidents", "Incidents open (alerted, not yet recovered)",
                                  labels=["client", "kind"])
    for client, kind, n in conn.execute("select client_name, kind, count(*) from pipeline.incidents "
                                        "where closed_at is null group by 1, 2 order by 1, 2"):
        incidents.add_metric([client, kind], n)
    yield incidents


def serve(database: Callable[[], PostgresSettings], host: str = "127.0.0.1", port: int = DEFAULT_PORT) -> None:
    """Serve /metrics until interrupted."""
    import threading

    from prometheus_client import start_http_server
    from prometheus_client.core import REGISTRY

    REGISTRY.register(LedgerCollector(database))
    server, thread = start_http_server(port, addr=host)
    log.info("clientflow metrics on http://%s:%d/metrics", host, port)
    try:
        threading.Event().wait()
    finally:
        server.shutdown()
        thread.join()
