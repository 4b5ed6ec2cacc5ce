"""Build one Airflow DAG per client mapping file: wiring only.

Each task is one line that calls its body in :mod:`clientflow.airflow_edge`; the dbt task group
comes from :mod:`clientflow.transform.dbt_group`. Parsing reads the repository's mapping files
and dbt manifest and nothing else: no network, no database, no Variables. Connections are read
when tasks run.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from airflow.providers.amazon.aws.sensors.s3 import S3KeySensor
from airflow.sdk import DAG, Param, task

from client_extractor.contract import RUN_ID
from clientflow import airflow_edge as edge
from clientflow.arrival.batches import sensor_check
from clientflow.mapping import ClientMapping
from clientflow.transform.dbt_group import dbt_task_group

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
        "on_failure_callback": edge.on_failure(mapping),
    }


def build_client_dag(mapping: ClientMapping) -> DAG:
    client = mapping.client
    with DAG(
        dag_id=f"client_{client}",
        description=f"Arrival -> raw -> dbt -> validate -> promote for {mapping.display_name}",
        schedule=mapping.schedule,
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

        wait = S3KeySensor(
            task_id="wait_for_batch",
            aws_conn_id=edge.IDS.s3,
            bucket_name=f"{{{{ conn.{edge.IDS.s3}.extra_dejson.bucket }}}}",
            bucket_key=SENSOR_KEY.format(client=client),
            wildcard_match=True,
            check_fn=sensor_check(mapping),
            deferrable=True,
            poke_interval=30,
            timeout=timedelta(hours=20).total_seconds(),
        )

        @task
        def find_batch(planned: dict[str, Any]) -> dict[str, Any]:
            return edge.run_find_batch(mapping, planned)

        @task
        def ingest(found: dict[str, Any], **context: Any) -> dict[str, Any]:
            return edge.run_ingest(mapping, found, context)

        @task
        def validate(loaded: dict[str, Any]) -> dict[str, int]:
            return edge.run_validate(mapping, loaded)

        @task
        def promote(loaded: dict[str, Any], **context: Any) -> dict[str, Any]:
            return edge.run_promote(mapping, loaded, context)

        # TaskFlow passes XComArgs where the functions take their values: mypy cannot see that.
        planned = plan()
        found = find_batch(planned)  # type: ignore[arg-type]
        loaded = ingest(found)  # type: ignore[arg-type]
        transform = dbt_task_group(mapping, edge.IDS)
        planned >> wait >> found
        loaded >> transform >> validate(loaded) >> promote(loaded)  # type: ignore[arg-type]
    return dag
