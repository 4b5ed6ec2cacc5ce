"""One job per client at a time: a Redis lock with a fencing token checked by PostgreSQL.

Real Redis and PostgreSQL; the stages are called from threads and a separate process.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis

from clientflow import pipeline
from clientflow.batch import Batch
from clientflow.operations import locks
from clientflow.operations.locks import LockBusy, LockLost
from tests.support.practice import (
    Practice,
    history,
    mapping_for,
    production_rows,
    raw_counts,
    run_batch,
    tables,
)
from tests.support.transform import TransformFailed, transform


def _redis(settings: Any) -> redis.Redis:
    return redis.Redis.from_url(settings.redis.url.get_secret_value())


def _lock_key(settings: Any, client: str) -> str:
    return locks.key(settings.redis, "lock", client)


def _short_lock(settings: Any, seconds: int) -> Any:
    # model_copy skips validation, which keeps lock timeouts of at least 10 s in real settings.
    return settings.model_copy(update={"redis": settings.redis.model_copy(update={"lock_timeout_seconds": seconds})})


def test_second_run_waits_and_retries_after_the_first(settings: Any) -> None:
    mapping = mapping_for("lock_wait")
    practice = Practice(settings, mapping.client)
    first = pipeline.ingest(settings, mapping, practice.write(date(2026, 5, 1), "r1", tables(3, "one")),
                            airflow_run_id="run_one")
    second = practice.write(date(2026, 5, 2), "r2", tables(3, "two"))

    with pytest.raises(LockBusy, match="another run holds this client's lock"):
        pipeline.ingest(settings, mapping, second, airflow_run_id="run_two")
    assert set(raw_counts(settings, mapping.client, "person")) == {first.ingestion_id}

    transform(settings, mapping, first)
    pipeline.validate(settings, mapping, first)
    pipeline.promote(settings, mapping, first, airflow_run_id="run_one")
    assert not _redis(settings).exists(_lock_key(settings, mapping.client))  # released on success

    run_batch(settings, mapping, second, holder="run_two")  # the retry
    assert production_rows(settings, mapping.client, "patients", "last_name")["P0"] == ("Name0-two",)


def test_concurrent_runs_never_interleave_writes(settings: Any) -> None:
    mapping = mapping_for("lock_race")
    practice = Practice(settings, mapping.client)
    days = [date(2026, 5, 10) + timedelta(days=i) for i in range(2)]
    found = [practice.write(d, f"r{d:%d}", tables(20, f"v{d:%d}")) for d in days]
    lost: list[str] = []
    errors: list[BaseException] = []
    start = threading.Barrier(len(found))

    def worker(batch: Batch) -> None:
        start.wait()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                run_batch(settings, mapping, batch, holder=f"run_{batch.day}")
                return
            except LockBusy:
                lost.append(batch.day.isoformat())
                time.sleep(0.2)  # Airflow retries with backoff; the test, a little faster
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)
                return

    threads = [threading.Thread(target=worker, args=(b,)) for b in found]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert not errors
    assert lost, "the two runs never competed for the lock"
    with psycopg.connect(settings.staging.conninfo()) as conn:
        spans = conn.execute(
            "select b.ingestion_id, min(e.at) filter (where e.state = 'PENDING'), "
            "max(e.at) filter (where e.state = 'SUCCESS') from pipeline.batches b "
            "join pipeline.batch_events e using (ingestion_id) where b.client_name = %s group by 1 order by 2",
            (mapping.client,)).fetchall()
    assert len(spans) == 2 and all(s[2] is not None for s in spans)
    assert spans[0][2] <= spans[1][1], "the second run wrote before the first had promoted"
    assert len(production_rows(settings, mapping.client, "patients")) == 20


def test_stale_holder_cannot_commit_its_promotion(settings: Any) -> None:
    mapping = mapping_for("lock_stale")
    practice = Practice(settings, mapping.client)
    stale = pipeline.ingest(_short_lock(settings, 1), mapping,
                            practice.write(date(2026, 5, 20), "r1", tables(3, "stale")), airflow_run_id="stuck")
    transform(settings, mapping, stale)
    time.sleep(1.2)  # the stuck run's lock expires (a lost heartbeat, a long pause)
    newer = pipeline.ingest(settings, mapping, practice.write(date(2026, 5, 21), "r2", tables(3, "newer")),
                            airflow_run_id="takeover")

    with pytest.raises(LockLost, match="stale"):
        pipeline.promote(settings, mapping, stale, airflow_run_id="stuck")
    pipeline.mark_failed(settings, stale, "lock lost", airflow_run_id="stuck")

    assert production_rows(settings, mapping.client, "patients") == {}
    held = _redis(settings).get(_lock_key(settings, mapping.client))
    assert held is not None and held.decode() == newer.lock.holder  # the stale run freed only its own
    with psycopg.connect(settings.staging.conninfo()) as conn:
        assert conn.execute("select state from pipeline.batches where ingestion_id = %s",
                            (stale.ingestion_id,)).fetchone() == ("FAILED",)
    pipeline.mark_failed(settings, newer, "test cleanup", airflow_run_id="takeover")


_CRASH = """
import os, psycopg
from pydantic import SecretStr
from clientflow.config import RedisSettings
from clientflow.operations import locks
# model_construct: a 3 s timeout (real settings require at least 10 s) keeps the test short.
short = RedisSettings.model_construct(url=SecretStr(os.environ["REDIS"]), key_prefix=os.environ["PREFIX"],
                                      lock_timeout_seconds=3)
