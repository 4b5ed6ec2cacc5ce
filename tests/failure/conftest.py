"""The failure suite's report: one line per scenario, and a closing ``N passed, M failed`` line."""

from __future__ import annotations

from typing import Any

import pytest

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
