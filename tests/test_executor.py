"""The local stack's executor and its Celery workers preload what a task's DAG parse imports
(clientflow.executor, clientflow.celery_config)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from clientflow.executor import PRELOADED

ROOT = Path(__file__).resolve().parent.parent

# A worker's view: the LocalExecutor starts (and forks its worker), or a Celery worker's main
# process initialises (and then starts its pool), in a process that has not imported the
# pipeline's third-party modules; then a task process of client_ehrlogic parses the DAG file, as
# Airflow's task runner does, after the executor's gc.freeze().
_STARTS = {
    "local": r"""
from clientflow.executor import PreloadingLocalExecutor
executor = PreloadingLocalExecutor(parallelism=1)
before_start = sorted(name for name in PRELOADED if name in sys.modules)
executor.start()
after_start = sorted(name for name in PRELOADED if name in sys.modules)
executor.end()
""",
    # What `airflow celery worker` does before its pool starts: the Celery app is built from the
    # configured options, and the worker's loader initialises (Celery's WorkController.__init__).
    "celery": r"""
os.environ["AIRFLOW__CELERY__CELERY_CONFIG_OPTIONS"] = "clientflow.celery_config.CELERY_CONFIG"
from airflow.providers.celery.executors import celery_executor_utils
from airflow.providers.celery.executors.default_celery import DEFAULT_CELERY_CONFIG
app = celery_executor_utils.app
assert app.conf.broker_url == DEFAULT_CELERY_CONFIG["broker_url"], "the stack's broker, not Celery's default"
before_start = sorted(name for name in PRELOADED if name in sys.modules)
app.loader.init_worker()
after_start = sorted(name for name in PRELOADED if name in sys.modules)
""",
}
_PROBE = r"""
import gc, json, os, sys
root = sys.argv[1]
sys.path.insert(0, root)
os.environ["_AIRFLOW_PARSING_CONTEXT_DAG_ID"] = "client_ehrlogic"
import airflow.sdk.execution_time.supervisor
from clientflow.executor import PRELOADED
{start}
gc.freeze()
before = set(sys.modules)
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder=os.path.join(root, "dags", "clients.py"))
print(json.dumps({"before_start": before_start, "after_start": after_start, "dags": sorted(bag.dags),
                  "errors": sorted(bag.import_errors), "imported": sorted(set(sys.modules) - before)}))
"""


@pytest.mark.parametrize("executor", sorted(_STARTS))
def test_a_task_s_dag_parse_imports_only_clientflow_after_the_executor_started(executor: str) -> None:
    probe = _PROBE.replace("{start}", _STARTS[executor])
    done = subprocess.run([sys.executable, "-c", probe, str(ROOT)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert "boto3" not in seen["before_start"]  # the probe starts without them: the executor imports them
    assert seen["after_start"] == sorted(PRELOADED)
    assert seen["dags"] == ["client_ehrlogic"] and seen["errors"] == []
    # the parse still reads the pipeline's own code from disk (a change reaches the next task), and
    # nothing else: every third-party module it needs came with the worker's fork
    others = [m for m in seen["imported"]
              if not m.startswith(("clientflow", "client_extractor", "unusual_prefix_"))]
    assert others == [], f"add to clientflow.executor.PRELOADED: {others}"
    assert "clientflow.dag_factory" in seen["imported"]
