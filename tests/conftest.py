"""Shared fixtures (never import this module from a test: it sets ports at import time): real PostgreSQL, Redis, moto's S3 server and an SMTP server, all on loopback.

The environment is set at import time, before Airflow is imported anywhere, so Airflow's
configuration (a throwaway SQLite metadata database) and connections point at this session's
own databases, bucket and ports. Every database this session creates is dropped at the end.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
ADMIN_DSN = os.environ.get(
    "CLIENTFLOW_ADMIN_DSN", f"postgresql://postgres@127.0.0.1:{os.environ.get('CLIENTFLOW_PG_PORT', '5432')}/postgres"
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


SESSION = uuid.uuid4().hex[:8]
TMP = Path(tempfile.mkdtemp(prefix=f"clientflow-test-{SESSION}-"))
S3_PORT = _free_port()
SMTP_PORT = _free_port()
os.environ.update(
    {
        "CLIENTFLOW_STAGING_DB": f"cf_{SESSION}_staging",
        "CLIENTFLOW_PRODUCTION_DB": f"cf_{SESSION}_production",
        "CLIENTFLOW_S3_PORT": str(S3_PORT),
        "CLIENTFLOW_SMTP_PORT": str(SMTP_PORT),
        "CLIENTFLOW_BUCKET": f"landing-{SESSION}",
        "CLIENTFLOW_REDIS_DB": "13",
        "CLIENTFLOW_REDIS_KEY_PREFIX": f"clientflow-test-{SESSION}",  # test sessions may share the database
        "CLIENTFLOW_TEST_TMP": str(TMP),  # the session's own temporary files, removed at its end
        "AIRFLOW_HOME": str(TMP / "airflow"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
        "AIRFLOW__CORE__UNIT_TEST_MODE": "True",
        "AWS_ACCESS_KEY_ID": "local-access-key",
        "AWS_SECRET_ACCESS_KEY": "local-secret-key",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AIRFLOW__COSMOS__ENABLE_TELEMETRY": "False",
        "AIRFLOW__COSMOS__CACHE_DIR": str(TMP / "cosmos"),
        "DO_NOT_TRACK": "1",
    }
)
sys.path.insert(0, str(ROOT))

from clientflow.settings_file import airflow_env  # noqa: E402

os.environ.update(airflow_env())


def _wait_port(port: int, proc: subprocess.Popen[bytes], what: str) -> None:
    from tests.support.net import wait_port

    try:
        wait_port(port, proc)
    except RuntimeError as exc:
        raise RuntimeError(f"{what}: {exc}") from None


@pytest.fixture(scope="session", autouse=True)
def dbt_forkserver() -> Iterator[None]:
    """The session's dbt fork server (clientflow/transform/dbt_forkserver.py), as the local stack
    runs one: every dbt run of the tests (tests/support/transform.py, and Cosmos' under dag.test)
    goes through dbt_scrubbed, which uses it once its socket is up and starts dbt on its own
    before. Not waited for: dbt takes a few seconds to import."""
    proc = subprocess.Popen(
        [str(ROOT / ".venv-dbt" / "bin" / "python"), str(ROOT / "clientflow" / "transform" / "dbt_forkserver.py"),
         str(TMP / "dbt.sock")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    os.environ["CLIENTFLOW_DBT_FORKSERVER"] = str(TMP / "dbt.sock")
    yield
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    proc = subprocess.Popen(
        [str(VENV_BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(S3_PORT)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    _wait_port(S3_PORT, proc, "moto server")
    yield f"http://127.0.0.1:{S3_PORT}"
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="session")
def smtp_mailbox() -> Iterator[Path]:
    """A real SMTP server (aiosmtpd) that appends every message to an mbox file."""
    box = TMP / "maildir"
    proc = subprocess.Popen(
        [str(VENV_BIN / "python"), "-m", "aiosmtpd", "-n", "-l", f"127.0.0.1:{SMTP_PORT}",
         "-c", "aiosmtpd.handlers.Mailbox", str(box)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    _wait_port(SMTP_PORT, proc, "SMTP server")
    yield box
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="session")
def databases() -> Iterator[dict[str, str]]:
    from clientflow import bootstrap

    staging, production = os.environ["CLIENTFLOW_STAGING_DB"], os.environ["CLIENTFLOW_PRODUCTION_DB"]
    bootstrap.bootstrap(ADMIN_DSN, staging, production)
    yield {"staging": staging, "production": production}
    bootstrap.drop(ADMIN_DSN, staging, production)


@pytest.fixture(scope="session")
def staging_owner(databases: dict[str, str]) -> str:
    """The staging database as the owner of its ledger and dummy production: for the tests that
    change their DDL, which none of the pipeline's roles may (clientflow.bootstrap)."""
    import psycopg

    from clientflow.bootstrap import OWNER_ROLE

    return psycopg.conninfo.make_conninfo(ADMIN_DSN, dbname=databases["staging"], options=f"-c role={OWNER_ROLE}")


@pytest.fixture(scope="session")
def settings(s3_server: str, databases: dict[str, str]) -> Iterator[Any]:
    from clientflow.config import PipelineSettings, PostgresSettings, RedisSettings, S3Settings

    s3 = S3Settings(bucket=os.environ["CLIENTFLOW_BUCKET"], endpoint_url=s3_server,
                    access_key_id="local-access-key", secret_access_key="local-secret-key")
    s3.client().create_bucket(Bucket=s3.bucket)
    # Keys of this session's own (two clones' test sessions may share one Redis; the DAGs run by
    # dag.test() read the same prefix from airflow_settings.yaml), removed at the end.
    redis_settings = RedisSettings(url="redis://127.0.0.1:6379/13", key_prefix=os.environ["CLIENTFLOW_REDIS_KEY_PREFIX"])
    yield PipelineSettings(
        staging=PostgresSettings(dbname=databases["staging"], user="clientflow_loader",
                                 password="local-only-loader"),
        production=PostgresSettings(dbname=databases["production"], user="clientflow_promoter",
                                    password="local-only-promoter"),
        s3=s3,
        redis=redis_settings,
    )
    import redis

    with redis.Redis.from_url(redis_settings.url.get_secret_value()) as server:
        for key in server.scan_iter(match=f"{redis_settings.key_prefix}:*"):
            server.delete(key)


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """Airflow's metadata database (SQLite), migrated once per session."""
    subprocess.run([str(VENV_BIN / "airflow"), "db", "migrate"], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return Path(os.environ["AIRFLOW_HOME"])


@pytest.fixture(scope="session")
def admin_dsn() -> str:
    return ADMIN_DSN


@pytest.fixture
def scratch_db() -> Iterator[str]:
    """An empty database for one test; dropped afterwards."""
    import psycopg
    from psycopg import sql

    name = f"cf_{SESSION}_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        conn.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
    yield psycopg.conninfo.make_conninfo(ADMIN_DSN, dbname=name)
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        conn.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    shutil.rmtree(TMP, ignore_errors=True)
