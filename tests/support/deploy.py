"""The deployment files read as their tools read them, for tests/deploy (no Docker engine or Helm
runs where we develop): the Dockerfile's instructions, the compose file with its `${NAME:-default}`
variables interpolated as `docker compose` does, and `.dockerignore` matching.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
COMPOSE_FILE = ROOT / "deploy" / "docker-compose.yaml"
HELM_VALUES = ROOT / "deploy" / "helm" / "values.yaml"


@dataclass(frozen=True)
class Instruction:
    keyword: str
    """Upper case: FROM, RUN, ENV, ..."""
    args: str
    """The rest of the instruction, continuation lines joined with a space."""
    user: str
    """The USER in effect when it runs; "" before any USER instruction (the base image's)."""


def dockerfile(path: Path = DOCKERFILE) -> list[Instruction]:
    """The instructions in order (comments and line continuations resolved; no heredocs)."""
    out: list[Instruction] = []
    user, pending = "", ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):  # a comment inside a continued instruction
            continue
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        keyword, _, args = (pending + line).partition(" ")
        pending = ""
        instruction = Instruction(keyword.upper(), args.strip(), user)
        if instruction.keyword == "USER":
            user = instruction.args
        out.append(instruction)
    return out


def dockerfile_env(instructions: list[Instruction]) -> dict[str, str]:
    """Every ENV of the Dockerfile, later ones winning (the `KEY=value ...` form)."""
    env: dict[str, str] = {}
    for instruction in instructions:
        if instruction.keyword == "ENV":
            for pair in shlex.split(instruction.args):
                key, sep, value = pair.partition("=")
                assert sep, f"ENV {instruction.args!r}: use the KEY=value form"
                env[key] = value
    return env


# Compose's interpolation: $$ is a literal $, ${NAME}, ${NAME:-default} and ${NAME-default}
# take the environment. Any other form is refused, so a test fails rather than guessing.
_VARIABLE = re.compile(
    r"\$\$|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?P<op>:-|-)?(?P<arg>[^}]*)\}|\$(?P<bare>[A-Za-z_]\w*)"
)


@dataclass(frozen=True)
class Variable:
    name: str
    default: str | None
    """None: no default (`${NAME}` or `$NAME`)."""


def variables(value: Any) -> list[Variable]:
    """Every variable the value refers to, in document order (strings inside lists and maps)."""
    found: list[Variable] = []
    for text in _strings(value):
        for match in _VARIABLE.finditer(text):
            if match.group(0) == "$$":
                continue
            name = match.group("name") or match.group("bare")
            if match.group("name") and not match.group("op") and match.group("arg"):
                raise ValueError(f"unsupported compose variable form: {match.group(0)}")
            found.append(Variable(name, match.group("arg") if match.group("op") else None))
    return found


def interpolate(value: Any, env: Mapping[str, str]) -> Any:
    """The value as `docker compose` sees it with the environment ``env``."""
    if isinstance(value, str):
        return _VARIABLE.sub(lambda m: _substitute(m, env), value)
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    return value


def _substitute(match: re.Match[str], env: Mapping[str, str]) -> str:
    if match.group(0) == "$$":
        return "$"
    name = match.group("name") or match.group("bare")
    op, arg = match.group("op"), match.group("arg") or ""
    if match.group("name") and not op and arg:
        raise ValueError(f"unsupported compose variable form: {match.group(0)}")
    if op == ":-":
        return env.get(name) or arg
    if op == "-":
        return env.get(name, arg)
    return env.get(name, "")


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    return []


def compose_raw(path: Path = COMPOSE_FILE) -> dict[str, Any]:
    """The compose file as written (YAML anchors and merge keys resolved, variables not)."""
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(doc, dict)
    return doc


def compose(env: Mapping[str, str] | None = None, path: Path = COMPOSE_FILE) -> dict[str, Any]:
    """The compose file as `docker compose` reads it with the environment ``env`` (default: none
    set, so every variable takes its default)."""
    doc = interpolate(compose_raw(path), env or {})
    assert isinstance(doc, dict)
    return doc


def dockerignore_patterns(path: Path = DOCKERIGNORE) -> list[str]:
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    patterns = [line for line in lines if line and not line.startswith("#")]
    assert not [p for p in patterns if p.startswith("!")], "exceptions (!) are not modelled here"
    return patterns


def dockerignored(relative: str, patterns: list[str]) -> bool:
    """Whether Docker leaves ``relative`` (a path in the build context) out: a pattern matches
    the path or one of its parent directories; `*` and `?` stay within a name, `**` spans any."""
    parts = relative.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    return any(re.fullmatch(_pattern_regex(p), prefix) for p in patterns for prefix in prefixes)


def _pattern_regex(pattern: str) -> str:
    pieces = []
    for segment in pattern.strip("/").split("/"):
        if segment == "**":
            pieces.append("(?:.*)")
            continue
        piece = "".join("[^/]*" if c == "*" else "[^/]" if c == "?" else re.escape(c) for c in segment)
        pieces.append(piece)
    regex = "/".join(pieces)
    return regex.replace("(?:.*)/", "(?:.*/)?")
