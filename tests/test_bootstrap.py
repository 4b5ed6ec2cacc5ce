"""clientflow.bootstrap on the real PostgreSQL: bootstraps of one cluster at the same time.

Roles, their passwords and the parameter grant belong to the cluster: parallel test workers, two
checkouts' stacks, or a container's init beside a person bootstrap at once.
"""

from __future__ import annotations

import threading
import uuid

import psycopg

from clientflow import bootstrap

ROUNDS, AT_ONCE = 3, 4


def _bootstrap_at_once(admin_dsn: str, pairs: list[tuple[str, str]]) -> list[str]:
    """Bootstrap each (staging, production) pair in a thread of its own, all released together;
    returns the errors, and drops the databases."""
    start, errors = threading.Barrier(len(pairs)), []

    def run(staging: str, production: str) -> None:
        start.wait()
        try:
            bootstrap.bootstrap(admin_dsn, staging, production)
        except Exception as exc:  # noqa: BLE001 (collected: the assertion names them)
            errors.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=run, args=pair) for pair in pairs]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
    finally:
        bootstrap.drop(admin_dsn, *(name for pair in pairs for name in pair))
    return errors


def test_bootstraps_at_the_same_time_all_succeed(admin_dsn: str) -> None:
    for _ in range(ROUNDS):
        pairs = [(f"cf_boot_{uuid.uuid4().hex[:8]}_staging", f"cf_boot_{uuid.uuid4().hex[:8]}_production")
                 for _ in range(AT_ONCE)]
        assert _bootstrap_at_once(admin_dsn, pairs) == []
    with psycopg.connect(admin_dsn) as admin:
        found = {row[0] for row in admin.execute("select rolname from pg_roles where rolname like 'clientflow_%'")}
    assert {bootstrap.OWNER_ROLE, *bootstrap.LOGIN_ROLES} <= found
