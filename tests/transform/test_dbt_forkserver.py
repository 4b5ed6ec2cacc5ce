"""The dbt fork server (clientflow/transform/dbt_forkserver.py) behind dbt_scrubbed: a run through
it is dbt's run (its exit code, its output, the caller's environment and directory); the caller's
end stops the run; a server that is not there, or serves another dbt, leaves dbt to start on its
own."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.procs import children
from tests.support.transform import DBT, DBT_DIR, FORKSERVER, ROOT, dbt_env, socket_path

DBT_PYTHON = ROOT / ".venv-dbt" / "bin" / "python"
NOT_USED = "dbt fork server at"


def _answers(path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(path)
        except OSError:
            return False
    return True


@pytest.fixture
def server() -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    path = socket_path("dbt.sock")
    proc = subprocess.Popen([str(DBT_PYTHON), str(FORKSERVER), path], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while not _answers(path):
        assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
        assert time.monotonic() < deadline, "the fork server did not answer within 60 s"
        time.sleep(0.1)
    yield path, proc
    proc.terminate()
    try:
        assert proc.wait(10) == 0
    finally:
        proc.kill()
    assert not os.path.exists(path)  # a server that stops removes its socket


def _env(server: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "CLIENTFLOW_DBT_FORKSERVER"}
    return {**env, "CLIENTFLOW_DBT_FORKSERVER": server, **extra}


def _wrapper(args: list[str], env: dict[str, str], cwd: Path = DBT_DIR) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(DBT), *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=300)


def test_a_run_through_the_server_is_dbt_s_run_in_the_caller_s_directory_and_environment(
        server: tuple[str, Any], tmp_path: Path) -> None:
    path, _ = server
    target = tmp_path / "target-from-env"
    # No --project-dir: dbt finds the project in the caller's directory. DBT_TARGET_PATH: the caller's environment.
    done = _wrapper(["ls", "--resource-type", "model", "--output", "name", "--vars", json.dumps({"client": "ehrlogic"})],
                    _env(path, DBT_TARGET_PATH=str(target), DBT_PROFILES_DIR=str(DBT_DIR)))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr
    assert NOT_USED not in done.stderr  # the server ran it
    assert {"stg_patients", "changes_appointments", "appointments"} <= set(done.stdout.split())
    assert (target / "manifest.json").exists()

    # dbt's exit code and its own words, as dbt on its own gives them
    alone = subprocess.run([str(ROOT / ".venv-dbt" / "bin" / "dbt"), "ls", "--no-such-option"], cwd=DBT_DIR,
                           capture_output=True, text=True, timeout=120)
    forked = _wrapper(["ls", "--no-such-option"], _env(path))
    assert NOT_USED not in forked.stderr
    assert forked.returncode == alone.returncode == 2
    assert "No such option '--no-such-option'" in forked.stdout and "No such option '--no-such-option'" in alone.stderr


def test_a_failed_model_through_the_server_fails_with_its_error_scrubbed(server: tuple[str, Any], settings: Any,
                                                                          tmp_path: Path) -> None:
    path, _ = server
    env = _env(path, **{k: v for k, v in dbt_env(settings, None).items() if k.startswith(("CLIENTFLOW_STAGING", "PG"))})
    # the value is made by the query, so that it is in PostgreSQL's message and not in the query's text
    done = _wrapper(["show", "--inline", "select (chr(65) || 'da' || chr(76) || 'ovelace')::date as born",
                     "--profiles-dir", str(DBT_DIR),
                     "--target-path", str(tmp_path / "target"), "--log-path", str(tmp_path / "logs")], env)
    assert NOT_USED not in done.stderr
    assert done.returncode == 2, done.stdout[-3000:]  # dbt's code for a query that failed
    assert "invalid input syntax for type date" in done.stdout
    assert "Ada Lovelace" not in done.stdout + done.stderr  # the value PostgreSQL quoted is withheld


def _slow(path: str, settings: Any, tmp_path: Path) -> subprocess.Popen[str]:
    env = _env(path, **{k: v for k, v in dbt_env(settings, None).items() if k.startswith(("CLIENTFLOW_STAGING", "PG"))})
    return subprocess.Popen(
        [str(DBT), "show", "--inline", "select pg_sleep(60) as waited", "--profiles-dir", str(DBT_DIR),
         "--target-path", str(tmp_path / "target"), "--log-path", str(tmp_path / "logs")],
        env=env, cwd=DBT_DIR, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _run_of(server_pid: int) -> int:
    """The pid of the server's one run: the child of the connection's handler, a child of the server."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for handler in children(server_pid):
            if runs := children(handler):
                return runs[0]
        time.sleep(0.1)
    raise AssertionError("the server started no run within 60 s")


def _gone(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return True
        if state == "Z":
            return True
        time.sleep(0.1)
    return False


def test_a_task_stopped_stops_its_run(server: tuple[str, Any], settings: Any, tmp_path: Path) -> None:
    path, proc = server
    wrapper = _slow(path, settings, tmp_path)
    run = _run_of(proc.pid)
    time.sleep(1)  # dbt is in its query
    wrapper.send_signal(signal.SIGTERM)  # what Airflow does to a task it stops
    _, err = wrapper.communicate(timeout=30)
    assert wrapper.returncode != 0
    assert NOT_USED not in err
    assert _gone(run, 10), "the run outlived its task"


def test_a_task_killed_outright_has_its_run_stopped_by_the_server(server: tuple[str, Any], settings: Any,
                                                                  tmp_path: Path) -> None:
    path, proc = server
    wrapper = _slow(path, settings, tmp_path)
    run = _run_of(proc.pid)
    time.sleep(1)
    wrapper.kill()  # no handler runs: the server sees its connection close
    wrapper.communicate(timeout=30)
    assert _gone(run, 20), "the run outlived its killed task"
    assert proc.poll() is None  # the server goes on serving
    assert _answers(path)


def test_without_a_server_dbt_starts_on_its_own(tmp_path: Path) -> None:
    done = _wrapper(["ls", "--no-such-option"], _env(str(tmp_path / "absent.sock")))
    assert done.returncode == 2
    assert "No such option '--no-such-option'" in done.stdout
    assert f"{NOT_USED} {tmp_path / 'absent.sock'} not used (FileNotFoundError" in done.stderr


def test_a_server_refuses_a_dbt_of_another_virtualenv(server: tuple[str, Any], tmp_path: Path) -> None:
    path, _ = server
    elsewhere = tmp_path / "bin"
    elsewhere.mkdir()
    (elsewhere / "dbt").symlink_to(ROOT / ".venv-dbt" / "bin" / "dbt")
    done = _wrapper(["ls", "--no-such-option"], _env(path, CLIENTFLOW_DBT_EXECUTABLE=str(elsewhere / "dbt")))
    assert done.returncode == 2  # the configured dbt ran, on its own
    assert "is not the dbt of this server" in done.stderr


def test_a_run_whose_handler_died_ends_as_a_transient_failure(server: tuple[str, Any], settings: Any,
                                                              tmp_path: Path) -> None:
    """The server's handler of the connection reports the run's exit code; killed (the server
    restarted, the machine short of memory), the code is unknown, and the task may be retried."""
    path, proc = server
    wrapper = _slow(path, settings, tmp_path)
    run = _run_of(proc.pid)
    handler = next(h for h in children(proc.pid) if run in children(h))
    os.kill(handler, signal.SIGKILL)
    os.kill(run, signal.SIGKILL)
    _, err = wrapper.communicate(timeout=30)
    assert wrapper.returncode == 75, err  # dbt_scrubbed.TRANSIENT_EXIT
    assert "exit code unknown" in err
