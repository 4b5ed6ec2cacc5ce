"""Run the dbt transform of one batch the way the DAG's Cosmos task group does, without Airflow.

For tests that call the pipeline stages directly (clientflow.pipeline.*): the same dbt project,
the same vars (the mapping's), the same session settings (the pipeline's planner settings and the batch's
ingestion id, date and fencing token, as PGOPTIONS), the same staging database
and the same role (the transformer).
Each call uses its own target and log directories, so calls never touch dbt/target. dbt parses
partially, as Cosmos' runs do: each call starts from the parse the last call with the same vars
left (a copy of its ``partial_parse.msgpack``; the vars differ by client), about 1.2 s less per
build than a full parse.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from clientflow.db import pg_options
from clientflow.transform.dbt_group import DBT_EXECUTABLE, batch_settings

ROOT = Path(__file__).resolve().parent.parent.parent
DBT_DIR = ROOT / "dbt"
DBT = DBT_EXECUTABLE
"""dbt as the DAGs run it: CLIENTFLOW_DBT_EXECUTABLE (default .venv-dbt/bin/dbt), its output scrubbed,
through the session's fork server (tests/conftest.py)."""
PARSED = "partial_parse.msgpack"
FORKSERVER = ROOT / "clientflow" / "transform" / "dbt_forkserver.py"
"""dbt's fork server, run with the dbt virtualenv's Python (scripts/stack.sh, deploy/entrypoint.sh)."""


def socket_path(*parts: str) -> str:
    """A path for a Unix socket in a new folder of the session's temporary directory: short, as a
    socket's name holds at most 107 bytes."""
    return str(Path(tempfile.mkdtemp(dir=os.environ["CLIENTFLOW_TEST_TMP"])).joinpath(*parts))


class TransformFailed(Exception):
    """dbt returned non-zero; ``output`` holds its log (test data only)."""

    def __init__(self, output: str) -> None:
        super().__init__("dbt build failed")
        self.output = output


def as_transformer(settings: Any) -> Any:
    """The staging database as dbt's role (the connection clientflow_transformer of the DAGs)."""
    from pydantic import SecretStr

    from clientflow.bootstrap import LOGIN_ROLES, TRANSFORMER_ROLE

    password = SecretStr(LOGIN_ROLES[TRANSFORMER_ROLE][1])
    return settings.staging.model_copy(update={"user": TRANSFORMER_ROLE, "password": password})


def dbt_env(settings: Any, batch: Any | None) -> dict[str, str]:
    """dbt's environment: the staging database as the transformer, and PGOPTIONS with the
    pipeline's planner settings and, unless ``batch`` is None, the batch's settings."""
    staging = as_transformer(settings)
    extra = None if batch is None else batch_settings(batch.to_xcom())  # as the DAG's task reads ingest's XCom
    return {
        **os.environ,
        "PGOPTIONS": pg_options(extra),
        "CLIENTFLOW_STAGING_HOST": staging.host,
        "CLIENTFLOW_STAGING_PORT": str(staging.port),
        "CLIENTFLOW_STAGING_USER": staging.user,
        "CLIENTFLOW_STAGING_PASSWORD": staging.password.get_secret_value() if staging.password else "",
        "CLIENTFLOW_STAGING_DB": staging.dbname,
        "DO_NOT_TRACK": "1",
    }


def transform(settings: Any, mapping: Any, batch: Any, extra_vars: dict[str, Any] | None = None,
              command: str = "build", select: str = "path:models") -> None:
    """``extra_vars``: dbt vars of the project's own (dbt_project.yml) to set for this build;
    ``command`` and ``select``: another dbt command or selection (a test that runs one model)."""
    dbt_vars = {**mapping.dbt_vars(), **(extra_vars or {})}
    # in the test session's own temporary directory (tests/conftest.py), one per set of vars
    vars_hash = hashlib.sha256(json.dumps(dbt_vars, sort_keys=True).encode()).hexdigest()[:16]
    parsed = Path(os.environ["CLIENTFLOW_TEST_TMP"]) / "dbt-parses" / vars_hash
    with tempfile.TemporaryDirectory(prefix="clientflow-dbt-") as tmp:
        target = Path(tmp) / "target"
        target.mkdir()
        if (parsed / PARSED).exists():
            shutil.copyfile(parsed / PARSED, target / PARSED)
        done = subprocess.run(
            [str(DBT), command, "--select", select, "--vars", json.dumps(dbt_vars),
             "--project-dir", str(DBT_DIR), "--profiles-dir", str(DBT_DIR),
             "--target-path", str(target), "--log-path", f"{tmp}/logs"],
            cwd=DBT_DIR, env=dbt_env(settings, batch), capture_output=True, text=True, timeout=300,
        )
        if (target / PARSED).exists():  # moved (a rename: whole or not at all) for the next call with these vars
            parsed.mkdir(parents=True, exist_ok=True)
            os.replace(target / PARSED, parsed / PARSED)
    if done.returncode != 0:
        raise TransformFailed(done.stdout[-4000:] + done.stderr[-2000:])
