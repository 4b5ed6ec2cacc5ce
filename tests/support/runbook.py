"""The commands of docs/runbook.md: each ``$ command`` line of a ``console`` block, by section."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RUNBOOK = ROOT / "docs" / "runbook.md"
PLACEHOLDER = re.compile(r"<([a-z][a-z ]*)>")


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to dashes."""
    return re.sub(r"[^a-z0-9 -]", "", heading.strip().lower()).replace(" ", "-")


def commands(text: str | None = None) -> dict[str, list[str]]:
    """section anchor -> its commands, in order (sections without commands are left out)."""
    found: dict[str, list[str]] = {}
    section, fenced = "", False
    for line in (RUNBOOK.read_text(encoding="utf-8") if text is None else text).splitlines():
        stripped = line.strip()
        if not fenced and line.startswith("## "):
            section = slug(line[3:])
        elif stripped.startswith("```"):
            fenced = stripped == "```console" if not fenced else False
        elif fenced and stripped.startswith("$ "):
            found.setdefault(section, []).append(stripped[2:])
    return found


def inline_commands(text: str | None = None) -> list[str]:
    """Commands quoted inline in the prose (`clientflow ...`, `airflow ...`, `scripts/...`)."""
    prose = re.sub(r"```.*?```", "", RUNBOOK.read_text(encoding="utf-8") if text is None else text, flags=re.S)
    return [span for span in re.findall(r"`([^`\n]+)`", prose)
            if span.startswith(("clientflow ", "airflow ", "scripts/", "make "))]


def fill(command: str, values: dict[str, str]) -> str:
    """The command with its placeholders replaced; a placeholder without a value is an error."""
    return PLACEHOLDER.sub(lambda m: values[m.group(1)], command)
