"""The image's entrypoint (deploy/entrypoint.sh): beside the Airflow commands that run tasks it
starts dbt's fork server, whose socket the tasks' dbt runs then use; every command reaches the
official image's entrypoint unchanged. Run here for real, with the clone's dbt virtualenv and fork
server in place of /opt/clientflow's, and a stand-in for the official /entrypoint that reports what
it was handed. The Dockerfile check is in test_dockerfile.py's fashion (no Docker engine here)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.deploy import ROOT, dockerfile, dockerignore_patterns, dockerignored
from tests.support.procs import with_args
from tests.support.transform import DBT, DBT_DIR, FORKSERVER, socket_path

ENTRYPOINT = ROOT / "deploy" / "entrypoint.sh"
NOT_USED = "dbt fork server at"
"""dbt_scrubbed's line when a run starts dbt on its own instead of through the server."""


def _official(tmp_path: Path) -> Path:
    """A stand-in for the official image's /entrypoint (exec'd by the script, so the process the
    script was): what it was handed, and its children, as JSON."""
    script = tmp_path / "official-entrypoint"
    script.write_text(
        f"#!{sys.executable}\n"
        "import json, os, sys\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "from tests.support.procs import children\n"
        "print(json.dumps({'argv': sys.argv[1:], 'socket': os.environ.get('CLIENTFLOW_DBT_FORKSERVER'),\n"
        "                  'children': children(os.getpid())}))\n",
        encoding="utf-8",
    )
    script.chmod(0o755)
    return script


@pytest.fixture
def server_socket() -> Iterator[str]:
    path = socket_path("sub", "dbt.sock")
    yield path
    _stop_server(path)


def _server_pids(path: str) -> list[int]:
    return with_args(str(FORKSERVER), path)


def _stop_server(path: str) -> None:
    for pid in _server_pids(path):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 15
    while _server_pids(path) and time.monotonic() < deadline:
        time.sleep(0.1)


