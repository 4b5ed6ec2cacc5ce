"""Failure simulations of the services under the running local stack: S3 answering 503 for a while,
Redis restarted (its locks and fencing counter gone) in the middle of a raw load, the scheduler
killed with SIGKILL together with the executor's worker processes and the task they ran, in the
middle of a raw load, and dbt's database connection terminated in the middle of its build.
Airflow retries the tasks that meet the fault with exponential backoff; each batch is promoted
exactly once, the client's next batch still takes its lock, and ``clientflow reconcile`` finds
nothing lost or duplicated.
"""

from __future__ import annotations

import subprocess
import time
from datetime import UTC, datetime

import pytest

from tests.failure.proxy import S3Proxy
from tests.failure.stack import (
    BIG,
    REDIS_PORT,
    ROOT,
    SMALL,
    SOURCES,
    _batches,
    _day,
    _env,
    _extract,
    _meta,
    _production,
    _quietly,
    _reconciled,
    _settled,
    _source,
    _terminate,
    _tries,
    _trigger,
    _wait_state,
)

pytestmark = pytest.mark.failure

OUTAGE_SECONDS = 45


def test_s3_answering_503_is_retried_with_backoff_and_the_batch_promoted_once(s3_proxy: S3Proxy) -> None:
    day = _day(2)
    with _quietly():
        _extract(SMALL, day, "slowdown")  # the client's upload reached S3 before the outage
        refused_before = s3_proxy.refused
        outage_began = datetime.now(UTC)
        with s3_proxy.unavailable():
            _trigger(SMALL, day, "slowdown")
            deadline = time.time() + OUTAGE_SECONDS
            while time.time() < deadline:
                time.sleep(3)
            # Any run of the client: the one triggered here may wait behind another (max_active_runs=1),
            # e.g. the run of S3's test event that the previous scenario's notifications sent, whose
            # sweep then meets the outage first (seen on 2026-12-06: its next_batch failed at the
            # 503s, was retried after the outage and handed the batch on).
            retried = _meta("select run_id, task_id, try_number, state from task_instance where dag_id = %s "
                            "and start_date >= %s and (try_number > 1 or state = 'up_for_retry')",
                            f"client_{SMALL}", outage_began)
        _wait_state(SMALL, day, "SUCCESS", timeout=900)
        _settled(SMALL)
    print(f"S3 refused {s3_proxy.refused - refused_before} connection(s) with 503; retried: {retried}")
    assert s3_proxy.refused > refused_before
    assert retried, "no task met the outage and was retried"
    assert [s for _r, s in _batches(SMALL, day)] == ["SUCCESS"]
    _reconciled(SMALL)


def _restart_redis() -> None:
    """Stop the suite's Redis (no persistence: its locks and counters are gone) and start it again."""
    subprocess.run(["redis-cli", "-p", str(REDIS_PORT), "shutdown", "nosave"], capture_output=True, check=False)
    time.sleep(5)
    subprocess.run([str(ROOT / "scripts" / "stack.sh"), "services"], cwd=ROOT, env=_env(), check=True,
                   capture_output=True)
    done = subprocess.run(["redis-cli", "-p", str(REDIS_PORT), "dbsize"], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "0", done.stdout  # a fresh Redis: nothing of the lock survived


def test_redis_restarted_mid_load_costs_nothing_and_the_next_batch_still_takes_the_lock() -> None:
    day, next_day = _day(9), _day(8)
    _source(BIG, "update dim_patient set pt_last_nm = pt_last_nm || '-5' where pt_id % 100 = 1")
    with _quietly():
        _extract(BIG, day, "big5")
        _trigger(BIG, day, "big5")
        _terminate("clientflow_staging", "copy %raw%from stdin%", kill=False)
        _restart_redis()
        _wait_state(BIG, day, "SUCCESS", timeout=900)
        _settled(BIG)
        # Redis's fencing counter started again at 1; the ledger's tokens are higher.
        _extract(BIG, next_day, "big6")
        _trigger(BIG, next_day, "big6")
        _wait_state(BIG, next_day, "SUCCESS", timeout=900)
        _settled(BIG)
    assert [s for _r, s in _batches(BIG, day)] == ["SUCCESS"]
    assert [s for _r, s in _batches(BIG, next_day)] == ["SUCCESS"]
    _reconciled(BIG)


def _tree(pid: int) -> list[int]:
    """``pid`` and every process below it."""
    children = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout.split()
    return [pid, *(p for child in children for p in _tree(int(child)))]


def _kill_scheduler() -> list[int]:
    """SIGKILL the scheduler of ``airflow standalone`` with its executor's workers and their tasks,
    then start a scheduler again (standalone does not): pid and log in .stack/, stopped by ``make down``."""
    standalone = int((ROOT / ".stack" / "airflow.pid").read_text())
    found = subprocess.run(["pgrep", "-P", str(standalone), "-f", "airflow scheduler"], capture_output=True,
                           text=True).stdout.split()
    assert len(found) == 1, f"no single scheduler below standalone ({standalone}): {found}"
    killed = _tree(int(found[0]))
    subprocess.run(["kill", "-KILL", *map(str, killed)], check=False)
    subprocess.run(["bash", "-c", 'eval "$(scripts/stack.sh airflow-env)"; '
                    "nohup .venv/bin/airflow scheduler >.stack/scheduler.log 2>&1 & echo $! >.stack/scheduler.pid"],
                   cwd=ROOT, env=_env(), check=True)
    return killed


def test_the_scheduler_and_its_workers_killed_mid_load_leave_one_promotion() -> None:
    day = _day(7)
    _source(BIG, "update dim_patient set pt_last_nm = pt_last_nm || '-7' where pt_id % 100 = 7")
    with _quietly():
        _extract(BIG, day, "big7")
        run = _trigger(BIG, day, "big7")
        _terminate("clientflow_staging", "copy %raw%from stdin%", kill=False)
        killed = _kill_scheduler()
        print(f"killed the scheduler, its workers and the running load: {len(killed)} processes")
        _wait_state(BIG, day, "SUCCESS", timeout=900)
        _settled(BIG)
    assert _tries(BIG, run, "ingest") >= 2  # the killed try was failed by its lost heartbeat and retried
    assert [s for _r, s in _batches(BIG, day)] == ["SUCCESS"]
    _reconciled(BIG)


def test_dbt_s_connection_killed_mid_build_is_retried_from_dummy_production_as_it_was() -> None:
    """A transient database error inside dbt: the build fails for a retry (not for good), the retry
    callback undoes what the killed build had merged into dummy production, and the retried build
    promotes the batch once; reconciliation finds dummy production equal to production."""
    day = _day(6)
    _source(BIG, "update dim_patient set pt_last_nm = pt_last_nm || '-6' where pt_id % 10 = 6")
    with _quietly():
        _extract(BIG, day, "big8")
        run = _trigger(BIG, day, "big8")
        killed = _terminate("clientflow_staging", '%"stg_failbig"%appointments%')
        print(f"terminated a dbt backend during: {killed}")
        _wait_state(BIG, day, "SUCCESS", timeout=900)
        _settled(BIG)
    assert _tries(BIG, run, "transform.dbt_build") >= 2  # failed for a retry, not for good
    assert [s for _r, s in _batches(BIG, day)] == ["SUCCESS"]
    changed = _production(BIG, "select count(*) from practice.patients where client_id = %s and last_name like '%%-6'")
    assert changed == [(SOURCES[BIG][1] // 10,)]
    _reconciled(BIG)
