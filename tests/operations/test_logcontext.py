"""Every line of a client task's log names client, job and stage (clientflow.operations.logcontext).

Run in a child process configured as Airflow's task runner configures a task's logging (JSON
lines through structlog, sent to the supervisor): the lines of the standard library's loggers
(ours, boto's, psycopg's) and of Airflow's structlog loggers carry the fields alike. The wiring
on a real task (the client DAG's ``on_execute_callback``) is checked in a real task log file by
tests/stack/test_operations.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

CHILD = textwrap.dedent(r"""
    import io, logging, sys
    from datetime import date

    import structlog
    from airflow.sdk.log import configure_logging

    out = io.BytesIO()
    configure_logging(json_output=True, output=out, sending_to_supervisor=True)

    from clientflow.batch import Batch
    from clientflow.operations import logcontext

    logcontext.bind("ehrlogic", "ingest", Batch(client="ehrlogic", day=date(2026, 12, 1), run_id="r20261201"))
    logging.getLogger("clientflow.pipeline").info("reading the manifests")
    logcontext.bind_job(Batch(client="ehrlogic", day=date(2026, 12, 1), run_id="r20261201",
                              ingestion_id="ehrlogic-20261201-0123abcd"))
    logging.getLogger("botocore.credentials").warning("a library's line")
    structlog.get_logger("airflow.task").info("an Airflow line")
    logcontext.bind("ehrlogic", "transform.stg_patients_run", None)
    logging.getLogger("cosmos").info("a line before any batch is known")
    sys.stdout.write("--- task log ---\n" + out.getvalue().decode())
""")


def _lines() -> list[dict[str, str]]:
    done = subprocess.run([sys.executable, "-c", CHILD], check=True, capture_output=True, text=True, timeout=120)
    task_log = done.stdout.split("--- task log ---\n", 1)[1]
    return [json.loads(line) for line in task_log.splitlines() if line.strip()]


def test_every_line_names_client_job_and_stage() -> None:
    lines = _lines()
    assert [line["event"] for line in lines] == [
        "reading the manifests", "a library's line", "an Airflow line", "a line before any batch is known"]
    assert all(line["client"] == "ehrlogic" for line in lines)
    assert [line["stage"] for line in lines] == ["ingest", "ingest", "ingest", "transform.stg_patients_run"]
    assert [line["job_id"] for line in lines] == [
        "pending", "ehrlogic-20261201-0123abcd", "ehrlogic-20261201-0123abcd", "pending"]
    assert [line["batch_date"] for line in lines[:3]] == ["2026-12-01"] * 3
    assert lines[0]["extract_run"] == "r20261201"
