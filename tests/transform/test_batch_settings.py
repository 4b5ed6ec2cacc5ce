"""The batch reaches dbt as session settings (dbt/macros/batch.sql), not as dbt vars: a client's
vars are the same from one batch to the next, so dbt parses the project partially; a build without
the batch's settings stops before its first model, naming what is missing."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from clientflow.db import pg_options
from clientflow.mapping import load_mapping
from clientflow.transform.dbt_group import batch_settings
from tests.support.transform import DBT, DBT_DIR, ROOT, dbt_env

MAPPING = load_mapping(ROOT / "include" / "mappings" / "ehrlogic.yaml")


def _dbt(settings: Any, tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(DBT), *args, "--vars", json.dumps(MAPPING.dbt_vars()), "--project-dir", str(DBT_DIR),
         "--profiles-dir", str(DBT_DIR), "--target-path", str(tmp / "target"), "--log-path", str(tmp / "logs")],
        cwd=DBT_DIR, env=dbt_env(settings, None), capture_output=True, text=True, timeout=300)


def test_the_batch_s_settings_travel_as_libpq_options() -> None:
    batch = {"ingestion_id": "5f0c", "date": "2026-12-01", "lock": {"token": 42}}
    assert pg_options(batch_settings(batch)) == (
        "-c jit=off -c random_page_cost=1.1 -c clientflow.ingestion_id=5f0c -c clientflow.batch_date=2026-12-01 "
        "-c clientflow.fence_token=42")
    # libpq splits options at spaces: a space or backslash in a value is escaped
    assert pg_options({"clientflow.x": "a b\\c"}).endswith(r"-c clientflow.x=a\ b\\c")


def test_a_client_s_second_build_parses_the_project_partially(settings: Any, tmp_path: Path) -> None:
    first = _dbt(settings, tmp_path, "parse")
    second = _dbt(settings, tmp_path, "parse")
    assert first.returncode == 0 and second.returncode == 0, first.stdout[-2000:] + second.stdout[-2000:]
    assert "Starting full parse" in first.stdout
    assert "partial pars" not in second.stdout.lower()  # dbt says why it could not parse partially


def test_a_build_without_the_batch_s_settings_stops_before_its_first_model(settings: Any, tmp_path: Path) -> None:
    done = _dbt(settings, tmp_path, "build", "--select", "path:models")
    assert done.returncode != 0
    assert ("the batch's session settings clientflow.ingestion_id, clientflow.batch_date, clientflow.fence_token "
            "are missing") in done.stdout
    assert "START sql" not in done.stdout  # no model ran
