"""Typed settings, validated once at the edge and passed down explicitly.

Inside Airflow they are read from the connections named in :class:`ConnectionIds` (defined in
``airflow_settings.yaml`` for the local stack); tests and scripts build them directly.
"""

from __future__ import annotations

from typing import Any

from psycopg.conninfo import make_conninfo
from pydantic import BaseModel, ConfigDict, Field, SecretStr


class PostgresSettings(BaseModel):
    """One PostgreSQL database the pipeline connects to."""

    model_config = ConfigDict(frozen=True)

    host: str = "127.0.0.1"
    port: int = 5432
    dbname: str
    user: str
    password: SecretStr | None = None
    application_name: str = "clientflow"

    def conninfo(self) -> str:
        secret = self.password.get_secret_value() if self.password else None
        return make_conninfo(
            host=self.host, port=self.port, dbname=self.dbname, user=self.user,
            password=secret, application_name=self.application_name, connect_timeout=10,
        )

    def describe(self) -> str:
        """Safe to log: no password."""
        return f"{self.user}@{self.host}:{self.port}/{self.dbname}"


class S3Settings(BaseModel):
    """The landing bucket (any S3-compatible endpoint)."""

    model_config = ConfigDict(frozen=True)

    bucket: str
    endpoint_url: str | None = None
    region_name: str = "us-east-1"
    access_key_id: SecretStr | None = None
    secret_access_key: SecretStr | None = None

    def client(self, service: str = "s3") -> Any:
        """A boto3 client of the endpoint: S3, or another service it serves (``sqs``)."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            service,
            endpoint_url=self.endpoint_url,
            region_name=self.region_name,
            aws_access_key_id=self.access_key_id.get_secret_value() if self.access_key_id else None,
            aws_secret_access_key=(
                self.secret_access_key.get_secret_value() if self.secret_access_key else None
            ),
            config=Config(retries={"max_attempts": 5, "mode": "standard"}),
        )


class RedisSettings(BaseModel):
    model_config = ConfigDict(frozen=True)

    url: SecretStr = SecretStr("redis://127.0.0.1:6379/0")
    key_prefix: str = "clientflow"
    lock_timeout_seconds: int = Field(default=3600, ge=10)


class ConnectionIds(BaseModel):
    """Airflow connection ids the pipeline reads its settings from."""

    model_config = ConfigDict(frozen=True)

    staging: str = "clientflow_staging"
    production: str = "clientflow_production"
    s3: str = "clientflow_s3"
    redis: str = "clientflow_redis"
    smtp: str = "smtp_default"
    status: str = "clientflow_status"
    """The read-only role of the status page and the metrics (schema pipeline only)."""


class PipelineSettings(BaseModel):
    """Everything a pipeline task needs to reach its services."""

    model_config = ConfigDict(frozen=True)

    staging: PostgresSettings
    production: PostgresSettings
    s3: S3Settings
    redis: RedisSettings = RedisSettings()

    @classmethod
    def from_settings_file(cls, ids: ConnectionIds | None = None) -> PipelineSettings:
        """The local stack's connections (airflow_settings.yaml, placeholders from the
        environment): what the ``clientflow`` command line uses outside Airflow."""
        from clientflow.settings_file import connections

        ids, conns = ids or ConnectionIds(), connections()

        def pg(conn_id: str) -> PostgresSettings:
            c = conns[conn_id]
            return PostgresSettings(host=c.get("host", "127.0.0.1"), port=int(c.get("port", 5432)),
                                    dbname=c.get("schema", ""), user=c.get("login", ""),
                                    password=c.get("password") or None)

        s3, redis = conns[ids.s3], conns[ids.redis]
        extra = s3.get("extra", {})
        return cls(
            staging=pg(ids.staging), production=pg(ids.production),
            s3=S3Settings(bucket=extra["bucket"], endpoint_url=extra.get("endpoint_url"),
                          region_name=extra.get("region_name", "us-east-1"),
                          access_key_id=s3.get("login") or None, secret_access_key=s3.get("password") or None),
            redis=RedisSettings(url=SecretStr(f"redis://{redis.get('host', '127.0.0.1')}:{redis.get('port', 6379)}/"
                                              f"{redis.get('extra', {}).get('db', 0)}")),
        )

    @classmethod
    def from_airflow(cls, ids: ConnectionIds | None = None) -> PipelineSettings:
        """Read the connections at task run time (never at DAG parse time)."""
        from airflow.sdk import Connection

        ids = ids or ConnectionIds()

        def pg(conn_id: str) -> PostgresSettings:
            conn = Connection.get(conn_id)
            return PostgresSettings(
                host=conn.host or "127.0.0.1", port=conn.port or 5432, dbname=conn.schema or "",
                user=conn.login or "", password=conn.password or None,
            )

        s3 = Connection.get(ids.s3)
        extra = s3.extra_dejson
        redis = Connection.get(ids.redis)
        redis_db = redis.extra_dejson.get("db", 0)
        auth = f":{redis.password}@" if redis.password else ""
        return cls(
            staging=pg(ids.staging),
            production=pg(ids.production),
            s3=S3Settings(
                bucket=extra["bucket"],
                endpoint_url=extra.get("endpoint_url"),
                region_name=extra.get("region_name", "us-east-1"),
                access_key_id=s3.login or None,
                secret_access_key=s3.password or None,
            ),
            redis=RedisSettings(
                url=SecretStr(f"redis://{auth}{redis.host or '127.0.0.1'}:{redis.port or 6379}/{redis_db}")
            ),
        )
