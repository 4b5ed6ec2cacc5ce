"""Offboarding (``clientflow offboard``): the client's keys retired in IAM (moto's server), what is in
flight read from the ledger (PostgreSQL) and the bucket, and the order of waiting, ending runs that
wait for a batch, pausing and looking again. Airflow's side here is a double that plays its REST
API's answers in the order a scenario needs; tests/stack/test_runbook.py runs the command against
the real API on the running stack."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from clientflow.arrival import read_manifests
from clientflow.arrival.batches import SENSOR_TASK_ID
from clientflow.operations import ledger, offboard, upload_keys
from tests.support.practice import Practice, ingestion_id, mapping_for, tables


@dataclass
class ScriptedAirflow:
    """Airflow as the offboarding sees it: runs by id with their sensor's state, and the pause flag.
    ``late`` runs appear the first time the DAG is paused (the scheduler created them meanwhile)."""

    runs: dict[str, str | None] = field(default_factory=dict)
    paused: bool = False
    late: dict[str, str | None] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)

    def active_runs(self, dag_id: str) -> list[tuple[str, str]]:
        return [(r, "running") for r in self.runs]

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str | None]:
        return {"plan": "success", SENSOR_TASK_ID: self.runs.get(run_id, "success")}  # a run listed, then over

    def mark_task(self, dag_id: str, run_id: str, task_id: str, state: str, note: str) -> None:
        self.calls.append(f"mark {run_id} {task_id} {state}")
        assert "offboard" in note
        del self.runs[run_id]  # the run then ends without a batch

    def is_paused(self, dag_id: str) -> bool:
        return self.paused

    def set_paused(self, dag_id: str, paused: bool) -> None:
        self.calls.append("pause" if paused else "unpause")
        self.paused = paused
        if paused and self.late:
            self.runs |= self.late
            self.late = {}


def test_retire_all_keys_leaves_the_upload_user_without_keys(settings: Any) -> None:
    iam, client = settings.s3.client("iam"), "offboard_keys"
    made = {upload_keys.create_key(iam, client, settings.s3.bucket)[0] for _ in range(2)}
    held = [k.key_id for k in upload_keys.list_keys(iam, client)]
    assert set(held) == made
    assert offboard.retire_all_keys(iam, client) == held  # the last one too
    assert upload_keys.list_keys(iam, client) == []
    assert offboard.retire_all_keys(iam, client) == []  # again: nothing left, nothing refused


def test_look_names_batches_in_flight_unrecorded_and_left_for_a_person(settings: Any) -> None:
    mapping = mapping_for("offboard_look")
    practice = Practice(settings, mapping.client)
    today = datetime.now(UTC).date()
    failed_day, running_day, waiting_day, partial_day, old_day = (today - timedelta(days=d) for d in (4, 3, 2, 1, 30))
    data = {day: tables(2, version=str(day)) for day in (failed_day, running_day, waiting_day, partial_day, old_day)}
    s3, bucket = settings.s3.client(), settings.s3.bucket
    with psycopg.connect(settings.staging.conninfo()) as conn:
        for day, state in ((failed_day, "FAILED"), (running_day, "PROCESSING")):
            batch = practice.write(day, "r1", data[day])
            ledger.record_batch(conn, ingestion_id(mapping.client, day, data[day]), read_manifests(s3, bucket, batch),
                                dag_id=f"client_{mapping.client}", airflow_run_id="manual__x")
            ledger.set_state(conn, ingestion_id(mapping.client, day, data[day]), state, detail="a cause")
        conn.commit()
        practice.write(waiting_day, "r1", data[waiting_day])  # complete, its run not started yet
        practice.write(partial_day, "r1", data[partial_day], skip_manifest=("person",))  # can never complete now
        practice.write(old_day, "r1", data[old_day])  # outside the sweep's window

        seen = offboard.look(conn, s3, bucket, mapping, ScriptedAirflow(runs={"manual__1": "deferred"}), today)

    assert seen.batches == (f"{ingestion_id(mapping.client, running_day, data[running_day])} PROCESSING "
                            f"({running_day} run r1)",)
    assert seen.unrecorded == (f"{waiting_day} run r1",)
    assert seen.runs == (("manual__1", "running"),)
    assert seen.for_a_person == (f"{ingestion_id(mapping.client, failed_day, data[failed_day])} FAILED "
                                 f"({failed_day} run r1)",)
    assert "complete in the bucket, not yet in the ledger" in seen.describe()
    assert offboard.InFlight(for_a_person=seen.for_a_person).describe() == "nothing"
    assert not offboard.InFlight(for_a_person=seen.for_a_person)  # a FAILED batch does not hold the DAG open


def _looks(airflow: ScriptedAirflow, *batches: tuple[str, ...]) -> Any:
    """The ledger's batches in flight, one tuple per look (then none), beside Airflow's runs; a run
    whose sensor succeeded (it found its batch) is listed once, then it has finished."""
    queue = list(batches)

    def look() -> offboard.InFlight:
        runs = tuple((r, "running") for r in airflow.runs)
        for run_id in [r for r, sensor in airflow.runs.items() if sensor == "success"]:
            del airflow.runs[run_id]
        return offboard.InFlight(batches=queue.pop(0) if queue else (), runs=runs)

    return look


def test_waits_ends_a_run_waiting_for_a_batch_and_lets_a_late_run_finish_before_pausing() -> None:
    airflow = ScriptedAirflow(runs={"scheduled__1": "deferred"}, late={"asset_triggered__2": "success"})
    said: list[str] = []
    last = offboard.wait_and_pause(_looks(airflow, ("b1 PROCESSING (2026-12-01 run r1)",)), airflow, "client_x", "x",
                                   timeout=60, poll=0, say=said.append)
    # While a batch is in flight no run is ended (the sensor's run may be the batch's own).
    assert said[0] == "waiting for: batch b1 PROCESSING (2026-12-01 run r1); run scheduled__1 (running)"
    assert airflow.calls == ["mark scheduled__1 wait_for_batch skipped", "pause", "unpause", "pause"]
    assert any("scheduled__1" in line and "marked skipped" in line for line in said)
    assert any("asset_triggered__2" in line and "unpaused until they finish" in line for line in said)
    assert airflow.paused and not last


def test_a_late_run_that_does_not_finish_times_out_unpaused() -> None:
    airflow = ScriptedAirflow(late={"asset_triggered__2": None})  # still planning: never ended, never done
    with pytest.raises(offboard.OffboardIncomplete, match="run asset_triggered__2"):
        offboard.wait_and_pause(_looks(airflow), airflow, "client_x", "x", timeout=0.2, poll=0.01,
                                say=lambda _s: None)
    assert not airflow.paused and airflow.runs == {"asset_triggered__2": None}


def test_a_run_still_planning_is_not_ended() -> None:
    airflow = ScriptedAirflow(runs={"manual__1": None})
    planning = offboard.InFlight(runs=(("manual__1", "running"),))

    def look() -> offboard.InFlight:
        return planning if airflow.runs else offboard.InFlight()

    with pytest.raises(offboard.OffboardIncomplete):
        offboard.wait_and_pause(look, airflow, "client_x", "x", timeout=0, poll=0, say=lambda _s: None)
    assert airflow.calls == [] and not airflow.paused


def test_time_out_names_what_is_in_flight_and_leaves_the_dag_running() -> None:
    airflow = ScriptedAirflow(paused=True)
    stuck = offboard.InFlight(batches=("b1 PROCESSING (2026-12-01 run r1)",))
    said: list[str] = []
    with pytest.raises(offboard.OffboardIncomplete, match=r"client_x not paused: .*batch b1 PROCESSING"):
        offboard.wait_and_pause(lambda: stuck, airflow, "client_x", "x", timeout=0, poll=0, say=said.append)
    # It was paused with a batch in flight: a paused DAG's runs never finish, so it was unpaused.
    assert airflow.calls == ["unpause"] and not airflow.paused
    assert said[0].startswith("client_x was paused with batch b1")


def test_the_command_refuses_a_client_whose_mapping_is_gone(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    from clientflow import cli

    assert cli.main(["offboard", "gone_client", "--mappings-dir", str(tmp_path)]) == 2
    said = capsys.readouterr().err
    assert "no mapping of client gone_client" in said and "put the file back, offboard, then remove it" in said


def test_an_unreachable_airflow_retires_no_key(settings: Any, capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    from clientflow import cli

    iam = settings.s3.client("iam")
    key_id = upload_keys.create_key(iam, "ehrlogic", settings.s3.bucket)[0]
    with socket.socket() as probe:  # a loopback port nobody listens on
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    monkeypatch.setenv("CLIENTFLOW_AIRFLOW_PASSWORD", "not-a-real-one")
    try:
        assert cli.main(["offboard", "ehrlogic", "--airflow-url", f"http://127.0.0.1:{closed}"]) == 1
        assert f"Airflow at http://127.0.0.1:{closed} refused or could not be reached" in capsys.readouterr().err
        assert key_id in {k.key_id for k in upload_keys.list_keys(iam, "ehrlogic")}  # logged in first, retired nothing
    finally:
        upload_keys.retire_key(iam, "ehrlogic", key_id, offboard=True)
