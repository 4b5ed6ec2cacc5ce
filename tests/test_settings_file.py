"""airflow_settings.yaml becomes Airflow connections, placeholders expanded."""

from __future__ import annotations

import json

from clientflow.settings_file import airflow_env, connections


def test_placeholders_expand_from_the_environment() -> None:
    conns = connections(env={"CLIENTFLOW_STAGING_DB": "stg_x", "CLIENTFLOW_S3_PORT": "9999"})
    assert conns["clientflow_staging"]["schema"] == "stg_x"
    assert conns["clientflow_production"]["schema"] == "clientflow_production"
    assert conns["clientflow_s3"]["extra"]["endpoint_url"] == "http://127.0.0.1:9999"


def test_every_connection_the_pipeline_reads_is_defined() -> None:
    from clientflow.config import ConnectionIds

    env = airflow_env(env={})
    for conn_id in ConnectionIds().model_dump().values():
        value = json.loads(env[f"AIRFLOW_CONN_{conn_id.upper()}"])
        assert value["conn_type"]


def test_the_redis_connection_names_its_key_prefix() -> None:
    """Deployments (and test sessions) that share one Redis database keep their locks apart."""
    from clientflow.config import RedisSettings

    for env, prefix in (({}, "clientflow"), ({"CLIENTFLOW_REDIS_KEY_PREFIX": "acme"}, "acme")):
        redis = connections(env=env)["clientflow_redis"]
        settings = RedisSettings.from_connection(redis.get("host"), redis.get("port"), None, redis["extra"])
        assert settings.key_prefix == prefix
