"""scripts/stack.sh and a port another checkout's stack holds.

Two checkouts on one machine use the same default ports. `up` in the second used to take the first
one's moto, SMTP sink, metrics server and Airflow as its own ("already listening"), so its
benchmarks and stack tests ran the other checkout's code. It now refuses, naming that checkout;
`status` says whose a service is. PostgreSQL and Redis are machine services and stay shared.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STACK = ROOT / "scripts" / "stack.sh"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _listener(python: Path, port: int, *, title: str | None = None, cwd: Path | None = None) -> subprocess.Popen[bytes]:
    """An HTTP server on ``port`` whose command line names ``python`` (as a service of a stack does),
    or only ``title`` (as Airflow's api-server, which retitles itself), started in ``cwd``."""
    proc = subprocess.Popen([title or str(python), "-m", "http.server", str(port), "--bind", "127.0.0.1"],
                            executable=python, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        if _listening(port):
            return proc
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"the test's listener did not start on {port}")


@pytest.fixture
def other_checkout(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    """A listener started from another checkout's virtualenv (a link to this interpreter)."""
    other = tmp_path / "other-clone"
    (other / ".venv" / "bin").mkdir(parents=True)
    (other / "scripts").mkdir()
    (other / "scripts" / "stack.sh").write_text("#!/bin/sh\n", encoding="utf-8")
    python = other / ".venv" / "bin" / "python"
    python.symlink_to(sys.executable)
    port = _free_port()
    proc = _listener(python, port)
    yield other, port
    proc.kill()
    proc.wait()


def _stack(*args: str, **ports: int) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **{f"CLIENTFLOW_{name.upper()}_PORT": str(port) for name, port in ports.items()}}
    env.pop("CLIENTFLOW_MOTO_PORT", None)  # moto listens on the S3 port unless told otherwise
    return subprocess.run([str(STACK), *args], capture_output=True, text=True, env=env, timeout=120, cwd=ROOT)


def test_status_names_the_checkout_whose_service_holds_a_port(other_checkout: tuple[Path, int]) -> None:
    other, port = other_checkout
    done = _stack("status", smtp=port)
    assert f"SMTP: up on {port}, the stack of another checkout ({other})" in done.stdout.splitlines()


def test_up_refuses_another_checkouts_service_and_starts_nothing(other_checkout: tuple[Path, int]) -> None:
    other, port = other_checkout
    smtp, metrics = _free_port(), _free_port()
    done = _stack("up", s3=port, smtp=smtp, metrics=metrics)
    assert done.returncode != 0
    assert f"moto: port {port} is held by the stack of another checkout ({other})" in done.stderr
    assert not _listening(smtp) and not _listening(metrics)  # up stopped at the first refused port


def test_a_retitled_service_is_known_by_its_working_directory(other_checkout: tuple[Path, int]) -> None:
    other, _ = other_checkout
    port = _free_port()
    proc = _listener(Path(sys.executable), port, title="airflow api_server", cwd=other)
    try:
        assert f"Airflow: up on {port}, the stack of another checkout ({other})" in \
            _stack("status", airflow=port).stdout.splitlines()
    finally:
        proc.kill()
        proc.wait()


def test_a_service_of_this_checkout_is_its_own() -> None:
    port = _free_port()
    proc = _listener(ROOT / ".venv" / "bin" / "python", port)
    try:
        assert f"SMTP: up on {port}" in _stack("status", smtp=port).stdout.splitlines()
    finally:
        proc.kill()
        proc.wait()
