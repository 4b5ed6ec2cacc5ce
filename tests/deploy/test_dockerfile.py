"""The Dockerfile builds the clone's layout on the official Airflow image: pinned, non-root, dbt in
the virtualenv the code runs, the manifest built inside. No Docker engine runs here, so these read
the Dockerfile and .dockerignore instead of building the image."""

from __future__ import annotations

import io
import os
import re
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from tests.support.deploy import (
    ROOT,
    Instruction,
    dockerfile,
    dockerfile_env,
    dockerignore_patterns,
    dockerignored,
)

PROJECT = "/opt/clientflow"
"""Where the image puts the clone's layout (the package, include/, dbt/, the dbt virtualenv)."""


@pytest.fixture(scope="module")
def instructions() -> list[Instruction]:
    return dockerfile()


def _of(instructions: list[Instruction], keyword: str) -> list[Instruction]:
    return [i for i in instructions if i.keyword == keyword]


def _lock_pin(path: Path, package: str) -> str:
    for line in path.read_text(encoding="utf-8").splitlines():
        name, sep, version = line.partition("==")
        if sep and name.strip().lower() == package:
            return version.strip()
    raise AssertionError(f"{path.name} pins no {package}")


def _copies(instructions: list[Instruction]) -> list[tuple[list[str], str]]:
    """Each COPY's sources and destination, without its --flags."""
    out = []
    for copy in _of(instructions, "COPY"):
        words = [w for w in copy.args.split() if not w.startswith("--")]
        out.append((words[:-1], words[-1]))
    return out


def test_the_base_image_is_the_official_airflow_image_of_our_lock(instructions: list[Instruction]) -> None:
    (base,) = _of(instructions, "FROM")
    match = re.fullmatch(r"apache/airflow:(\d+\.\d+\.\d+)-python(\d+\.\d+)", base.args)
    assert match, f"FROM {base.args}: the official image, an exact Airflow release and Python"
    airflow, python = match.groups()
    assert airflow == "3.3.2" == _lock_pin(ROOT / "requirements.txt", "apache-airflow")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    requires = project["requires-python"]
    assert Version(f"{python}.0") in SpecifierSet(requires), (python, requires)


def test_the_image_runs_as_the_airflow_user_and_root_installs_nothing(
    instructions: list[Instruction],
) -> None:
    assert _of(instructions, "USER")[-1].args == "airflow"
    as_root = [i.args for i in _of(instructions, "RUN") if i.user in ("root", "0")]
    assert not [run for run in as_root if "pip" in run or "venv" in run], as_root
    for copy in _of(instructions, "COPY"):
        assert "--chown=airflow:root" in copy.args.split(), copy.args


def test_the_locks_are_copied_first_and_installed_exactly(instructions: list[Instruction]) -> None:
    copies = _copies(instructions)
    first_sources, destination = copies[0]
    assert first_sources == ["requirements.txt", "requirements-dbt.txt"] and destination == f"{PROJECT}/"
    runs = [i.args for i in _of(instructions, "RUN")]
    assert any(
        f"-r {PROJECT}/requirements.txt" in r and '"apache-airflow==${AIRFLOW_VERSION}"' in r for r in runs
    )
    assert any(
        f"{PROJECT}/.venv-dbt/bin/pip install" in r and f"-r {PROJECT}/requirements-dbt.txt" in r
        for r in runs
    )
    for lock in ("requirements.txt", "requirements-dbt.txt"):
        lines = [line for line in (ROOT / lock).read_text(encoding="utf-8").splitlines() if line.strip()]
        assert [line for line in lines if not re.fullmatch(r"[A-Za-z0-9_.\-]+==[^=\s]+", line)] == [], lock


def test_the_project_lands_where_the_code_looks_for_it(instructions: list[Instruction]) -> None:
    env = dockerfile_env(instructions)
    assert env["PYTHONPATH"] == PROJECT
    copied = {sources[0]: destination for sources, destination in _copies(instructions)[1:]}
    for name in ("clientflow", "client_extractor", "dags", "plugins", "include", "dbt"):
        assert copied.get(name) == f"{PROJECT}/{name}", name
        assert (ROOT / name).is_dir(), name
    assert env["AIRFLOW__CORE__DAGS_FOLDER"] == copied["dags"]
    assert env["AIRFLOW__CORE__PLUGINS_FOLDER"] == copied["plugins"]


