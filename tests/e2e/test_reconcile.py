"""``clientflow reconcile``: every batch in the bucket accounted for, from the manifest to production.

A client of its own (``reconcileco``: EHR Logic's practice system under another name) goes through
what the failure suite's scenarios leave behind: a promoted batch, the same extraction uploaded
again, a batch refused for an altered file, a complete batch nobody processed. Each of these ends
clean, but the unprocessed one; then production is tampered with behind the pipeline's back, and
the reconciliation names the batch, the entity and the stage.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any

import psycopg
import pytest

from clientflow import cli
from clientflow.mapping import load_mapping
from clientflow.operations import reconciliation
from tests.support import e2e
from tests.support.dags import test_client_dag

pytestmark = pytest.mark.e2e
CLIENT = "reconcileco"
FIRST, REFUSED, WAITING = date(2026, 11, 10), date(2026, 11, 11), date(2026, 11, 12)
PATIENTS = 120


@pytest.fixture(scope="module")
def mappings_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("mappings")
    e2e.sample_mapping_as(directory, CLIENT)
    return directory


@pytest.fixture(scope="module")
def mapping(mappings_dir: Path) -> Any:
    return load_mapping(mappings_dir / f"{CLIENT}.yaml")


@pytest.fixture(scope="module")
def source_url(admin_dsn: str) -> Any:
    with e2e.sample_source(admin_dsn, "reconcile", PATIENTS) as (_name, url):
        yield url


def _extract(settings: Any, source_url: str, day: date, run_id: str) -> str:
    return e2e.extract(settings, CLIENT, source_url, day, password="unused-with-trust-auth", run_id=run_id)


def _run(mapping: Any, day: date, run_id: str) -> str:
    return str(test_client_dag(mapping, conf={"batch_date": day.isoformat(), "run_id": run_id}).state)


def _cli(mappings_dir: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = cli.main(["reconcile", CLIENT, "--mappings-dir", str(mappings_dir), *args])
    return code, capsys.readouterr().out


def _batches(settings: Any) -> list[list[Any]]:
    with psycopg.connect(settings.staging.conninfo()) as conn:
        return [list(r) for r in conn.execute("select ingestion_id, batch_date, run_id from pipeline.batches "
                                              "where client_name = %s", (CLIENT,))]


def _problems(report: reconciliation.Report) -> list[str]:
    return [f"{line.day} {line.what}: {problem}" for line, problem in report.differences]


@pytest.fixture(scope="module")
def history(mapping: Any, source_url: str, settings: Any, airflow_db: Path) -> None:
    """A promoted batch, the same extraction uploaded again, a refused (altered) batch."""
    _extract(settings, source_url, FIRST, "r1")
    assert _run(mapping, FIRST, "r1") == "success"
    _extract(settings, source_url, FIRST, "r1-again")  # unchanged data, run again: the same job ids
    assert _run(mapping, FIRST, "r1-again") == "success"  # skipped as a duplicate
    _extract(settings, source_url, REFUSED, "r2")
    s3, key = settings.s3.client(), f"client={CLIENT}/table=dim_patient/date={REFUSED:%Y%m%d}/run_id=r2/data.json"
    body = s3.get_object(Bucket=settings.s3.bucket, Key=key)["Body"].read()
    s3.put_object(Bucket=settings.s3.bucket, Key=key, Body=body + b" ")  # valid JSON, another checksum
    assert _run(mapping, REFUSED, "r2") == "failed"


def test_a_clean_history_reconciles(history: None, mapping: Any, settings: Any, mappings_dir: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    report = reconciliation.reconcile(settings, mapping)
    assert _problems(report) == []
    by = {(line.day, line.run_id, line.what): line for line in report.lines}
    patients = by[(FIRST, "r1", "patients")]
    assert patients.figures["manifest"] == patients.figures["raw"] == patients.figures["received"] == PATIENTS
    assert patients.figures["kept"] == patients.figures["production"] == patients.figures["dummy"] == PATIENTS
    assert "same extraction" in by[(FIRST, "r1-again", "bucket")].note
    assert by[(REFUSED, "r2", "files")].state == "FAILED"
    assert by[(REFUSED, "r2", "patients")].figures["production"] == 0
    assert by[(None, "-", "patients (all)")].figures["production"] == PATIENTS

    code, out = _cli(mappings_dir, capsys)
    assert code == 0, out
    assert out.rstrip().endswith("3 batch(es) reconciled, 0 difference(s): nothing lost, nothing duplicated"), out
    assert "DIFFERENCE" not in out


def test_a_complete_batch_nobody_processed_is_a_difference(
        history: None, mapping: Any, source_url: str, settings: Any, mappings_dir: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    _extract(settings, source_url, WAITING, "r3")
    code, out = _cli(mappings_dir, capsys)
    assert code == 1
    assert f"DIFFERENCE client={CLIENT} date={WAITING} run=r3 bucket: complete in the bucket but never processed" in out
    code, out = _cli(mappings_dir, capsys, "--date", FIRST.isoformat())  # one date: that one is clean
    assert code == 0, out

    assert _run(mapping, WAITING, "r3") == "success"
    assert _problems(reconciliation.reconcile(settings, mapping)) == []


def test_production_changed_behind_the_pipeline_is_named(
        history: None, mapping: Any, settings: Any, admin_dsn: str, mappings_dir: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    with psycopg.connect(psycopg.conninfo.make_conninfo(admin_dsn, dbname=settings.production.dbname)) as conn:
        conn.execute("set session_replication_role = replica")  # as a hand-made fix would, past the keys
        victim = conn.execute("select patient_id, ingestion_id from practice.patients where client_id = %s "
                              "order by patient_id limit 1", (CLIENT,)).fetchone()
        conn.execute("delete from practice.patients where client_id = %s and patient_id = %s", (CLIENT, victim[0]))

    report = reconciliation.reconcile(settings, mapping)
    problems = _problems(report)
    assert any(p.startswith("None patients (all): production (") and "differ" in p for p in problems), problems
    batch_line = next(line for line in report.lines if line.what == "patients" and line.figures.get("production")
                      == PATIENTS - 1)
    assert f"dummy production holds {PATIENTS} live rows of it, production {PATIENTS - 1}" in batch_line.problems
    assert not any("appointments" in p or "providers" in p for p in problems), problems

    code, out = _cli(mappings_dir, capsys, "--skip-data")
    assert code == 1
    assert f"DIFFERENCE client={CLIENT} date={batch_line.day} run={batch_line.run_id} patients: " in out
    assert victim[1] == next(iid for iid, *_ in _batches(settings) if _ == [batch_line.day, batch_line.run_id])


# The on-call commands read the same history through the status page's read-only role.


def _run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = cli.main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_status_and_batches_show_the_history(history: None, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run_cli(capsys, "status", CLIENT)
    assert code == 0
    line = next(row for row in out.splitlines() if row.startswith(CLIENT))
    assert "failed" in out.splitlines()[0] and "ago" in line
    code, out, _ = _run_cli(capsys, "batches", CLIENT)
    assert code == 0
    rows = [row for row in out.splitlines() if row.startswith("2026-")]
    assert {(r.split()[0], r.split()[1], r.split()[3]) for r in rows} >= {
        (FIRST.isoformat(), "r1", "SUCCESS"), (REFUSED.isoformat(), "r2", "FAILED")}
    failed = next(r for r in rows if r.split()[1] == "r2")
    assert "checksum mismatch" in failed


def test_trace_follows_a_job_id_to_files_events_and_rows(history: None, settings: Any,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    ingestion_id = next(iid for iid, day, run in _batches(settings) if (day, run) == (FIRST, "r1"))
    with psycopg.connect(settings.staging.conninfo()) as conn:
        job_id = conn.execute("select job_id from pipeline.jobs where ingestion_id = %s and table_name = 'dim_patient'",
                              (ingestion_id,)).fetchone()[0]
    for given in (ingestion_id, job_id):
        code, out, _ = _run_cli(capsys, "trace", given)
        assert code == 0, out
        assert out.startswith(f"batch {ingestion_id} of client {CLIENT}: date {FIRST}, extractor run r1, SUCCESS")
        assert f"job {job_id}  {PATIENTS} rows (full)" in out
        assert "run_id=r1/data.json" in out
        assert [e.split()[2] for e in out.split("events:\n", 1)[1].split("stages:")[0].splitlines()] == [
            "PENDING", "PROCESSING", "SUCCESS", "DUPLICATE"]
        assert f"rows: manifest {2 * PATIENTS + 5 + PATIENTS + PATIENTS}" in out
        assert "production patients" in out
    code, _, err = _run_cli(capsys, "trace", "no-such-job")
    assert code == 1 and "no batch or file with job id no-such-job" in err


def test_reprocess_takes_only_a_failed_batch(history: None, capsys: pytest.CaptureFixture[str],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    code, out, _ = _run_cli(capsys, "reprocess", CLIENT, REFUSED.isoformat(), "--dry-run")
    assert code == 0
    assert f"would trigger client_{CLIENT} with " + '{"batch_date": "' + REFUSED.isoformat() + '", "run_id": "r2"}' in out
    code, _, err = _run_cli(capsys, "reprocess", CLIENT, FIRST.isoformat(), "--dry-run")
    assert code == 1 and "is SUCCESS; only a FAILED" in err
    code, _, err = _run_cli(capsys, "reprocess", CLIENT, "2026-01-01", "--dry-run")
    assert code == 1 and "has no batch" in err
    monkeypatch.delenv("CLIENTFLOW_AIRFLOW_PASSWORD", raising=False)
    code, _, err = _run_cli(capsys, "reprocess", CLIENT, REFUSED.isoformat())
    assert code == 2 and "CLIENTFLOW_AIRFLOW_PASSWORD" in err
    monkeypatch.setenv("CLIENTFLOW_AIRFLOW_PASSWORD", "x")
    code, _, err = _run_cli(capsys, "reprocess", CLIENT, REFUSED.isoformat(), "--airflow-url", "http://127.0.0.1:9")
    assert code == 1 and "could not be reached" in err
