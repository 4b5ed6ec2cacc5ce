"""One job per client at a time: a Redis lock with a fencing token, checked by PostgreSQL.

Redis gives a fast, expiring lock (``lock_timeout_seconds``: a crashed run's lock frees itself).
Because a lock can expire while its holder still runs (a lost heartbeat, a long GC pause), every
write transaction also checks, in PostgreSQL, that the holder's token is still the newest one for
the client (``check``, which holds the fence row until commit; dbt models do the same in a
pre-hook, ``dbt/macros/fence_check.sql``); a stale holder's commit is refused.
The lock spans ingest -> transform -> validate -> promote of one batch; it is released by
``promote``, by a failing ``ingest`` and by the failure callback (``pipeline.mark_failed``).

While a task of the run that holds the lock is alive, a :class:`Renewer` thread in its process
resets the lock's expiry every third of ``lock_timeout_seconds``: a batch whose load and transform
outlast the timeout keeps its lock, while the lock of a run whose process died expires one timeout
after its last renewal.
"""

from __future__ import annotations

import logging
import threading
import uuid
from typing import Any

import psycopg
import redis

from clientflow.batch import ClientLock
from clientflow.config import RedisSettings
from clientflow.errors import PermanentError, TransientError, Where

log = logging.getLogger(__name__)

# Release only if we still hold it (compare-and-delete).
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""

# Take the lock if it is free, or if the same run (ARGV[3]) holds it: that is the same task run
# again after Airflow lost its heartbeat, and the new try takes over at once instead of waiting for
# the timeout; the old try's writes then fail the fence check. Values are "token:uuid:holder".
_ACQUIRE = """
local current = redis.call('get', KEYS[1])
if current and select(3, string.find(current, '^[^:]*:[^:]*:(.*)$')) ~= ARGV[3] then return 0 end
redis.call('set', KEYS[1], ARGV[1], 'EX', ARGV[2])
return 1
"""


# The client's next fencing token, above ARGV[1] (the newest token PostgreSQL recorded).
_NEXT_TOKEN = """
local token = redis.call('incr', KEYS[1])
if token <= tonumber(ARGV[1]) then
  token = tonumber(ARGV[1]) + 1
  redis.call('set', KEYS[1], token)
end
return token
"""


class LockBusy(TransientError):
    """Another run of the client holds the lock: wait and try again (not a failure)."""


class LockLost(PermanentError):
    """A newer run of the client took the lock over; this run must not write anything more."""


class LockReleased(LockLost):
    """The run's batch failed and its lock was released (a task of it cleared on its own)."""


def key(settings: RedisSettings, kind: str, name: str) -> str:
    """The Redis key of a client's ``lock`` or ``fence`` counter, or of a batch's ``promoted`` mark."""
    if kind not in ("lock", "fence", "promoted"):
        raise ValueError(f"not a clientflow Redis key kind: {kind}")
    return f"{settings.key_prefix}:{kind}:{name}"


def _client(settings: RedisSettings) -> redis.Redis:
    return redis.Redis.from_url(settings.url.get_secret_value(), **settings.client_options())


def acquire(settings: RedisSettings, conn: psycopg.Connection[Any], client: str, holder: str) -> ClientLock:
    """Take the client's lock and a new fencing token, or raise :class:`LockBusy`.

    ``holder`` names the run (the Airflow run id): a holder that already has the lock takes it
    over with a newer token. The fence row is committed by the caller's transaction.
    """
    r = _client(settings)
    lock_key = key(settings, "lock", client)
    # PostgreSQL is the source of truth: a Redis that lost its counter (restarted without
    # persistence, failed over, flushed) must not hand out a token the ledger already saw.
    (floor,) = conn.execute("select coalesce(max(token), 0) from pipeline.client_fence where client_name = %s",
                            (client,)).fetchone() or (0,)
    token = int(r.eval(_NEXT_TOKEN, 1, key(settings, "fence", client), floor))
    value = f"{token}:{uuid.uuid4().hex}:{holder}"
    if not r.eval(_ACQUIRE, 1, lock_key, value, settings.lock_timeout_seconds, holder):
        raise LockBusy(
            "another run holds this client's lock; waiting for it",
            Where(client=client),
            kept="nothing was changed",
        )
    try:
        conn.execute(
            """
            insert into pipeline.client_fence (client_name, token, holder) values (%s, %s, %s)
            on conflict (client_name) do update set token = excluded.token, holder = excluded.holder,
                acquired_at = clock_timestamp(), released = false
            where pipeline.client_fence.token < excluded.token
            """,
            (client, token, holder),
        )
    except BaseException:
        r.eval(_RELEASE, 1, lock_key, value)  # don't leave the lock to its timeout
        raise
    return ClientLock(client, token, value)


