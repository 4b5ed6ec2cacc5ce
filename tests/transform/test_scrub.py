"""The dbt output filter: PostgreSQL's quoted values go, names of database objects stay."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from clientflow.transform.dbt_scrubbed import TRANSIENT_EXIT, WITHHELD, scrub

W = WITHHELD


@pytest.mark.parametrize(("line", "expected"), [
    ('invalid input syntax for type timestamp: "born 1950 Mary"', f"invalid input syntax for type timestamp: {W}"),
    ('invalid input value for enum sex: "F "', f"invalid input value for enum sex: {W}"),
    ('invalid input syntax for type integer: "1" or "2"\n', f"invalid input syntax for type integer: {W}\n"),
    ('date/time field value out of range: "2026-13-45"', f"date/time field value out of range: {W}"),
    ('value "99999999999" is out of range for type integer', f"value {W} is out of range for type integer"),
    ('invalid value "ab" for "MM"', f"invalid value {W} for {W}"),
    ('time zone "Mars/Base" not recognized', f"time zone {W} not recognized"),
    ("DETAIL:  Failing row contains (acme, P1, Mary, Smith, 1850-01-01).", f"DETAIL:  Failing row contains {W}."),
    ('DETAIL:  Key (client_id, patient_id)=(acme, P"1) already exists.',
     f"DETAIL:  Key (client_id, patient_id)={W} already exists."),
    ('Key (client_id, patient_id)=(acme, P1) is not present in table "patients".',
     f'Key (client_id, patient_id)={W} is not present in table "patients".'),
    ('CONTEXT:  JSON data, line 1: {"note": "Mary', f"CONTEXT:  JSON data, line 1: {W}"),
    ('invalid byte sequence for encoding "UTF8": 0xe9 0x20', f'invalid byte sequence for encoding "UTF8": {W}'),
])
def test_values_are_withheld(line: str, expected: str) -> None:
    assert scrub(line) == expected


@pytest.mark.parametrize("line", [
    'new row for relation "patients" violates check constraint "patients_date_of_birth_check"',
    'null value in column "last_name" of relation "patients" violates not-null constraint',
    "16:39:35  Database Error in model patients (models/practice/patients.sql)",
    "16:39:35  1 of 6 START sql incremental model practice.providers ............ [RUN]",
    "Completed with 1 error, 0 partial successes, and 0 warnings:",
])
def test_dbt_lines_and_object_names_are_kept(line: str) -> None:
    assert scrub(line) == line


def test_runs_the_real_dbt_and_passes_its_exit_code(tmp_path: Path) -> None:
    fake = tmp_path / "dbt"
    fake.write_text('#!/bin/sh\necho "args: $*"\necho \'invalid input syntax for type date: "Mary"\' >&2\nexit 3\n')
    fake.chmod(0o755)
    script = Path(__file__).resolve().parents[2] / "clientflow" / "transform" / "dbt_scrubbed.py"
    done = subprocess.run([sys.executable, str(script), "build", "--select", "x"], capture_output=True,
                          text=True, env={**os.environ, "CLIENTFLOW_DBT_EXECUTABLE": str(fake)}, timeout=60)
    assert done.returncode == 3
    assert done.stdout == f"args: build --select x\ninvalid input syntax for type date: {W}\n"


SCRIPT = Path(__file__).resolve().parents[2] / "clientflow" / "transform" / "dbt_scrubbed.py"


def _fake_dbt(tmp_path: Path, line: str, code: int) -> int:
    fake = tmp_path / "dbt"
    fake.write_text(f"#!/bin/sh\necho '{line}'\nexit {code}\n")
    fake.chmod(0o755)
    return subprocess.run([sys.executable, str(SCRIPT), "build"], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "CLIENTFLOW_DBT_EXECUTABLE": str(fake)}).returncode


@pytest.mark.parametrize("line", [
    "FATAL:  terminating connection due to administrator command",
    "server closed the connection unexpectedly",
    "SSL SYSCALL error: EOF detected",
    "FATAL:  the database system is shutting down",
    "ERROR:  deadlock detected",
])
def test_a_build_that_lost_its_database_exits_for_a_retry(tmp_path: Path, line: str) -> None:
    assert _fake_dbt(tmp_path, line, 1) == TRANSIENT_EXIT


@pytest.mark.parametrize("line", [
    'new row for relation "patients" violates check constraint "patients_date_of_birth_check"',
    "Failure in test unique_stg_patients_patient_id (models/staging/_staging.yml)",
    "Completed with 1 error, 0 partial successes, and 0 warnings:",
])
def test_a_build_that_failed_on_the_data_keeps_dbt_s_exit_code(tmp_path: Path, line: str) -> None:
    assert _fake_dbt(tmp_path, line, 1) == 1


def test_the_real_dbt_refused_by_the_database_exits_for_a_retry() -> None:
    """dbt's own words for a database that refuses the connection (nothing listens on port 1)."""
    project = SCRIPT.parents[2] / "dbt"
    done = subprocess.run([sys.executable, str(SCRIPT), "debug", "--profiles-dir", str(project), "--project-dir",
                           str(project)], capture_output=True, text=True, timeout=300, cwd=project,
                          env={**os.environ, "CLIENTFLOW_STAGING_PORT": "1"})
    assert done.returncode == TRANSIENT_EXIT, done.stdout[-2000:]
    assert "Connection refused" in done.stdout


def test_the_dbt_task_retries_only_a_transient_failure() -> None:
    from airflow.sdk.exceptions import AirflowException, AirflowFailException
    from cosmos.hooks.subprocess import FullOutputSubprocessResult

    from clientflow.transform.dbt_group import BatchDbtBuild

    build = BatchDbtBuild(task_id="dbt_build", project_dir=str(SCRIPT.parents[2] / "dbt"), profile_config=None)
    with pytest.raises(AirflowException) as lost:
        build.handle_exception_subprocess(FullOutputSubprocessResult(TRANSIENT_EXIT, "", []))
    assert not isinstance(lost.value, AirflowFailException)  # Airflow retries it
    with pytest.raises(AirflowFailException, match="a model or test refused the batch"):
        build.handle_exception_subprocess(FullOutputSubprocessResult(1, "", ["Failure in test x"]))
    build.handle_exception_subprocess(FullOutputSubprocessResult(0, "", []))