def _run(tmp_path: Path, args: list[str], **env: str) -> tuple[dict[str, object], str]:
    environ = {k: v for k, v in os.environ.items()
               if k not in ("CLIENTFLOW_DBT_FORKSERVER", "AIRFLOW__CORE__EXECUTOR")}
    environ.update({"CLIENTFLOW_HOME": str(ROOT), "CLIENTFLOW_NEXT_ENTRYPOINT": str(_official(tmp_path)), **env})
    # stderr to a file, not a pipe: the server writes its lines there too, for as long as it runs
    log = tmp_path / "entrypoint.log"
    with log.open("w", encoding="utf-8") as err:
        done = subprocess.run([str(ENTRYPOINT), *args], env=environ, stdout=subprocess.PIPE, stderr=err, text=True,
                              timeout=120)
    assert done.returncode == 0, log.read_text(encoding="utf-8")
    return json.loads(done.stdout), log.read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("args", "executor"),
    [
        (["celery", "worker"], "CeleryExecutor"),  # Compose's workers
        (["bash", "-c", "exec \nairflow celery worker"], "CeleryExecutor"),  # the Helm chart's
        (["scheduler"], "LocalExecutor"),
        (["airflow", "standalone"], None),
    ],
)
def test_a_command_that_runs_tasks_gets_a_serving_fork_server(
        tmp_path: Path, server_socket: str, args: list[str], executor: str | None) -> None:
    env = {"CLIENTFLOW_DBT_FORKSERVER": server_socket}
    if executor:
        env["AIRFLOW__CORE__EXECUTOR"] = executor
    handed, log = _run(tmp_path, args, **env)
    assert (handed["argv"], handed["socket"]) == (args, server_socket)
    assert re.search(rf"serving {re.escape(server_socket)} \(pid \d+\)", log), log
    (pid,) = _server_pids(server_socket)
    # Not a child of the Airflow command the script becomes (which may wait for children of its own).
    assert pid not in handed["children"]  # type: ignore[operator]
    assert os.stat(Path(server_socket).parent).st_mode & 0o077 == 0

    # A task's dbt run with the environment the command was handed goes through it.
    task_env = {**os.environ, "CLIENTFLOW_DBT_FORKSERVER": str(handed["socket"])}
    run = subprocess.run([str(DBT), "--version"], env=task_env, cwd=DBT_DIR, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert NOT_USED not in run.stderr
    assert "1.11." in run.stdout

    # docker stop / a pod's deletion: SIGTERM, forwarded by dumb-init to the process group.
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 15
    while os.path.exists(server_socket):
        assert time.monotonic() < deadline, "the server did not stop on SIGTERM"
        time.sleep(0.1)


@pytest.mark.parametrize(
    ("args", "executor"),
    [
        (["api-server"], "CeleryExecutor"),
        (["triggerer"], "CeleryExecutor"),
        (["dag-processor"], "CeleryExecutor"),
        (["scheduler"], "CeleryExecutor"),  # the Celery workers run the tasks
        (["bash", "-c", "exec airflow db migrate"], "CeleryExecutor"),
    ],
)
def test_any_other_command_goes_straight_to_the_official_entrypoint(
        tmp_path: Path, server_socket: str, args: list[str], executor: str) -> None:
    handed, log = _run(tmp_path, args, CLIENTFLOW_DBT_FORKSERVER=server_socket, AIRFLOW__CORE__EXECUTOR=executor)
    assert handed["argv"] == args
    assert log == ""
    assert not _server_pids(server_socket)


def test_off_starts_no_server_and_tasks_start_dbt_on_their_own(tmp_path: Path) -> None:
    handed, log = _run(tmp_path, ["celery", "worker"], CLIENTFLOW_DBT_FORKSERVER="off")
    assert (handed["argv"], handed["socket"]) == (["celery", "worker"], None)
    assert log == ""


def test_a_server_that_cannot_start_leaves_the_command_to_start_without_it(tmp_path: Path, server_socket: str) -> None:
    # an installation without the dbt virtualenv: the command still starts, and its tasks are not
    # sent to a socket nobody serves
    home = tmp_path / "home"
    (home / "clientflow" / "transform").mkdir(parents=True)
    started = time.monotonic()
    handed, log = _run(tmp_path, ["celery", "worker"], CLIENTFLOW_DBT_FORKSERVER=server_socket, CLIENTFLOW_HOME=str(home))
    assert (handed["argv"], handed["socket"]) == (["celery", "worker"], None)
    assert "exited before serving" in log
    assert time.monotonic() - started < 20

    too_long = "/tmp/" + "x" * 110 + "/dbt.sock"
    handed, log = _run(tmp_path, ["celery", "worker"], CLIENTFLOW_DBT_FORKSERVER=too_long)
    assert handed["socket"] is None and "over 107 bytes" in log


def test_the_image_runs_it_under_dumb_init_before_the_official_entrypoint() -> None:
    instructions = dockerfile()
    (entry,) = [i for i in instructions if i.keyword == "ENTRYPOINT"]
    assert json.loads(entry.args) == ["/usr/bin/dumb-init", "--", "/opt/clientflow/deploy/entrypoint.sh"]
    copies = [i.args.split() for i in instructions if i.keyword == "COPY"]
    assert any(words[-2:] == ["deploy/entrypoint.sh", "/opt/clientflow/deploy/entrypoint.sh"] for words in copies)
    assert not dockerignored("deploy/entrypoint.sh", dockerignore_patterns())
    # COPY keeps the file's mode: executable in git, as checked out
    assert subprocess.run(["git", "ls-files", "-s", "deploy/entrypoint.sh"], cwd=ROOT, capture_output=True,
                          text=True, check=True).stdout.startswith("100755")
    # the official entrypoint's path, which the script hands every command to by default
    assert 'next="${CLIENTFLOW_NEXT_ENTRYPOINT:-/entrypoint}"' in ENTRYPOINT.read_text(encoding="utf-8")
