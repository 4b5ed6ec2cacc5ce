"""Build one Airflow DAG per client mapping file: wiring only.

Each task is one line that calls its body in :mod:`clientflow.airflow_edge`; the dbt task group
comes from :mod:`clientflow.transform.dbt_group`. Parsing reads the repository's mapping files
and dbt manifest and nothing else: no network, no database, no Variables. Connections are read
when tasks run.

:func:`build_dags` builds every client's DAG, each file on its own: a malformed mapping becomes a
placeholder DAG that names the file, the line and the field (its one task fails with the same
message), and the other clients' DAGs are unaffected. A task process, which runs one task of one
DAG, builds only that DAG (``get_parsing_context``).
"""

from __future__ import annotations

import logging
import os
import re
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import (
    DAG,
    Asset,
    AssetOrTimeSchedule,
    AssetWatcher,
    CronTriggerTimetable,
    Param,
    get_parsing_context,
    task,
)

from client_extractor.contract import RUN_ID
from clientflow import airflow_edge as edge
from clientflow.arrival.batches import SENSOR_TASK_ID, sensor_check
from clientflow.arrival.events import EventSettings
from clientflow.arrival.sensor import BatchKeySensor
from clientflow.mapping import MAPPINGS_DIR, ClientMapping, MappingError, load_mapping, mapping_files
from clientflow.transform.dbt_group import dbt_task_group

log = logging.getLogger(__name__)

DOC = (Path(__file__).with_name("DAG.md")).read_text(encoding="utf-8")
_PLANNED = "ti.xcom_pull(task_ids='plan')"
# One pattern over all tables of the date (and run, if given); check_fn then requires that a
# single run holds every table's data.json and manifest.json, so a partial upload waits.
SENSOR_KEY = (
    "client={client}/table=*/date={{{{ " + _PLANNED + "['date'] | replace('-', '') }}}}/"
    "run_id={{{{ " + _PLANNED + "['run_id'] or '*' }}}}/*.json"
)


def _params() -> dict[str, Param]:
    return {
        "batch_date": Param(None, type=["null", "string"], format="date",
                            description="Batch date (YYYY-MM-DD); default: the run's logical date, else today (UTC)."),
        "run_id": Param(None, type=["null", "string"], pattern=RUN_ID.pattern,
                        description="Extractor run id; default: the newest complete run of the date."),
    }


def _default_args(mapping: ClientMapping) -> dict[str, Any]:
    return {
        "owner": "clientflow",
        "retries": 3,
        "retry_delay": timedelta(seconds=20),
        "retry_exponential_backoff": True,
        "max_retry_delay": timedelta(minutes=10),
        "on_execute_callback": [edge.log_context(mapping), edge.keep_lock(mapping)],
        "post_execute": edge.log_result(mapping),
        "on_failure_callback": edge.on_failure(mapping),
        "on_retry_callback": edge.stop_keeping_lock,
    }


def manifests_asset(mapping: ClientMapping, events: EventSettings) -> Asset:
    """The client's manifest uploads, as an asset whose watcher reads the client's SQS queue in
    the triggerer (clientflow.arrival.events)."""
    from airflow.providers.common.messaging.triggers.msg_queue import MessageQueueTrigger

    trigger = MessageQueueTrigger(
        scheme="sqs", sqs_queue=events.url_for(mapping.client), aws_conn_id=edge.IDS.s3,
        max_messages=events.max_messages, wait_time_seconds=events.wait_seconds, waiter_delay=events.delay_seconds,
    )
    return Asset(name=f"clientflow_{mapping.client}_manifests", uri=f"clientflow-events://manifests/{mapping.client}",
                 watchers=[AssetWatcher(name=f"clientflow_{mapping.client}_manifests_queue", trigger=trigger)])


