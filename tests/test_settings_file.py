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
