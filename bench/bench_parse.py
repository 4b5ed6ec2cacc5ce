"""DAG-parsing benchmark at fleet size: 200 clients' mapping files.

    .venv/bin/python bench/bench_parse.py [--clients 200] [--rounds 3]     (make bench-parse)

1. Writes ``--clients`` mapping files into a scratch folder (``.cache/bench-parse``), copies of the
   committed sample clients (alternately ehrlogic and iriscare) under the names c001, c002, ...
2. In a fresh process each time, with Airflow already imported (as in a DAG processor), times:
   - S, a full parse of the DAG folder (``DagBag(dags/)``) that builds every client's DAG;
   - T, the parse a task process does to run one client's task: the same file with Airflow's
     parsing context naming one DAG, so the factory builds only that one;
   - the baseline: a full parse with one client's file, in the same run.
   Each is the fastest of ``--rounds`` runs; the imports the DAG file triggers (Cosmos, the
   pipeline package) are counted in the parse, as a DAG processor pays them.
3. Prints ``BENCH name=parse clients=N seconds=S task_seconds=T baseline_one_client_seconds=B``.

Targets (issue 9): S under 5 s and T under 1 s.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DAGS = ROOT / "dags"
SAMPLES = ("ehrlogic", "iriscare")

_CHILD = r"""
import json, sys, time
import airflow.sdk  # a DAG processor has Airflow loaded before it parses a file
from airflow.dag_processing.dagbag import DagBag
start = time.perf_counter()
bag = DagBag(dag_folder=sys.argv[1])
print(json.dumps({"seconds": time.perf_counter() - start, "dags": len(bag.dags),
                  "errors": len(bag.import_errors)}))
"""


def write_mappings(folder: Path, clients: int) -> list[str]:
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    names = []
    for i in range(1, clients + 1):
        sample = SAMPLES[i % len(SAMPLES)]
        name = f"c{i:03d}"
        text = (ROOT / "include" / "mappings" / f"{sample}.yaml").read_text(encoding="utf-8")
        (folder / f"{name}.yaml").write_text(text.replace(f"client: {sample}", f"client: {name}"), encoding="utf-8")
        names.append(name)
    return names


def parse_once(mappings: Path, only_dag: str | None = None) -> dict[str, float]:
    env = {**os.environ, "CLIENTFLOW_MAPPINGS_DIR": str(mappings), "AIRFLOW__COSMOS__ENABLE_TELEMETRY": "False"}
    if only_dag:
        env["_AIRFLOW_PARSING_CONTEXT_DAG_ID"] = only_dag
    done = subprocess.run([sys.executable, "-c", _CHILD, str(DAGS)], env=env, capture_output=True, text=True,
                          timeout=600, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def fastest(rounds: int, mappings: Path, only_dag: str | None, expect_dags: int) -> float:
    runs = [parse_once(mappings, only_dag) for _ in range(rounds)]
    for run in runs:
        if run["dags"] != expect_dags or run["errors"]:
            sys.exit(f"parse built {run['dags']} DAGs with {run['errors']} import errors, expected {expect_dags}")
    return min(run["seconds"] for run in runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    scratch = ROOT / ".cache" / "bench-parse"
    names = write_mappings(scratch / "fleet", args.clients)
    write_mappings(scratch / "one", 1)

    baseline = fastest(args.rounds, scratch / "one", None, 1)
    full = fastest(args.rounds, scratch / "fleet", None, args.clients)
    task = fastest(args.rounds, scratch / "fleet", f"client_{names[len(names) // 2]}", 1)
    print(f"full parse, {args.clients} clients:            {full:6.2f} s   (target < 5)")
    print(f"one task's parse, {args.clients} clients:      {task:6.2f} s   (target < 1)")
    print(f"baseline: full parse, 1 client, same run: {baseline:6.2f} s")
    print(f"BENCH name=parse clients={args.clients} seconds={full:.2f} task_seconds={task:.2f} "
          f"baseline_one_client_seconds={baseline:.2f}")


if __name__ == "__main__":
    main()
