"""Reading mapping files, with errors that name the file, the line and the field.

One malformed file must cost only its own client: :func:`load_each` returns every file's mapping
or its error, never raising for one file's fault, so the DAG file can still build every other
client's DAG. ``clientflow check-mapping FILE`` prints the same message before a commit.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from clientflow.mapping.model import ClientMapping, MappingFieldError

PROJECT_MAPPINGS = Path(__file__).resolve().parents[2] / "include" / "mappings"
MAPPINGS_DIR = Path(os.environ.get("CLIENTFLOW_MAPPINGS_DIR") or PROJECT_MAPPINGS)
"""Where the DAG file finds the clients: the project's, unless CLIENTFLOW_MAPPINGS_DIR names another
folder (a deployment's own, or a benchmark's scratch copy)."""


_BASE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when present: 200 files parse fast


class _Loader(_BASE_LOADER):  # type: ignore[valid-type,misc]
    """YAML as the 1.2 spec reads it: only true/false are booleans, so a client's spellings
    ``yes``, ``no``, ``on``, ``off`` stay text (YAML 1.1 would turn them into true and false)."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regex) for tag, regex in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                              list("tTfF"))


@dataclass(frozen=True)
class MappingProblem:
    """One thing wrong with a mapping file, located (line 0: the file as a whole)."""

    file: str
    line: int
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"


class MappingError(ValueError):
    """A mapping file that cannot be used; ``problems`` says where and why."""

    def __init__(self, problems: list[MappingProblem]) -> None:
        super().__init__("; ".join(map(str, problems)))
        self.problems = problems


def _line_of(root: yaml.Node | None, loc: tuple[Any, ...]) -> int:
    """The line (1-based) of the deepest node of ``loc`` that the document has."""
    node, line = root, (root.start_mark.line + 1) if root is not None else 0
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            match = next(((k, v) for k, v in node.value if k.value == str(part)), None)
            if match is None:
                break
            line, node = match[0].start_mark.line + 1, match[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line


def _problems(exc: ValidationError, root: yaml.Node | None, file: str) -> list[MappingProblem]:
    problems = []
    for err in exc.errors(include_input=False):
        loc = tuple(err["loc"])
        cause = (err.get("ctx") or {}).get("error")
        if isinstance(cause, MappingFieldError):
            loc += cause.loc
        message = str(cause) if isinstance(cause, MappingFieldError) else err["msg"].removeprefix("Value error, ")
        problems.append(MappingProblem(file, _line_of(root, loc), ".".join(map(str, loc)), message))
    return problems


def parse_mapping(text: str, file: str, expected_client: str | None = None) -> ClientMapping:
    """Validate one mapping file's text; raise :class:`MappingError` naming file, line, field."""
    try:
        data = yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 0
        raise MappingError([MappingProblem(file, line, "", f"not valid YAML ({getattr(exc, 'problem', exc)})")]) from None
    if not isinstance(data, dict):
        raise MappingError([MappingProblem(file, 1, "", "a mapping file is a YAML mapping (key: value)")])
    try:
        mapping = ClientMapping.model_validate(data)
    except ValidationError as exc:
        # Only now is the node tree needed: it knows the line of every key.
        raise MappingError(_problems(exc, yaml.compose(text, Loader=_Loader), file)) from None
    if expected_client is not None and mapping.client != expected_client:
        root = yaml.compose(text, Loader=_Loader)
        raise MappingError([MappingProblem(file, _line_of(root, ("client",)), "client",
                                           f"{mapping.client!r} must match the file name ({expected_client}.yaml)")])
    return mapping


def load_mapping(path: Path) -> ClientMapping:
    return parse_mapping(path.read_text(encoding="utf-8"), _shown(path), expected_client=path.stem)


def mapping_files(directory: Path = MAPPINGS_DIR) -> list[Path]:
    """Every client's mapping file, sorted, so generated DAGs are deterministic."""
    return sorted(directory.glob("*.yaml"))


def load_each(directory: Path = MAPPINGS_DIR) -> list[tuple[Path, ClientMapping | MappingError]]:
    """Each file with its mapping, or with the error that stops only that client."""
    out: list[tuple[Path, ClientMapping | MappingError]] = []
    for path in mapping_files(directory):
        try:
            out.append((path, load_mapping(path)))
        except MappingError as exc:
            out.append((path, exc))
        except OSError as exc:
            out.append((path, MappingError([MappingProblem(_shown(path), 0, "", f"cannot read ({exc.strerror})")])))
    return out


def load_all(directory: Path = MAPPINGS_DIR) -> list[ClientMapping]:
    """Every mapping; raises on the first broken file (for tools and tests, not the DAG file)."""
    loaded = []
    for _path, result in load_each(directory):
        if isinstance(result, MappingError):
            raise result
        loaded.append(result)
    return loaded


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(PROJECT_MAPPINGS.parents[1]))
    except ValueError:
        return str(path)
