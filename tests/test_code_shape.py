"""The code stays readable: short functions, short extractor modules, thin DAG files.

A function may run past 60 lines only with a ``# long: <why>`` comment on its ``def`` line or the
line after it; an extractor module may not pass 500 lines (PyInstaller packs the package, so
there is no reason for one big file).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAX_FUNCTION_LINES = 60
MAX_EXTRACTOR_MODULE_LINES = 500


def _long_functions(path: Path) -> list[str]:
    source = path.read_text(encoding="utf-8")
    lines = source.splitlines()
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            length = (node.end_lineno or node.lineno) - node.lineno + 1
            head = " ".join(lines[node.lineno - 1: node.lineno + 1])
            if length > MAX_FUNCTION_LINES and "# long:" not in head:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({length} lines)")
    return found


def test_functions_are_short_or_say_why() -> None:
    offenders = [f for package in ("clientflow", "client_extractor")
                 for path in sorted((ROOT / package).rglob("*.py")) for f in _long_functions(path)]
    assert offenders == []


def test_extractor_modules_are_short() -> None:
    sizes = {p.relative_to(ROOT).as_posix(): len(p.read_text(encoding="utf-8").splitlines())
             for p in (ROOT / "client_extractor").rglob("*.py")}
    assert {p: n for p, n in sizes.items() if n > MAX_EXTRACTOR_MODULE_LINES} == {}
    assert "client_extractor/contract.py" in sizes


def test_dag_files_only_wire() -> None:
    """A DAG file imports the factory and calls it; logic lives in the package."""
    for path in (ROOT / "dags").glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        defined = [n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.ClassDef)]
        assert defined == [], (path.name, defined)
