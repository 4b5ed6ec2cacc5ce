"""Read ``airflow_settings.yaml`` (Astro CLI format) into ``AIRFLOW_CONN_*`` environment values.

``${NAME:-default}`` placeholders are expanded from the environment first, so the tests and the
stack can point the same file at their own databases and ports.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

SETTINGS_FILE = Path(__file__).resolve().parent.parent / "airflow_settings.yaml"
_PLACEHOLDER = re.compile(r"\$\{([A-Z0-9_]+)(?::-([^}]*))?\}")


def _expand(text: str, env: Mapping[str, str]) -> str:
    return _PLACEHOLDER.sub(lambda m: env.get(m.group(1), m.group(2) or ""), text)


def connections(path: Path = SETTINGS_FILE, env: Mapping[str, str] | None = None) -> dict[str, dict[str, Any]]:
    data = yaml.safe_load(_expand(path.read_text(encoding="utf-8"), env if env is not None else os.environ))
    out: dict[str, dict[str, Any]] = {}
    for conn in data["airflow"]["connections"]:
        value: dict[str, Any] = {"conn_type": conn["conn_type"]}
        for field in ("host", "port", "schema", "login", "password"):
            if conn.get(f"conn_{field}") not in (None, ""):
                value[field] = conn[f"conn_{field}"]
        if conn.get("conn_extra"):
            value["extra"] = conn["conn_extra"]
        out[conn["conn_id"]] = value
    return out


def pools(path: Path = SETTINGS_FILE, env: Mapping[str, str] | None = None) -> list[tuple[str, int, str]]:
    """(name, slots, description) of each pool (Astro CLI's pool_name, pool_slot, pool_description)."""
    data = yaml.safe_load(_expand(path.read_text(encoding="utf-8"), env if env is not None else os.environ))
    return [(p["pool_name"], int(p["pool_slot"]), p.get("pool_description", "")) for p in data["airflow"]["pools"] or []]


def airflow_env(path: Path = SETTINGS_FILE, env: Mapping[str, str] | None = None) -> dict[str, str]:
    return {f"AIRFLOW_CONN_{cid.upper()}": json.dumps(v) for cid, v in connections(path, env).items()}


def main() -> None:
    parser = argparse.ArgumentParser(description="Print export lines for the connections.")
    parser.add_argument("--pools", action="store_true", help="print the pools instead: name, slots, description")
    if parser.parse_args().pools:
        for name, slots, description in pools():
            print(name, slots, description)
        return
    for name, value in airflow_env().items():
        print(f"export {name}={shlex.quote(value)}")


if __name__ == "__main__":
    main()