with psycopg.connect(os.environ["STAGING"]) as conn:
    locks.acquire(short, conn, "lock_crash", "crasher")
os._exit(9)  # killed without releasing anything
"""


def test_lock_of_a_crashed_run_expires(settings: Any) -> None:
    env = {**os.environ, "STAGING": settings.staging.conninfo(), "REDIS": settings.redis.url.get_secret_value(),
           "PREFIX": settings.redis.key_prefix}
    done = subprocess.run([sys.executable, "-c", _CRASH], env=env, cwd=os.getcwd(), timeout=60)
    assert done.returncode == 9
    ttl = _redis(settings).ttl(_lock_key(settings, "lock_crash"))
    assert 0 < ttl <= 3

    with psycopg.connect(settings.staging.conninfo()) as conn:
        with pytest.raises(LockBusy):
            locks.acquire(settings.redis, conn, "lock_crash", "next")
    time.sleep(ttl + 0.5)
    with psycopg.connect(settings.staging.conninfo()) as conn:
        lock = locks.acquire(settings.redis, conn, "lock_crash", "next")
    locks.release(settings.redis, lock)
    assert not _redis(settings).exists(_lock_key(settings, "lock_crash"))


def test_a_redis_that_forgot_its_counter_never_hands_out_a_token_the_ledger_saw(settings: Any) -> None:
    """Redis restarted without persistence (or was flushed): its fencing counter starts again at 1,
    while the ledger's fence row holds a higher token. The next batch still takes the client, with
    a token above the ledger's, and is promoted (it was refused as stale before)."""
    mapping = mapping_for("lock_forgot")
    practice = Practice(settings, mapping.client)
    for _ in range(3):
        with psycopg.connect(settings.staging.conninfo()) as conn:
            locks.release(settings.redis, locks.acquire(settings.redis, conn, mapping.client, "earlier"))
    with psycopg.connect(settings.staging.conninfo()) as conn:
        (recorded,) = conn.execute("select token from pipeline.client_fence where client_name = %s",
                                   (mapping.client,)).fetchone()
    _redis(settings).delete(locks.key(settings.redis, "fence", mapping.client))  # the restart

    batch = run_batch(settings, mapping, practice.write(date(2026, 5, 20), "r1", tables(3, "forgot")))
    assert batch.lock.token == recorded + 1
    assert production_rows(settings, mapping.client, "patients", "last_name")["P2"] == ("Name2-forgot",)
    assert int(_redis(settings).get(locks.key(settings.redis, "fence", mapping.client))) == recorded + 1


