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
    announced = _announced(client, context)
    planned = pipeline.plan(client, params.get("batch_date"), params.get("run_id"), context.get("logical_date"),
                            announced, pipeline.seen_of(_settings(), client, announced))
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
    return {"conf": found, "run_id": f"{pipeline.SWEEP_RUN_PREFIX}{found['batch_date']}__{found['run_id']}"}


@stage
def run_find_batch(mapping: ClientMapping, planned: dict[str, Any]) -> dict[str, Any]:
    from clientflow import pipeline
    from clientflow.batch import Batch

    return pipeline.find_batch(_settings(), mapping, Batch.from_xcom(planned)).to_xcom()


@stage
def run_ingest(mapping: ClientMapping, found: dict[str, Any], context: dict[str, Any]) -> dict[str, Any]:
    from clientflow import pipeline
    from clientflow.batch import Batch
    from clientflow.operations.timing import timed

    settings, batch = _settings(), Batch.from_xcom(found)
    with timed(settings.staging, "ingest", batch, context["run_id"]) as span:
        span.batch = pipeline.ingest(settings, mapping, batch, dag_id=context["dag"].dag_id,
                                     airflow_run_id=context["run_id"])
    return span.batch.to_xcom()


@stage
def run_validate(mapping: ClientMapping, loaded: dict[str, Any], context: dict[str, Any]) -> dict[str, int]:
    from clientflow import pipeline
    from clientflow.batch import Batch
    from clientflow.operations.timing import timed

    settings, batch = _settings(), Batch.from_xcom(loaded)
    with timed(settings.staging, "validate", batch, context["run_id"]):
        return pipeline.validate(settings, mapping, batch)


@stage
def run_promote(mapping: ClientMapping, loaded: dict[str, Any], context: dict[str, Any]) -> dict[str, Any]:
    from clientflow import pipeline
    from clientflow.batch import Batch
    from clientflow.operations.timing import timed

    settings, batch = _settings(), Batch.from_xcom(loaded)
    with timed(settings.staging, "promote", batch, context["run_id"]):
        return pipeline.promote(settings, mapping, batch, airflow_run_id=context["run_id"])


def known_batch(ti: Any) -> Any:
    """What the run knew of its batch: ingest's record, else find_batch's, else plan's."""
    from clientflow.batch import Batch

    for task_id in ("ingest", "find_batch", "plan"):
        value = ti.xcom_pull(task_ids=task_id)
        if value:
            return Batch.from_xcom(value)
    return None


def log_context(mapping: ClientMapping) -> Callable[[dict[str, Any]], None]:
    """Every task's ``on_execute_callback``: its log lines name client, job and stage from here on
    (clientflow.operations.logcontext)."""

    def callback(context: dict[str, Any]) -> None:
        from clientflow.operations import logcontext

        ti = context["ti"]
        try:
            batch = known_batch(ti)
        except Exception as err:  # noqa: BLE001 - a task runs even when its XComs cannot be read here
            log.warning("[client=%s] the batch of this run is unknown to the log context: %s", mapping.client,
                        type(err).__name__)
            batch = None
        logcontext.bind(mapping.client, ti.task_id, batch)

    return callback


_renewers: dict[tuple[str, str, int], Any] = {}
"""The running task's lock renewer, by (run id, task id, map index): started before the task body,
stopped after it (clientflow.operations.locks.Renewer)."""


def _task_key(context: dict[str, Any]) -> tuple[str, str, int]:
    ti = context["ti"]
    return str(context["run_id"]), str(ti.task_id), int(getattr(ti, "map_index", -1) or -1)


def keep_lock(mapping: ClientMapping) -> Callable[[dict[str, Any]], None]:
    """Every task's second ``on_execute_callback``: while the task runs, the client's lock, if this
    run holds it, does not expire (a long load or dbt model outlasting ``lock_timeout_seconds``)."""

    def callback(context: dict[str, Any]) -> None:
        from clientflow.operations import locks

        try:
            settings = _settings()
        except Exception as err:  # noqa: BLE001 - the task itself reports a missing connection
            log.warning("[client=%s] no lock renewal: %s", mapping.client, type(err).__name__)
            return
        renewer = locks.Renewer(settings.redis, mapping.client, str(context["run_id"]))
        _renewers[_task_key(context)] = renewer
        renewer.start()

    return callback


