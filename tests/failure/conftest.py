"""The failure suite's stack (one for every scenario module), and its report: one line per scenario and a
closing ``N passed, M failed`` line."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.failure.proxy import S3Proxy
from tests.failure.stack import (
    BIG,
    BUCKET,
    INCOMPLETE_AFTER,
    MAPPINGS,
    MOTO_PORT,
    PG,
    PROXY_PORT,
    ROOT,
    SMALL,
    SOURCES,
    _airflow,
    _env,
    _meta,
    _settled,
)


@pytest.fixture(scope="session")
def s3_proxy() -> Iterator[S3Proxy]:
    """Between the stack and moto for the whole session: the stack's S3 connection points at it."""
    proxy = S3Proxy(PROXY_PORT, MOTO_PORT, BUCKET)
    yield proxy
    proxy.close()


@pytest.fixture(scope="session", autouse=True)
def stack(s3_proxy: S3Proxy) -> None:
    shutil.rmtree(MAPPINGS, ignore_errors=True)
    MAPPINGS.mkdir(parents=True)
    text = (ROOT / "include" / "mappings" / "ehrlogic.yaml").read_text(encoding="utf-8")
    for client in (SMALL, BIG):
        (MAPPINGS / f"{client}.yaml").write_text(text.replace("client: ehrlogic", f"client: {client}")
                                                 + f"alerts:\n  incomplete_after: PT{INCOMPLETE_AFTER}S\n", encoding="utf-8")
    for command in ("down", "up"):
        subprocess.run([str(ROOT / "scripts" / "stack.sh"), command], cwd=ROOT, env=_env(), check=True)
    from bench.bench_e2e import reset_client
    from clientflow.sample import ehrlogic

    for client, (database, patients) in SOURCES.items():
        reset_client(client)
        ehrlogic.create(f"{PG}/postgres", database, patients)
    deadline = time.time() + 240
    for client in (SMALL, BIG):
        while not _meta("select 1 from dag where dag_id = %s", f"client_{client}"):
            assert time.time() < deadline, f"client_{client} did not appear"
            time.sleep(3)
        _airflow("dags", "unpause", f"client_{client}")
    time.sleep(20)  # today's scheduled runs (no batch) start, sweep an empty bucket and end
    for client in (SMALL, BIG):
        _settled(client)


_outcomes: dict[str, str] = {}


def _name(nodeid: str) -> str:
    return nodeid.rsplit("::", 1)[-1].removeprefix("test_").replace("_", " ")


@pytest.hookimpl(trylast=True)
def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if "tests/failure/" not in report.nodeid.replace("\\", "/"):
        return
    name = _name(report.nodeid)
    if report.when == "call" or (report.when == "setup" and not report.passed):
        outcome = "passed" if report.passed else ("skipped" if report.skipped else "FAILED")
        _outcomes[name] = outcome
        print(f"\n[failure-suite] {outcome:<7} {name} ({report.duration:.0f} s)", flush=True)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _outcomes:
        return
    passed = sum(1 for o in _outcomes.values() if o == "passed")
    failed = sum(1 for o in _outcomes.values() if o == "FAILED")
    terminalreporter.write_sep("=", "failure suite")
    for name, outcome in _outcomes.items():
        terminalreporter.write_line(f"{outcome:<7} {name}")
    terminalreporter.write_line(f"failure suite: {passed} passed, {failed} failed")