def _dummy_production_rows(settings: Any, client: str) -> int:
    with psycopg.connect(settings.staging.conninfo()) as conn:
        return sum(conn.execute(f"select count(*) from practice.{entity} where client_id = %s",  # noqa: S608
                                (client,)).fetchone()[0] for entity in ("providers", "patients", "appointments"))


def test_same_run_again_takes_the_lock_over_and_fences_out_the_old_try(settings: Any) -> None:
    """Airflow lost ingest's heartbeat and ran it again: the new try takes over at once; the old
    try, still running, can no longer write through dbt or promote."""
    mapping = mapping_for("lock_again")
    found = Practice(settings, mapping.client).write(date(2026, 5, 25), "r1", tables(3, "again"))
    old_try = pipeline.ingest(settings, mapping, found, airflow_run_id="scheduled__2026-05-25T00:00:00+00:00")
    new_try = pipeline.ingest(settings, mapping, found, airflow_run_id="scheduled__2026-05-25T00:00:00+00:00")
    assert new_try.lock.token > old_try.lock.token

    with pytest.raises(TransformFailed) as caught:
        transform(settings, mapping, old_try)
    assert f"fencing token {old_try.lock.token} of client lock_again is stale" in caught.value.output
    assert _dummy_production_rows(settings, mapping.client) == 0
    with pytest.raises(LockLost, match="stale"):
        pipeline.promote(settings, mapping, old_try, airflow_run_id="old")
    pipeline.mark_failed(settings, old_try, "LockLost", airflow_run_id="old")  # its failure callback

    transform(settings, mapping, new_try)
    pipeline.validate(settings, mapping, new_try)
    pipeline.promote(settings, mapping, new_try, airflow_run_id="new")
    assert production_rows(settings, mapping.client, "patients", "last_name")["P2"] == ("Name2-again",)
    assert raw_counts(settings, mapping.client, "person") == {new_try.ingestion_id: 3}
    # The old try's failure did not overwrite the state of the batch the new try was processing.
    assert history(settings, new_try.ingestion_id) == ["PENDING", "PROCESSING"] * 2 + ["SUCCESS"]


def test_lock_held_by_another_run_reschedules_instead_of_failing(settings: Any) -> None:
    from airflow.sdk.exceptions import AirflowRescheduleException

    from clientflow.airflow_edge import LOCK_WAIT, stage

    mapping = mapping_for("lock_resched")
    found = Practice(settings, mapping.client).write(date(2026, 5, 26), "r1", tables(2))
    with psycopg.connect(settings.staging.conninfo()) as conn:
        other = locks.acquire(settings.redis, conn, mapping.client, "backfill__2026-05-20")
    try:
        before = datetime.now(UTC)
        with pytest.raises(AirflowRescheduleException) as caught:
            stage(pipeline.ingest)(settings, mapping, found, airflow_run_id="manual__1")
        assert caught.value.reschedule_date >= before + LOCK_WAIT
        assert raw_counts(settings, mapping.client, "person") == {}
    finally:
        locks.release(settings.redis, other)