def stop_keeping_lock(context: dict[str, Any]) -> None:
    renewer = _renewers.pop(_task_key(context), None)
    if renewer is not None:
        renewer.stop()


def log_result(_mapping: ClientMapping) -> Callable[..., None]:
    """Every task's ``post_execute`` hook: a task body runs in a copy of the log context (Airflow's
    task runner), so the job id that ``ingest`` named inside it is bound again here, for the
    lines Airflow writes after the body (the XCom push, the task's end)."""

    def hook(context: dict[str, Any], result: Any = None) -> None:
        from clientflow.batch import Batch
        from clientflow.operations import logcontext

        stop_keeping_lock(context)
        if isinstance(result, dict) and result.get("ingestion_id") and result.get("date"):
            try:
                logcontext.bind_job(Batch.from_xcom(result))
            except (KeyError, TypeError, ValueError):  # not a batch after all: the context stays
                pass

    return hook


def record_failure(mapping: ClientMapping) -> Callable[[dict[str, Any]], None]:
    """First of the failure callbacks: ledger FAILED, dummy production restored, the client lock
    released. The notifiers after it (clientflow.operations.notify) read what it recorded."""

    def callback(context: dict[str, Any]) -> None:
        from clientflow import pipeline
        from clientflow.operations import alerts

        stop_keeping_lock(context)  # the lock is released below: nothing to renew any more
        try:
            pipeline.mark_failed(_settings(), known_batch(context["ti"]), alerts.safe_reason(context.get("exception")),
                                 airflow_run_id=context["run_id"])
        except Exception as err:  # the notifiers must still run
            log.error("[client=%s] could not record FAILED in the ledger: %s", mapping.client, type(err).__name__)

    return callback


@stage
def undo_before_retry(context: dict[str, Any]) -> None:
    """First step of a retried dbt build: the models the failed try merged into dummy production are
    undone under the run's own lock and fencing token, so the retry starts from the state before
    the batch (a run whose batch failed, or whose lock was taken over, is refused here)."""
    from clientflow import pipeline

    batch = known_batch(context["ti"])
    if batch is not None and batch.ingestion_id:
        pipeline.undo_partial_transform(_settings(), batch)


def on_failure(mapping: ClientMapping) -> list[Callable[[dict[str, Any]], None]]:
    """The client DAG's failure callbacks, in order: record, email the owners, escalate after
    repeated failures, then the mapping's extra notifiers."""
    from clientflow.operations import notify

    return [record_failure(mapping), *notify.failure_notifiers(mapping, IDS.smtp)]


def on_promoted(mapping: ClientMapping) -> list[Callable[[dict[str, Any]], None]]:
    """The promote task's success callbacks: a repeated-failure incident ends, with its notice."""
    from clientflow.operations import notify

    return list(notify.recovery_notifiers(mapping, IDS.smtp))


def run_watchdog() -> list[str]:
    """The watchdog DAG's task: every client mapping that loads, checked; what was sent, returned."""
    from clientflow.mapping import load_mapping, mapping_files
    from clientflow.operations import alerts, watchdog

    mappings = []
    for path in mapping_files():
        try:
            mappings.append(load_mapping(path))
        except Exception as exc:  # noqa: BLE001 - its own DAG already says why; the others are watched
            log.warning("watchdog skips %s: the mapping cannot be used (%s)", path.name, type(exc).__name__)

    def send(recipients: Any, subject: str, body: str) -> None:
        alerts.send(IDS.smtp, recipients, subject, body)

    said = watchdog.watch(_settings(), mappings, send)
    log.info("watchdog checked %d client(s); %d message(s) sent", len(mappings), len(said))
    return said
