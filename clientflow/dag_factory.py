"""Build one Airflow DAG per client mapping file.

The DAG only wires tasks; each task calls one stage in :mod:`clientflow.pipeline`. Parsing reads
the repository's mapping files and dbt manifest and nothing else: no network, no database, no
Variables. Connections are read when tasks run.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

from airflow.providers.amazon.aws.sensors.s3 import S3KeySensor
from airflow.sdk import DAG, Param, task
from cosmos import DbtTaskGroup, ExecutionConfig, ProfileConfig, ProjectConfig, RenderConfig
from cosmos.constants import InvocationMode, LoadMode, TestBehavior
from cosmos.profiles import PostgresUserPasswordProfileMapping

from clientflow.arrival.batches import sensor_check
from clientflow.config import ConnectionIds
from clientflow.identifiers import RUN_ID
from clientflow.mapping import ClientMapping

PROJECT_DIR = Path(__file__).resolve().parent.parent
DBT_DIR = PROJECT_DIR / "dbt"
# Cosmos runs dbt through this wrapper, which keeps the values PostgreSQL quotes in its errors out
# of the task log; it runs the real dbt (CLIENTFLOW_DBT_EXECUTABLE, default .venv-dbt/bin/dbt).
DBT_EXECUTABLE = PROJECT_DIR / "clientflow" / "transform" / "dbt_scrubbed.py"
IDS = ConnectionIds()

F = TypeVar("F", bound=Callable[..., Any])


LOCK_WAIT = timedelta(seconds=30)
"""How long a run waits before asking again for a client lock that another run holds."""


def stage(func: F) -> F:
    """Translate our errors into Airflow's: permanent -> fail now, transient -> retry, dup -> skip.

    A client lock held by another run (a backfill beside a scheduled run, say) is neither: the
    task is rescheduled, like a sensor, without spending one of its retries.
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        import psycopg
        import redis
        from airflow.sdk.exceptions import (
            AirflowFailException,
            AirflowRescheduleException,
            AirflowSkipException,
        )
        from botocore.exceptions import BotoCoreError, ClientError

        from clientflow.db import wrap_db_error
        from clientflow.errors import DuplicateBatch, PermanentError, TransientError, Where
        from clientflow.operations.locks import LockBusy

        try:
            return func(*args, **kwargs)
        except DuplicateBatch as dup:
            raise AirflowSkipException(f"duplicate: {dup}") from None
        except LockBusy as busy:
            logging.getLogger(__name__).info("%s; asking again in %s", busy, LOCK_WAIT)
            raise AirflowRescheduleException(datetime.now(UTC) + LOCK_WAIT) from None
        except PermanentError as exc:
            raise AirflowFailException(str(exc)) from exc
        except TransientError:
            raise
        except psycopg.Error as exc:
            batch = next((a for a in args if isinstance(a, dict) and "client" in a), {})
            where = Where(client=batch.get("client"), batch_date=batch.get("date"), run_id=batch.get("run_id"))
            wrapped = wrap_db_error(exc, where, func.__name__)
            if isinstance(wrapped, PermanentError):
                raise AirflowFailException(str(wrapped)) from None
            raise wrapped from None
        except (BotoCoreError, ClientError) as exc:
            raise TransientError(f"{func.__name__}: S3 error {type(exc).__name__}") from exc
        except redis.RedisError as exc:
            raise TransientError(f"{func.__name__}: Redis error {type(exc).__name__}") from None

    return wrapper  # type: ignore[return-value]


def _on_failure(mapping: ClientMapping) -> Callable[[dict[str, Any]], None]:
    def callback(context: dict[str, Any]) -> None:
        from airflow.sdk import Connection

        from clientflow import pipeline
        from clientflow.config import PipelineSettings
        from clientflow.operations import alerts

        log = logging.getLogger("clientflow.alerts")
        ti = context["ti"]
        # What is known of the batch: ingest's record, else find_batch's, else plan's (a sensor timeout).
        batch: dict[str, Any] = next(filter(None, (ti.xcom_pull(task_ids=t) for t in ("ingest", "find_batch", "plan"))), {})
        exc = context.get("exception")
        try:
            pipeline.mark_failed(PipelineSettings.from_airflow(IDS), batch, alerts.safe_reason(exc),
                                 airflow_run_id=context["run_id"])
        except Exception as err:  # the email must still go out
            log.error("could not record FAILED in the ledger: %s", type(err).__name__)
        subject, body = alerts.compose(alerts.Failure(
            dag_id=ti.dag_id, task_id=ti.task_id, airflow_run_id=context["run_id"],
            try_number=ti.try_number, client=mapping.client, batch=batch, exception=exc,
            log_url=getattr(ti, "log_url", None),
        ))
        smtp = Connection.get(IDS.smtp)
        extra = smtp.extra_dejson
        alerts.send(smtp.host or "127.0.0.1", int(smtp.port or 25), extra.get("from_email", "clientflow@localhost"),
                    mapping.owners, subject, body, user=smtp.login or None, password=smtp.password or None,
                    starttls=bool(extra.get("starttls", False)))
        log.info("failure email sent to %d owner(s)", len(mapping.owners))

    return callback