def schedule_of(mapping: ClientMapping, events: EventSettings | None) -> Any:
    """The mapping's time-based schedule, and, when the deployment has bucket events, the
    client's manifests asset beside it: a run starts at either (the timetable keeps
    ``airflow backfill create`` working)."""
    if events is None:
        return mapping.schedule
    asset = manifests_asset(mapping, events)
    if mapping.schedule is None:
        return [asset]
    return AssetOrTimeSchedule(timetable=CronTriggerTimetable(mapping.schedule, timezone="UTC"), assets=asset)


def _wait_for_batch(mapping: ClientMapping, events: EventSettings | None) -> BatchKeySensor:
    return BatchKeySensor(
        task_id=SENSOR_TASK_ID,
        aws_conn_id=edge.IDS.s3,
        bucket_name=f"{{{{ conn.{edge.IDS.s3}.extra_dejson.bucket }}}}",
        bucket_key=SENSOR_KEY.format(client=mapping.client),
        wildcard_match=True,
        check_fn=sensor_check(mapping),
        deferrable=True,
        # Without events a batch may come any time of the day: a look every 30 s. With them, the run
        # only waits out the rest of a batch that is being uploaded (EventSettings.sensor_poke_seconds).
        poke_interval=events.sensor_poke_seconds if events else 30,
        # Without bucket events the scheduled run is how a batch is found: it waits all day.
        # With them, every manifest starts a run, so a run waits briefly and then ends skipped
        # (not failed), leaving the client free; its sweep still runs.
        timeout=(events.sensor_timeout if events else timedelta(hours=20)).total_seconds(),
        soft_fail=events is not None,
    )


def _sweep(mapping: ClientMapping, planned: Any) -> None:
    """next_batch -> run_next_batch, beside the batch's own tasks: a run of its own for the oldest
    complete batch the ledger never saw (clientflow.pipeline.next_batch)."""

    @task(trigger_rule="none_failed", multiple_outputs=True)
    def next_batch(planned: dict[str, Any] | None) -> dict[str, Any]:
        return edge.run_next_batch(mapping, planned)

    following = next_batch(planned)
    following >> TriggerDagRunOperator(  # type: ignore[operator]
        task_id="run_next_batch", trigger_dag_id=f"client_{mapping.client}",
        trigger_run_id=following["run_id"],  # type: ignore[index]
        conf=following["conf"], skip_when_already_exists=True,  # type: ignore[index]
    )


def build_client_dag(mapping: ClientMapping, events: EventSettings | None = None) -> DAG:
    client = mapping.client
    with DAG(
        dag_id=f"client_{client}",
        description=f"Arrival -> raw -> dbt -> validate -> promote for {mapping.display_name}",
        schedule=schedule_of(mapping, events),
        start_date=datetime.combine(mapping.start_date, datetime.min.time(), tzinfo=ZoneInfo("UTC")),
        catchup=False,
        max_active_runs=1,
        tags=["clientflow", f"client:{client}"],
        doc_md=DOC,
        params=_params(),
        default_args=_default_args(mapping),
    ) as dag:

        @task
        def plan(**context: Any) -> dict[str, Any]:
            return edge.run_plan(client, context)

        @task
        def find_batch(planned: dict[str, Any]) -> dict[str, Any]:
            return edge.run_find_batch(mapping, planned)

        @task(pool=os.environ.get("CLIENTFLOW_COPY_POOL") or "default_pool")
        def ingest(found: dict[str, Any], **context: Any) -> dict[str, Any]:
            return edge.run_ingest(mapping, found, context)

        @task
        def validate(loaded: dict[str, Any], **context: Any) -> dict[str, int]:
            return edge.run_validate(mapping, loaded, context)

        @task(on_success_callback=edge.on_promoted(mapping))
        def promote(loaded: dict[str, Any], **context: Any) -> dict[str, Any]:
            return edge.run_promote(mapping, loaded, context)

        # TaskFlow passes XComArgs where the functions take their values: mypy cannot see that.
        planned = plan()
        _sweep(mapping, planned)
        wait = _wait_for_batch(mapping, events)
        found = find_batch(planned)  # type: ignore[arg-type]
        loaded = ingest(found)  # type: ignore[arg-type]
        transform = dbt_task_group(mapping, edge.IDS, before_retry=edge.undo_before_retry)
        planned >> wait >> found
        loaded >> transform >> validate(loaded) >> promote(loaded)  # type: ignore[arg-type]
    return dag


