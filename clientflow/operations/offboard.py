"""Offboarding a client (``clientflow offboard``): its uploads stop, what already arrived finishes,
then its DAG is paused. Nothing of its data is deleted: the JSON files stay in the bucket, its raw
tables and production rows stay, and the ledger keeps its batches.

The order matters. Airflow's scheduler does not advance the runs of a paused DAG (nor of one whose
file no longer defines it), so a run caught half way would stay running for good, and its batch
PROCESSING. So:

1. every upload key of the client is retired (IAM): nothing new can arrive;
2. wait until nothing is in flight: no batch PENDING or PROCESSING in the ledger, no complete batch
   in the bucket (within the sweep's window) that the ledger has not seen (a run for it is about
   to start), and no run of the DAG running or queued. A run that only waits in its sensor for a
   batch, when no batch is in flight or in the bucket, waits for one that no key can upload now:
   it is ended the way the sensor's own timeout ends it (the sensor marked skipped, with a note
   the UI shows), and the run finishes without a batch;
3. pause the DAG, then look once more: a run the scheduler created in between is let finish (the
   DAG unpaused again) and step 2 goes on.

FAILED and REOFFERED batches wait for a person, not for a run: they are named, not waited for.
Removing the mapping file (a change to the repository) and setting up the bucket's notifications
without the client stay the operator's steps, printed at the end.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import date
from typing import Any, Protocol

from clientflow.arrival.batches import SENSOR_TASK_ID, complete_batches
from clientflow.mapping import ClientMapping
from clientflow.operations import ledger, upload_keys

FOR_A_PERSON = ("FAILED", "REOFFERED")
WAITING_SENSOR = ("deferred", "up_for_reschedule")
"""States of a sensor that is waiting (a sensor ``running`` defers within a second or two)."""


class Airflow(Protocol):
    """What offboarding asks of Airflow (clientflow.operations.oncall.AirflowApi over its REST API)."""

    def active_runs(self, dag_id: str) -> list[tuple[str, str]]: ...
    def task_states(self, dag_id: str, run_id: str) -> dict[str, str | None]: ...
    def mark_task(self, dag_id: str, run_id: str, task_id: str, state: str, note: str) -> None: ...
    def is_paused(self, dag_id: str) -> bool: ...
    def set_paused(self, dag_id: str, paused: bool) -> None: ...


class OffboardIncomplete(RuntimeError):
    """Something was still in flight when the time ran out: the DAG is left unpaused so it can finish."""


@dataclass(frozen=True)
class InFlight:
    """What keeps a client's DAG from being paused; each entry names a batch or a run, never data."""

    batches: tuple[str, ...] = ()
    unrecorded: tuple[str, ...] = ()
    runs: tuple[tuple[str, str], ...] = ()
    """(run id, state) of the DAG's runs running or queued."""
    for_a_person: tuple[str, ...] = ()
    """FAILED and REOFFERED batches: named at the end, never waited for."""

    def __bool__(self) -> bool:
        return bool(self.batches or self.unrecorded or self.runs)

    def describe(self) -> str:
        parts = [f"batch {b}" for b in self.batches]
        parts += [f"complete in the bucket, not yet in the ledger: {u}" for u in self.unrecorded]
        parts += [f"run {r} ({s})" for r, s in self.runs]
        return "; ".join(parts) or "nothing"


def retire_all_keys(iam: Any, client: str) -> list[str]:
    """Retire every upload key of the client (the last one too): the ids retired, oldest first."""
    retired = []
    for key in upload_keys.list_keys(iam, client):
        upload_keys.retire_key(iam, client, key.key_id, offboard=True)
        retired.append(key.key_id)
    return retired


def look(conn: Any, s3: Any, bucket: str, mapping: ClientMapping, airflow: Airflow, today: date) -> InFlight:
    """What is in flight for the client now: the ledger's batches, the bucket's unrecorded ones, the DAG's runs."""
    def shown(states: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(f"{i} {s} ({d} run {r})" for i, s, d, r in ledger.batches_in(conn, mapping.client, states))

    return InFlight(shown(ledger.IN_FLIGHT), unrecorded_batches(s3, bucket, conn, mapping, today),
                    tuple(airflow.active_runs(f"client_{mapping.client}")), shown(FOR_A_PERSON))


def unrecorded_batches(s3: Any, bucket: str, conn: Any, mapping: ClientMapping, today: date) -> tuple[str, ...]:
    """Complete batches of the sweep's window in the bucket that the ledger has not seen."""
    complete = complete_batches(s3, bucket, mapping, mapping.sweep_since(today))
    return tuple(f"{day} run {run}" for day, run in ledger.unseen(conn, mapping.client, complete))


def end_waiting_runs(airflow: Airflow, dag_id: str, client: str, runs: Iterable[tuple[str, str]]) -> list[str]:
    """End those of ``runs`` that only wait in their sensor for a batch: the sensor is marked skipped,
    as its timeout would (``soft_fail``). Called only when no batch is in flight or in the bucket."""
    ended = []
    for run_id, _state in runs:
        if airflow.task_states(dag_id, run_id).get(SENSOR_TASK_ID) in WAITING_SENSOR:
            airflow.mark_task(dag_id, run_id, SENSOR_TASK_ID, "skipped",
                              f"clientflow offboard {client}: its upload keys are retired, no batch can arrive")
            ended.append(run_id)
    return ended


def wait_and_pause(look: Callable[[], InFlight], airflow: Airflow, dag_id: str, client: str, *,
                   timeout: float, poll: float = 5.0, say: Callable[[str], None] = print) -> InFlight:
    """Wait until ``look()`` finds nothing in flight, ending runs that only wait for a batch, then
    pause the DAG and return the last look (its batches left for a person); raise
    OffboardIncomplete (the DAG unpaused) if that takes over ``timeout`` s."""
    deadline = time.monotonic() + timeout
    shown = ""
    if airflow.is_paused(dag_id) and (first := look()):
        airflow.set_paused(dag_id, False)
        say(f"{dag_id} was paused with {first.describe()} in flight; unpaused until that finishes")
    while True:
        now = look()
        if not now.batches and not now.unrecorded and now.runs:
            for run_id in end_waiting_runs(airflow, dag_id, client, now.runs):
                say(f"ended run {run_id}: its sensor waited for a batch that no key can upload now "
                    f"({SENSOR_TASK_ID} marked skipped)")
        if not now:
            airflow.set_paused(dag_id, True)
            late = airflow.active_runs(dag_id)
            if not late:
                return now
            airflow.set_paused(dag_id, False)  # a paused DAG's runs do not advance: let them finish
            now = InFlight(runs=tuple(late))
            say(f"run(s) {', '.join(r for r, _s in late)} started as {dag_id} was paused; "
                "unpaused until they finish")
        if now.describe() != shown:
            shown = now.describe()
            say(f"waiting for: {shown}")
        if time.monotonic() > deadline:
            raise OffboardIncomplete(f"{dag_id} not paused: still in flight after {timeout:.0f} s: {shown}")
        time.sleep(poll)


__all__ = ["Airflow", "InFlight", "OffboardIncomplete", "end_waiting_runs", "look", "retire_all_keys",
           "unrecorded_batches", "wait_and_pause"]