def _dbt_group(mapping: ClientMapping) -> DbtTaskGroup:
    dbt_vars: dict[str, Any] = {
        **mapping.dbt_vars(),
        "ingestion_id": "{{ ti.xcom_pull(task_ids='ingest')['ingestion_id'] }}",
        "batch_date": "{{ ti.xcom_pull(task_ids='ingest')['date'] }}",
        "fence_token": "{{ ti.xcom_pull(task_ids='ingest')['lock']['token'] }}",
    }
    return DbtTaskGroup(
        group_id="transform",
        project_config=ProjectConfig(
            dbt_project_path=DBT_DIR, manifest_path=DBT_DIR / "target" / "manifest.json",
        ),
        profile_config=ProfileConfig(
            profile_name="clientflow",
            target_name="staging",
            profile_mapping=PostgresUserPasswordProfileMapping(
                conn_id=IDS.staging, profile_args={"schema": "dbt"}
            ),
        ),
        execution_config=ExecutionConfig(
            dbt_executable_path=str(DBT_EXECUTABLE), invocation_mode=InvocationMode.SUBPROCESS
        ),
        render_config=RenderConfig(
            load_method=LoadMode.DBT_MANIFEST,
            dbt_executable_path=str(DBT_EXECUTABLE),
            invocation_mode=InvocationMode.SUBPROCESS,
            test_behavior=TestBehavior.AFTER_EACH,
            select=["path:models/practice"],
        ),
        operator_args={"vars": dbt_vars, "install_deps": False},
        default_args={"retries": 0},
    )


def build_client_dag(mapping: ClientMapping) -> DAG:
    client = mapping.client
    start = datetime.combine(mapping.start_date, datetime.min.time(), tzinfo=ZoneInfo("UTC"))
    # One pattern over all tables of the date (and run, if given); check_fn then requires that a
    # single run holds every table's data.json and manifest.json, so a partial upload waits.
    key = (
        f"client={client}/table=*/date={{{{ ti.xcom_pull(task_ids='plan')['date_nodash'] }}}}/"
        f"run_id={{{{ ti.xcom_pull(task_ids='plan')['run_id'] or '*' }}}}/*.json"
    )
    with DAG(
        dag_id=f"client_{client}",
        description=f"Arrival -> raw -> dbt -> validate -> promote for {mapping.display_name}",
        schedule=mapping.schedule,
        start_date=start,
        catchup=False,
        max_active_runs=1,
        tags=["clientflow", f"client:{client}"],
        doc_md=(Path(__file__).with_name("DAG.md")).read_text(encoding="utf-8"),
        params={
            "batch_date": Param(None, type=["null", "string"], format="date",
                                description="Batch date (YYYY-MM-DD); default: the run's logical date, else today (UTC)."),
            "run_id": Param(None, type=["null", "string"], pattern=RUN_ID.pattern,
                            description="Extractor run id; default: the newest complete run of the date."),
        },
        default_args={
            "owner": "clientflow",
            "retries": 3,
            "retry_delay": timedelta(seconds=20),
            "retry_exponential_backoff": True,
            "max_retry_delay": timedelta(minutes=10),
            "on_failure_callback": _on_failure(mapping),
        },
    ) as dag:

        @task
        @stage
        def plan(**context: Any) -> dict[str, str]:
            from clientflow import pipeline
            params = context["params"]
            return pipeline.plan(client, params.get("batch_date"), params.get("run_id"),
                                 context.get("logical_date"))

        wait = S3KeySensor(
            task_id="wait_for_batch",
            aws_conn_id=IDS.s3,
            bucket_name=f"{{{{ conn.{IDS.s3}.extra_dejson.bucket }}}}",
            bucket_key=key,
            wildcard_match=True,
            check_fn=sensor_check(mapping),
            deferrable=True,
            poke_interval=30,
            timeout=timedelta(hours=20).total_seconds(),
        )

        @task
        @stage
        def find_batch(planned: dict[str, str]) -> dict[str, Any]:
            from datetime import date

            from clientflow import pipeline
            from clientflow.config import PipelineSettings
            return pipeline.find_batch(PipelineSettings.from_airflow(IDS), mapping,
                                       date.fromisoformat(planned["date"]), planned["run_id"] or None)

        @task
        @stage
        def ingest(batch: dict[str, Any], **context: Any) -> dict[str, Any]:
            from clientflow import pipeline
            from clientflow.config import PipelineSettings
            return pipeline.ingest(PipelineSettings.from_airflow(IDS), mapping, batch,
                                   dag_id=context["dag"].dag_id, airflow_run_id=context["run_id"])

        @task
        @stage
        def validate(batch: dict[str, Any]) -> dict[str, int]:
            from clientflow import pipeline
            from clientflow.config import PipelineSettings
            return pipeline.validate(PipelineSettings.from_airflow(IDS), mapping, batch)

        @task
        @stage
        def promote(batch: dict[str, Any], **context: Any) -> dict[str, dict[str, int]]:
            from clientflow import pipeline
            from clientflow.config import PipelineSettings
            return pipeline.promote(PipelineSettings.from_airflow(IDS), mapping, batch,
                                    airflow_run_id=context["run_id"])

        # TaskFlow passes XComArgs where the functions take their values: mypy cannot see that.
        planned = plan()
        found = find_batch(planned)  # type: ignore[arg-type]
        loaded = ingest(found)  # type: ignore[arg-type]
        transform = _dbt_group(mapping)
        checked = validate(loaded)  # type: ignore[arg-type]
        planned >> wait >> found
        loaded >> transform >> checked >> promote(loaded)  # type: ignore[arg-type]
    return dag