WATCHDOG_DAG_ID = "clientflow_watchdog"


def watchdog_dags() -> dict[str, DAG]:
    """The watchdog DAG by id; nothing in a task process of another DAG (``get_parsing_context``)."""
    wanted = get_parsing_context().dag_id
    return {} if wanted not in (None, WATCHDOG_DAG_ID) else {WATCHDOG_DAG_ID: build_watchdog_dag()}


def build_watchdog_dag() -> DAG:
    """Every 15 minutes: stale clients, batches waiting in the bucket, failed batches left alone
    (clientflow.operations.watchdog), each alerted once per incident, with a recovery notice."""
    with DAG(
        dag_id=WATCHDOG_DAG_ID,
        description="Alerts on patterns no single run sees: stale data, a backlog, failed batches left alone",
        schedule=CronTriggerTimetable("*/15 * * * *", timezone="UTC"),
        start_date=datetime(2026, 1, 1, tzinfo=ZoneInfo("UTC")),
        catchup=False,
        max_active_runs=1,
        tags=["clientflow", "operations"],
        doc_md="### clientflow watchdog\n\nChecks every client every 15 minutes; see docs/runbook.md.",
        default_args={"owner": "clientflow", "retries": 2, "retry_delay": timedelta(minutes=1),
                      "retry_exponential_backoff": True},
    ) as dag:

        @task
        def watch() -> list[str]:
            return edge.run_watchdog()

        watch()
    return dag


def dag_id_for(path: Path) -> str:
    """The DAG id of a mapping file (also for a file whose name is not a valid client name)."""
    return "client_" + re.sub(r"[^A-Za-z0-9_.-]", "_", path.stem)


def broken_mapping_dag(dag_id: str, path: Path, error: Exception) -> DAG:
    """Stands in for a client whose mapping cannot be used: says why, and fails if run."""
    problems = error.problems if isinstance(error, MappingError) else []
    reason = str(problems[0]) if problems else f"{path.name}: {type(error).__name__}: {error}"
    listed = "\n".join(f"- `{p}`" for p in problems) or f"- `{reason}`"
    with DAG(
        dag_id=dag_id,
        description=f"BROKEN MAPPING: {reason}"[:300],
        schedule=None,
        start_date=datetime(2026, 1, 1, tzinfo=ZoneInfo("UTC")),
        catchup=False,
        tags=["clientflow", "broken-mapping"],
        doc_md=f"### This client's mapping file cannot be used\n\n{listed}\n\nFix the file "
               f"(`clientflow check-mapping {path.name}` prints the same), and the client's DAG returns.",
    ) as dag:

        @task(task_id="mapping_error", retries=0)
        def mapping_error() -> None:
            from airflow.sdk.exceptions import AirflowFailException

            raise AirflowFailException(f"the mapping file cannot be used: {'; '.join(map(str, problems)) or reason}")

        mapping_error()
    return dag


def build_dags(directory: Path = MAPPINGS_DIR) -> dict[str, DAG]:
    """Every client's DAG by id, from the mapping files in ``directory``, sorted."""
    wanted = get_parsing_context().dag_id
    events = EventSettings.from_env()  # the deployment's bucket events (None: time-based schedules only)
    dags: dict[str, DAG] = {}
    for path in mapping_files(directory):
        dag_id = dag_id_for(path)
        if wanted is not None and wanted != dag_id:
            continue  # a task process of another DAG: skip this client's files entirely
        try:
            dags[dag_id] = build_client_dag(load_mapping(path), events)
        except Exception as exc:  # noqa: BLE001 - one client's fault must not cost the others
            log.error("client mapping %s cannot be used: %s", path.name, exc)
            dags[dag_id] = broken_mapping_dag(dag_id, path, exc)
    return dags
