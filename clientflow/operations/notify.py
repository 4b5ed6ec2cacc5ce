"""Airflow notifiers of a client DAG: the failure email, the escalation after repeated failures,
the recovery notice, and the extra notifiers a client's mapping names (Slack, PagerDuty, ...).

Each is a :class:`~airflow.sdk.BaseNotifier`, so a callback list mixes ours with any provider's.
They run in the task's process after the ledger has recorded the failure (the DAG's callback
list puts :func:`clientflow.airflow_edge.record_failure` first). Email goes through the smtp
provider's hook and the Airflow connection ``smtp_conn_id``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from airflow.sdk import BaseNotifier

from clientflow.mapping import ClientMapping

log = logging.getLogger(__name__)


def _settings() -> Any:
    from clientflow.airflow_edge import _settings as settings

    return settings()


def _with_ledger_id(batch: Any) -> Any:
    """The batch with its ingestion id from the ledger, when the task failed after recording the
    batch but before handing it on (a load's checksum, a renamed column): the email names it."""
    if batch is None or batch.ingestion_id or not batch.run_id:
        return batch
    from dataclasses import replace

    from clientflow.db import connect

    try:
        with connect(_settings().staging, batch.where(), "reading the batch's ingestion id") as conn:
            row = conn.execute("select ingestion_id from pipeline.batches where client_name = %s and batch_date = %s "
                               "and run_id = %s order by updated_at desc limit 1",
                               (batch.client, batch.day, batch.run_id)).fetchone()
    except Exception as err:  # noqa: BLE001 - the email goes out without it
        log.warning("[client=%s] the failure email names no ingestion id: %s", batch.client, type(err).__name__)
        return batch
    return replace(batch, ingestion_id=row[0]) if row else batch


class BatchFailureEmail(BaseNotifier):
    """One email per failed batch to the client's owners: what failed, what was kept, the log,
    the runbook step; never a value."""

    def __init__(self, *, client: str, owners: Sequence[str], smtp_conn_id: str) -> None:
        super().__init__()
        self.client, self.owners, self.smtp_conn_id = client, list(owners), smtp_conn_id

    def notify(self, context: Any) -> None:
        from clientflow.airflow_edge import known_batch
        from clientflow.operations import alerts

        ti = context["ti"]
        subject, body = alerts.compose(alerts.Failure(
            dag_id=ti.dag_id, task_id=ti.task_id, airflow_run_id=context["run_id"], try_number=ti.try_number,
            client=self.client, batch=_with_ledger_id(known_batch(ti)), exception=context.get("exception"),
            log_url=getattr(ti, "log_url", None),
        ))
        alerts.send(self.smtp_conn_id, self.owners, subject, body)
        log.info("[client=%s] failure email sent to %d owner(s)", self.client, len(self.owners))


class EscalationNotifier(BaseNotifier):
    """After ``after`` batches failed in a row, one escalation to the second line per incident."""

    def __init__(self, *, client: str, after: int, recipients: Sequence[str], smtp_conn_id: str) -> None:
        super().__init__()
        self.client, self.after, self.recipients, self.smtp_conn_id = client, after, list(recipients), smtp_conn_id

    def notify(self, context: Any) -> None:
        from clientflow.db import connect
        from clientflow.errors import Where
        from clientflow.operations import alerts, incidents

        with connect(_settings().staging, Where(client=self.client), "checking for repeated failures") as conn:
            streak = incidents.failed_in_a_row(conn, self.client)
            if streak < self.after:
                return
            opened = incidents.open_incident(conn, self.client, "failing",
                                             f"{streak} batches failed in a row, none promoted since (threshold "
                                             f"{self.after}); newest failed in task {context['ti'].task_id}")
            if opened is None:
                return  # escalated already: one alert per incident
            alerts.send(self.smtp_conn_id, self.recipients, *alerts.compose_incident(opened, escalation=True))
        log.info("[client=%s] escalated after %d failed batches", self.client, streak)


class RecoveryNotifier(BaseNotifier):
    """On a promotion: ends the client's repeated-failure incident, with one recovery notice."""

    def __init__(self, *, client: str, recipients: Sequence[str], smtp_conn_id: str) -> None:
        super().__init__()
        self.client, self.recipients, self.smtp_conn_id = client, list(recipients), smtp_conn_id

    def notify(self, context: Any) -> None:
        from clientflow.db import connect
        from clientflow.errors import Where
        from clientflow.operations import alerts, incidents

        with connect(_settings().staging, Where(client=self.client), "ending the failure incident") as conn:
            how = f"a batch was promoted by Airflow run {context['run_id']}"
            closed = incidents.close_incident(conn, self.client, "failing", how)
            if closed is not None:
                alerts.send(self.smtp_conn_id, self.recipients, *alerts.compose_recovery(closed, how))
                log.info("[client=%s] recovery notice sent", self.client)


def extra_notifiers(mapping: ClientMapping) -> list[BaseNotifier]:
    """The notifiers the mapping's ``alerts.notifiers`` names, built at parse time: a path that does
    not import, or that is not a notifier, makes the mapping unusable (its DAG says why)."""
    from airflow.sdk.module_loading import import_string

    built: list[BaseNotifier] = []
    for i, extra in enumerate(mapping.alerts.notifiers):
        field = f"alerts.notifiers[{i}].notifier"
        try:
            cls = import_string(extra.notifier)
        except ImportError as exc:
            raise ValueError(f"{field}: cannot import {extra.notifier} ({type(exc).__name__}: is its provider "
                             "installed?)") from None
        if not (isinstance(cls, type) and issubclass(cls, BaseNotifier)):
            raise ValueError(f"{field}: {extra.notifier} is not an Airflow notifier (BaseNotifier)")
        built.append(cls(**extra.args))
    return built


def failure_notifiers(mapping: ClientMapping, smtp_conn_id: str) -> list[BaseNotifier]:
    second_line = mapping.alerts.escalation or mapping.owners
    return [
        BatchFailureEmail(client=mapping.client, owners=mapping.owners, smtp_conn_id=smtp_conn_id),
        EscalationNotifier(client=mapping.client, after=mapping.alerts.escalate_after, recipients=second_line,
                           smtp_conn_id=smtp_conn_id),
        *extra_notifiers(mapping),
    ]


def recovery_notifiers(mapping: ClientMapping, smtp_conn_id: str) -> list[BaseNotifier]:
    recipients = list(dict.fromkeys([*mapping.owners, *mapping.alerts.escalation]))
    return [RecoveryNotifier(client=mapping.client, recipients=recipients, smtp_conn_id=smtp_conn_id)]
