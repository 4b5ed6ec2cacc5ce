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
    sslmode: str | None = None
    """libpq's ``sslmode``: ``verify-full`` (with ``sslrootcert``) checks the server's certificate
    and host name; unset, libpq's default (``prefer``)."""
    sslrootcert: str | None = None
    """The CA certificate file that signed the server's certificate."""

    @classmethod
    def from_connection(cls, host: str | None, port: int | str | None, schema: str | None, login: str | None,
                        password: str | None, extra: dict[str, Any] | None = None) -> PostgresSettings:
        """From an Airflow connection's fields (or airflow_settings.yaml's); TLS from its extras
        ``sslmode`` and ``sslrootcert``, as the Postgres provider names them."""
        extra = extra or {}
        return cls(host=host or "127.0.0.1", port=int(port or 5432), dbname=schema or "", user=login or "",
                   password=SecretStr(password) if password else None, sslmode=extra.get("sslmode"),
                   sslrootcert=extra.get("sslrootcert"))

    def conninfo(self) -> str:
        secret = self.password.get_secret_value() if self.password else None
        tls = {k: v for k, v in (("sslmode", self.sslmode), ("sslrootcert", self.sslrootcert)) if v}
        return make_conninfo(
            host=self.host, port=self.port, dbname=self.dbname, user=self.user,
            password=secret, application_name=self.application_name, connect_timeout=10, **tls,
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
    ssl_ca_certs: str | None = None
    """With a ``rediss://`` URL: the CA certificate file that signed the server's certificate (the
    certificate and its host name are then verified); unset, the system's CAs."""

    @classmethod
    def from_connection(cls, host: str | None, port: int | str | None, password: str | None,
                        extra: dict[str, Any] | None = None) -> RedisSettings:
        """From an Airflow Redis connection: extras ``db``, and ``ssl`` (true: TLS, ``rediss://``)
        with ``ssl_ca_certs``, as the Redis provider names them; ``lock_timeout_seconds`` and
        ``key_prefix`` (ours: deployments that share a Redis database keep their keys apart)."""
        extra = extra or {}
        tls = str(extra.get("ssl", "")).lower() in ("1", "true", "yes")
        auth = f":{password}@" if password else ""
        url = f"{'rediss' if tls else 'redis'}://{auth}{host or '127.0.0.1'}:{port or 6379}/{extra.get('db', 0)}"
        timeout = int(extra.get("lock_timeout_seconds") or cls.model_fields["lock_timeout_seconds"].default)
        return cls(url=SecretStr(url), ssl_ca_certs=extra.get("ssl_ca_certs") if tls else None,
                   lock_timeout_seconds=timeout,
                   key_prefix=str(extra.get("key_prefix") or cls.model_fields["key_prefix"].default))

    def client_options(self) -> dict[str, Any]:
        """Keyword arguments of ``redis.Redis.from_url`` besides the URL."""
        options: dict[str, Any] = {"socket_timeout": 10, "socket_connect_timeout": 10}
        if self.url.get_secret_value().startswith("rediss://"):
            options |= {"ssl_cert_reqs": "required", "ssl_check_hostname": True}
            if self.ssl_ca_certs:
                options["ssl_ca_certs"] = self.ssl_ca_certs
        return options


class ConnectionIds(BaseModel):
    """Airflow connection ids the pipeline reads its settings from."""

    model_config = ConfigDict(frozen=True)

    staging: str = "clientflow_staging"
    """The staging database as the loader role: every Python task (raw load, ledger, validation,
    the staging side of the promotion, the undo of dummy production) and the command line."""
    transformer: str = "clientflow_transformer"
    """The staging database as the transformer role: dbt (Cosmos's profile), nothing else."""
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
            return PostgresSettings.from_connection(c.get("host"), c.get("port"), c.get("schema"), c.get("login"),
                                                    c.get("password"), c.get("extra"))

        s3, redis = conns[ids.s3], conns[ids.redis]
        extra = s3.get("extra", {})
        return cls(
            staging=pg(ids.staging), production=pg(ids.production),
            s3=S3Settings(bucket=extra["bucket"], endpoint_url=extra.get("endpoint_url"),
                          region_name=extra.get("region_name", "us-east-1"),
                          access_key_id=s3.get("login") or None, secret_access_key=s3.get("password") or None),
            redis=RedisSettings.from_connection(redis.get("host"), redis.get("port"), redis.get("password"),
                                                redis.get("extra")),
        )

    @classmethod
    def from_airflow(cls, ids: ConnectionIds | None = None) -> PipelineSettings:
        """Read the connections at task run time (never at DAG parse time)."""
        from airflow.sdk import Connection

        ids = ids or ConnectionIds()

        def pg(conn_id: str) -> PostgresSettings:
            conn = Connection.get(conn_id)
            return PostgresSettings.from_connection(conn.host, conn.port, conn.schema, conn.login, conn.password,
                                                    conn.extra_dejson)

        s3 = Connection.get(ids.s3)
        extra = s3.extra_dejson
        redis = Connection.get(ids.redis)
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
            redis=RedisSettings.from_connection(redis.host, redis.port, redis.password, redis.extra_dejson),
        )
