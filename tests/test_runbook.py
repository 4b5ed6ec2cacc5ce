"""docs/runbook.md: every command in it is run by the runbook's stack test (tests/stack/test_runbook.py).

The stack test runs each ``$ command`` of each section with the section's values; this test fails,
without the stack, when the runbook gains a section or a placeholder the stack test does not fill,
or quotes a command inline that no block (or named test) runs.
"""

from __future__ import annotations

import pytest

from tests.stack import test_runbook as stack_test
from tests.support import runbook

# Inline commands that a block of the runbook does not run, and the test that runs them.
ELSEWHERE = {"clientflow accept": "tests/validation/test_gates.py"}


def test_the_stack_test_fills_every_section_and_placeholder() -> None:
    sections = runbook.commands()
    assert set(sections) == set(stack_test.SECTIONS), "sections of the runbook vs the stack test's plan"
    for section, commands in sections.items():
        for command in commands:
            names = set(runbook.PLACEHOLDER.findall(command))
            missing = names - set(stack_test.SECTIONS[section])
            assert not missing, (section, command, missing)


def test_every_inline_command_is_one_a_block_runs() -> None:
    run = {" ".join(c.split()[:2]) for commands in runbook.commands().values() for c in commands}
    for span in runbook.inline_commands():
        head = " ".join(span.split()[:2])
        if head in ELSEWHERE:
            assert head.split()[1] in (runbook.ROOT / ELSEWHERE[head]).read_text(encoding="utf-8")
        else:
            assert head in run, f"`{span}` is quoted in the runbook but no block runs it"


@pytest.mark.parametrize("text, expected", [
    ("## a b's\n```console\n$ clientflow x <client>\n```\n```bash\n$ not this\n```\n", {"a-bs": ["clientflow x <client>"]}),
    ("## one\nnothing\n## two\n   ```console\n   $ airflow y\n   ```\n", {"two": ["airflow y"]}),
])
def test_the_parser_reads_console_blocks_only(text: str, expected: dict[str, list[str]]) -> None:
    assert runbook.commands(text) == expected