def _dbt_command(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> list[str]:
    """The dbt command line the code's dbt wrapper (what Cosmos executes) starts under ``env``."""
    from clientflow.transform import dbt_scrubbed

    started: list[list[str]] = []

    class Finished:
        def __init__(self, args: list[str], **_: Any) -> None:
            started.append(args)
            self.stdout = io.StringIO("")

        def wait(self) -> int:
            return 0

    monkeypatch.setattr(dbt_scrubbed.subprocess, "Popen", Finished)
    monkeypatch.setattr(dbt_scrubbed.signal, "signal", lambda *_: None)  # pytest keeps its SIGTERM
    monkeypatch.delenv("CLIENTFLOW_DBT_EXECUTABLE", raising=False)
    monkeypatch.delenv("CLIENTFLOW_DBT_FORKSERVER", raising=False)  # the image runs no fork server
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert dbt_scrubbed.main(["parse"]) == 0
    return started[0]


def test_dbt_runs_from_the_virtualenv_the_code_uses(
    instructions: list[Instruction], monkeypatch: pytest.MonkeyPatch
) -> None:
    from clientflow.transform.dbt_group import DBT_EXECUTABLE

    # Cosmos runs the scrubbing wrapper itself (COPY keeps its executable bit) ...
    assert DBT_EXECUTABLE.name == "dbt_scrubbed.py" and os.access(DBT_EXECUTABLE, os.X_OK)
    assert subprocess.run(
        ["git", "ls-files", "-s", str(DBT_EXECUTABLE)], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.startswith("100755")
    # ... which runs the real dbt: the image's CLIENTFLOW_DBT_EXECUTABLE, else its default beside
    # the package, and both are the virtualenv the Dockerfile builds.
    executable = dockerfile_env(instructions)["CLIENTFLOW_DBT_EXECUTABLE"]
    assert _dbt_command(monkeypatch, {"CLIENTFLOW_DBT_EXECUTABLE": executable}) == [executable, "parse"]
    default = Path(_dbt_command(monkeypatch, {})[0]).relative_to(ROOT)
    assert executable == f"{PROJECT}/{default.as_posix()}"
    venv = executable.removesuffix("/bin/dbt")
    assert any(
        re.search(rf"python -m venv {re.escape(venv)}(\s|$)", i.args) for i in _of(instructions, "RUN")
    )


def test_the_dbt_manifest_is_built_in_the_image(instructions: list[Instruction]) -> None:
    executable = dockerfile_env(instructions)["CLIENTFLOW_DBT_EXECUTABLE"]
    keywords = [(i.keyword, i.args) for i in instructions]
    copy_dbt = next(
        n for n, (k, a) in enumerate(keywords) if k == "COPY" and a.split()[-1] == f"{PROJECT}/dbt"
    )
    parse = next(n for n, (k, a) in enumerate(keywords) if k == "RUN" and f"{executable} parse" in a)
    assert copy_dbt < parse
    assert f"cd {PROJECT}/dbt " in keywords[parse][1] and "--profiles-dir ." in keywords[parse][1]
    # The clone's own manifest (maybe stale, or built for other paths) never enters the image.
    assert dockerignored("dbt/target/manifest.json", dockerignore_patterns())


@pytest.mark.parametrize(
    "path",
    [
        ".venv/bin/python",
        ".venv-dbt/bin/dbt",
        ".cache/pip/http/x",
        ".git/HEAD",
        ".stack/pg/data",
        "dist/client-extractor",
        "build/client-extractor/x",
        "dbt/target/manifest.json",
        "dbt/logs/dbt.log",
        "logs/scheduler/latest",
        "clientflow/__pycache__/config.cpython-311.pyc",
        "tests/x.pyc",
        ".pytest_cache/v/x",
        ".mypy_cache/3.11/x",
        ".ruff_cache/x",
        "clientflow.egg-info/PKG-INFO",
        "deploy/.env",
    ],
)
def test_dockerignore_keeps_virtualenvs_caches_and_builds_out(path: str) -> None:
    assert dockerignored(path, dockerignore_patterns())


def test_dockerignore_keeps_what_the_image_copies(instructions: list[Instruction]) -> None:
    patterns = dockerignore_patterns()
    sources = [source for sources, _ in _copies(instructions) for source in sources]
    files = [
        str(p.relative_to(ROOT))
        for source in sources
        for p in [ROOT / source, *(ROOT / source).rglob("*")]
        if p.is_file()
        and "__pycache__" not in p.parts
        and not p.relative_to(ROOT).as_posix().startswith("dbt/")
    ]
    files += ["dbt/dbt_project.yml", "dbt/profiles.yml", "dbt/models", "dbt/macros"]
    assert len(files) > 50
    assert [f for f in files if dockerignored(f, patterns)] == []
