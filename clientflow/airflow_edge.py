"""Where the pipeline meets Airflow: task bodies, error translation, the failure callback.

Each ``run_*`` function is the whole body of one task of a client DAG: it reads the settings from
the Airflow connections, turns the XCom dict it was given into a :class:`~clientflow.batch.Batch`,
calls one stage of :mod:`clientflow.pipeline`, and hands back a JSON-able dict. :func:`stage`
turns our errors into Airflow's. Heavy imports happen inside the functions: DAG files import this
module at parse time.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from clientflow.config import ConnectionIds
from clientflow.mapping import ClientMapping

F = TypeVar("F", bound=Callable[..., Any])
IDS = ConnectionIds()
LOCK_WAIT = timedelta(seconds=30)
"""How long a run waits before asking again for a client lock that another run holds."""

log = logging.getLogger(__name__)


def stage(func: F) -> F:
    """Translate our errors into Airflow's: permanent -> fail now, transient -> retry, dup -> skip.

    A client lock held by another run (a backfill beside a scheduled run, say) is neither: the
    task is rescheduled, like a sensor, without spending one of its retries. The stages name
    their own errors (client, table, date, run); an error of a service that escaped them is
    still reduced to its type, never its message, which may quote data.
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from airflow.sdk.exceptions import (
            AirflowFailException,
            AirflowRescheduleException,
            AirflowSkipException,
        )

        from clientflow.errors import DuplicateBatch, NothingToProcess, PermanentError, Where
        from clientflow.faults import named
        from clientflow.operations.locks import LockBusy

        try:
            with named(Where(), func.__name__):
                return func(*args, **kwargs)
        except DuplicateBatch as dup:
            raise AirflowSkipException(f"duplicate: {dup}") from None
        except NothingToProcess as nothing:
            raise AirflowSkipException(str(nothing)) from None
        except LockBusy as busy:
            log.info("%s; asking again in %s", busy, LOCK_WAIT)
            raise AirflowRescheduleException(datetime.now(UTC) + LOCK_WAIT) from None
        except PermanentError as exc:
            raise AirflowFailException(str(exc)) from exc

    return wrapper  # type: ignore[return-value]


def _settings() -> Any:
    from clientflow.config import PipelineSettings

    return PipelineSettings.from_airflow(IDS)


@stage
def run_plan(client: str, context: dict[str, Any]) -> dict[str, Any]:
    from clientflow import pipeline

    params = context["params"]
    planned = pipeline.plan(client, params.get("batch_date"), params.get("run_id"), context.get("logical_date"),
                            _announced(client, context))
    return planned.to_xcom()


def _announced(client: str, context: dict[str, Any]) -> Any:
    """The batches the bucket's messages of this run announce; None for a run no event started."""
    from clientflow.arrival import events

    asset_events = context.get("triggering_asset_events") or {}
    if not any(True for found in asset_events.values() for _ in found):
        return None
    return events.announced_batches(client, events.messages_of(asset_events), where=f"client={client}")


@stage
def run_next_batch(mapping: ClientMapping, planned: dict[str, Any] | None) -> dict[str, Any]:
    """The sweep's next batch, as the conf and run id of the run that takes it; skipped if none."""
    from airflow.sdk.exceptions import AirflowSkipException

    from clientflow import pipeline
    from clientflow.batch import Batch

    found = pipeline.next_batch(_settings(), mapping, Batch.from_xcom(planned) if planned else None,
                                datetime.now(UTC).date())
    if found is None:
        raise AirflowSkipException("no other complete batch waits in the bucket")
    return {"conf": found, "run_id": f"sweep__{found['batch_date']}__{found['run_id']}"}


@stage
def run_find_batch(mapping: ClientMapping, planned: dict[str, Any]) -> dict[str, Any]:
    from clientflow import pipeline
    from clientflow.batch import Batch

    return pipeline.find_batch(_settings(), mapping, Batch.from_xcom(planned)).to_xcom()


@stage
def run_ingest(mapping: ClientMapping, found: dict[str, Any], context: dict[str, Any]) -> dict[str, Any]:
    from clientflow import pipeline
    from clientflow.batch import Batch

    batch = pipeline.ingest(_settings(), mapping, Batch.from_xcom(found), dag_id=context["dag"].dag_id,
                            airflow_run_id=context["run_id"])
    return batch.to_xcom()


@stage
def run_validate(mapping: ClientMapping, loaded: dict[str, Any]) -> dict[str, int]:
    from clientflow import pipeline
    from clientflow.batch import Batch

    return pipeline.validate(_settings(), mapping, Batch.from_xcom(loaded))


@stage
def run_promote(mapping: ClientMapping, loaded: dict[str, Any], context: dict[str, Any]) -> dict[str, Any]:
    from clientflow import pipeline
    from clientflow.batch import Batch

    return pipeline.promote(_settings(), mapping, Batch.from_xcom(loaded), airflow_run_id=context["run_id"])


def known_batch(ti: Any) -> Any:
    """What the run knew of its batch: ingest's record, else find_batch's, else plan's."""
    from clientflow.batch import Batch

    for task_id in ("ingest", "find_batch", "plan"):
        value = ti.xcom_pull(task_ids=task_id)
        if value:
            return Batch.from_xcom(value)
    return None


def on_failure(mapping: ClientMapping) -> Callable[[dict[str, Any]], None]:
    """The DAG's failure callback: ledger FAILED, the client lock released, the owners emailed."""

    def callback(context: dict[str, Any]) -> None:
        from airflow.sdk import Connection

        from clientflow import pipeline
        from clientflow.operations import alerts

        ti = context["ti"]
        batch = known_batch(ti)
        exc = context.get("exception")
        try:
            pipeline.mark_failed(_settings(), batch, alerts.safe_reason(exc), airflow_run_id=context["run_id"])
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