STALE_FENCE = "CF001"
"""SQLSTATE of ``pipeline.check_fence`` (include/sql/pipeline.sql) for a token that is not current."""
RELEASED_FENCE = "CF002"
"""SQLSTATE of ``pipeline.check_fence`` for the token of a run whose batch failed."""


def check(conn: psycopg.Connection[Any], lock: ClientLock) -> None:
    """Inside a write transaction: refuse if a newer holder took over. Holds the row lock."""
    try:
        conn.execute("select pipeline.check_fence(%s, %s)", (lock.client, lock.token))
    except psycopg.Error as exc:
        if exc.sqlstate == RELEASED_FENCE:
            raise LockReleased(
                f"this run's batch failed and its lock (token {lock.token}) was released, and the batch was "
                "undone in dummy production: a task cleared on its own cannot go on; start the batch again at "
                "ingest (clear the run from its ingest task, or trigger the DAG for the batch)",
                Where(client=lock.client),
                kept="nothing of this run was written after the failure",
            ) from None
        if exc.sqlstate != STALE_FENCE:
            raise
        raise LockLost(
            f"fencing token {lock.token} is stale (current {exc.diag.message_detail}): a newer run "
            "took this client's lock over, so this run stopped before writing",
            Where(client=lock.client),
            kept="nothing of this run was committed after the takeover; the newer run carries on",
        ) from None


def retire(conn: psycopg.Connection[Any], lock: ClientLock) -> None:
    """The run's batch failed: its token may not write again, even if no other run takes the client."""
    conn.execute("update pipeline.client_fence set released = true where client_name = %s and token = %s",
                 (lock.client, lock.token))


# Reset the expiry if the lock is held by this run (ARGV[1]); 1 if it was.
_RENEW = """
local current = redis.call('get', KEYS[1])
if current and select(3, string.find(current, '^[^:]*:[^:]*:(.*)$')) == ARGV[1] then
  redis.call('expire', KEYS[1], ARGV[2])
  return 1
end
return 0
"""


def renew(settings: RedisSettings, client: str, holder: str) -> bool:
    """Push the lock's expiry one timeout ahead if ``holder`` (an Airflow run id) holds it."""
    return bool(_client(settings).eval(_RENEW, 1, key(settings, "lock", client), holder,
                                       settings.lock_timeout_seconds))


class Renewer(threading.Thread):
    """Renews the client's lock for ``holder`` until :meth:`stop` (or the process's end: a daemon)."""

    def __init__(self, settings: RedisSettings, client: str, holder: str) -> None:
        super().__init__(name=f"clientflow-lock-renewer-{client}", daemon=True)
        self.settings, self.client, self.holder = settings, client, holder
        self.interval = max(1.0, settings.lock_timeout_seconds / 3)
        self.renewals = 0
        self._stopped = threading.Event()

    def run(self) -> None:
        while not self._stopped.wait(self.interval):
            try:
                self.renewals += renew(self.settings, self.client, self.holder)
            except redis.RedisError as exc:  # Redis away: try again next time; the fence stays the guard
                log.warning("[client=%s] could not renew the client lock: %s", self.client, type(exc).__name__)

    def stop(self) -> None:
        self._stopped.set()


def release(settings: RedisSettings, lock: ClientLock) -> None:
    r = _client(settings)
    r.eval(_RELEASE, 1, key(settings, "lock", lock.client), lock.holder)


def remember_promoted(settings: RedisSettings, ingestion_id: str) -> None:
    """Fast-path idempotency key; PostgreSQL's ledger stays the source of truth."""
    _client(settings).set(key(settings, "promoted", ingestion_id), "1", ex=30 * 86400)


def known_promoted(settings: RedisSettings, ingestion_id: str) -> bool:
    try:
        return bool(_client(settings).exists(key(settings, "promoted", ingestion_id)))
    except redis.RedisError:
        return False  # Redis is only a cache here: fall back to the ledger.