def test_dag_run_waits_for_the_lock_without_spending_a_retry(
    settings: Any, airflow_db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run started while a backfill of the same client holds the lock waits for it, then succeeds."""
    from airflow.models.taskreschedule import TaskReschedule
    from airflow.utils.session import create_session

    from clientflow import airflow_edge
    from tests.support.dags import test_client_dag

    monkeypatch.setattr(airflow_edge, "LOCK_WAIT", timedelta(seconds=1))
    mapping = mapping_for("lock_dag")
    Practice(settings, mapping.client).write(date(2026, 5, 27), "r1", tables(3, "dag"))
    with psycopg.connect(settings.staging.conninfo()) as conn:
        backfill = locks.acquire(settings.redis, conn, mapping.client, "backfill__2026-05-26")
    busy: list[datetime] = []
    real_acquire = locks.acquire

    def acquire(*args: Any, **kwargs: Any) -> Any:
        """The real acquire; once the run has found the lock taken twice, the backfill finishes."""
        try:
            return real_acquire(*args, **kwargs)
        except LockBusy:
            busy.append(datetime.now(UTC))
            if len(busy) == 2:
                locks.release(settings.redis, backfill)
            raise

    monkeypatch.setattr(locks, "acquire", acquire)
    dag_run = test_client_dag(mapping, conf={"batch_date": "2026-05-27"})

    assert dag_run.state == "success"
    ingest = dag_run.get_task_instance("ingest")
    assert ingest.try_number == 1  # waiting spent no retry
    assert len(busy) == 2
    with create_session() as session:
        assert len(session.scalars(TaskReschedule.stmt_for_task_instance(ingest)).all()) == 2
    with psycopg.connect(settings.staging.conninfo()) as conn:
        first_write = conn.execute(
            "select min(at) from pipeline.batch_events e join pipeline.batches b using (ingestion_id) "
            "where b.client_name = %s", (mapping.client,)).fetchone()[0]
    assert first_write > busy[-1]  # nothing was written while the other run held the lock
    assert production_rows(settings, mapping.client, "patients", "last_name")["P0"] == ("Name0-dag",)


def test_a_task_cleared_alone_after_its_batch_failed_cannot_write(settings: Any) -> None:
    """The failure callback undid the batch and released its lock; clearing validate (or dbt, or
    promote) alone must not run without the lock on an undone batch. Clearing from ingest works."""
    mapping = mapping_for("lock_cleared")
    found = Practice(settings, mapping.client).write(date(2026, 5, 20), "r1", tables(3))
    batch = pipeline.ingest(settings, mapping, found, airflow_run_id="run_one")
    transform(settings, mapping, batch)
    pipeline.mark_failed(settings, batch, "validate failed", airflow_run_id="run_one")  # the failure callback
    assert not _redis(settings).exists(_lock_key(settings, mapping.client))

    with pytest.raises(locks.LockReleased, match="start the batch again at ingest") as info:
        pipeline.validate(settings, mapping, batch)  # the task cleared on its own
    assert "client=lock_cleared" in str(info.value)
    with pytest.raises(locks.LockReleased):
        pipeline.promote(settings, mapping, batch, airflow_run_id="run_one")
    with pytest.raises(TransformFailed) as dbt_failed:
        transform(settings, mapping, batch)  # dbt's models check the same fence
    assert "was released when its batch failed" in dbt_failed.value.output
    assert production_rows(settings, mapping.client, "patients") == {}
    assert history(settings, batch.require_ingestion_id())[-1] == "FAILED"

    rerun = run_batch(settings, mapping, found, holder="run_one")  # cleared from ingest: a new token
    assert rerun.require_lock().token > batch.require_lock().token
    assert len(production_rows(settings, mapping.client, "patients")) == 3


def test_a_live_holder_keeps_its_lock_past_the_timeout_and_a_dead_one_loses_it(settings: Any) -> None:
    """The renewer a task runs beside its body: the lock outlives its 10 s timeout while the holder
    lives; once it stops (the process died), the lock expires one timeout later."""
    short = settings.redis.model_copy(update={"lock_timeout_seconds": 10})
    client = "renewed"
    with psycopg.connect(settings.staging.conninfo()) as conn:
        lock = locks.acquire(short, conn, client, holder="run-A")
    renewer = locks.Renewer(short, client, "run-A")
    assert renewer.interval == pytest.approx(10 / 3)
    renewer.start()
    try:
        time.sleep(14)  # longer than the timeout
        assert _redis(settings).get(locks.key(short, "lock", client)).decode() == lock.holder
        assert renewer.renewals >= 3
        with psycopg.connect(settings.staging.conninfo()) as conn, pytest.raises(LockBusy):
            locks.acquire(short, conn, client, holder="run-B")
        assert not locks.renew(short, client, "run-B")  # another run's renewer never extends it
    finally:
        renewer.stop()
    renewer.join(5)
    time.sleep(11)  # one timeout after the last renewal
    assert _redis(settings).get(locks.key(short, "lock", client)) is None
    with psycopg.connect(settings.staging.conninfo()) as conn:
        taken = locks.acquire(short, conn, client, holder="run-B")
    assert taken.token > lock.token
    locks.release(short, taken)
