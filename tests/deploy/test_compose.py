"""deploy/docker-compose.yaml is a valid Compose file that runs the pipeline on the CeleryExecutor.

`docker compose config` needs a Docker engine, which our machines lack: the file is validated
against the Compose Specification's JSON Schema (compose-spec.json beside this file, its source in
compose-spec.SOURCE), with its variables interpolated as compose does. The rest checks what a
schema cannot: one image and one executor for every Airflow service, the worker count, the
connections the pipeline reads, and no secret beyond obviously local defaults.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest

from clientflow.bootstrap import LOADER_ROLE, PROMOTER_ROLE, STATUS_ROLE, TRANSFORMER_ROLE
from clientflow.config import ConnectionIds
from clientflow.settings_file import connections as local_connections
from tests.support.deploy import COMPOSE_FILE, ROOT, compose, compose_raw, variables

SCHEMA = Path(__file__).with_name("compose-spec.json")
AIRFLOW_SERVICES = {
    "airflow-init",
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    "airflow-worker",
}
SECRET_NAME = re.compile(r"(PASSWORD|SECRET|_KEY|TOKEN)$")


@pytest.fixture(scope="module")
def services() -> dict[str, dict[str, Any]]:
    found = compose()["services"]
    assert isinstance(found, dict)
    return found


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    assert isinstance(env, dict), "environment as a map"
    return {k: str(v) for k, v in env.items()}


def _connections(service: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """conn_id -> the connection's JSON, from the service's AIRFLOW_CONN_* variables."""
    return {
        name.removeprefix("AIRFLOW_CONN_").lower(): json.loads(value)
        for name, value in _env(service).items()
        if name.startswith("AIRFLOW_CONN_")
    }


def test_the_file_is_valid_against_the_compose_specification() -> None:
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    validator = jsonschema.validators.validator_for(schema)(schema)
    for doc in (compose(), compose({"CLIENTFLOW_WORKERS": "6", "POSTGRES_PASSWORD": "from-a-vault"})):
        errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]
        assert errors == []


def test_the_schema_check_finds_a_misspelt_key() -> None:
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    doc = compose()
    doc["services"]["airflow-worker"]["helthcheck"] = doc["services"]["airflow-worker"].pop("healthcheck")
    assert not jsonschema.validators.validator_for(schema)(schema).is_valid(doc)


def test_every_variable_has_a_default_so_no_env_file_is_needed() -> None:
    found = variables(compose_raw())
    assert len(found) > 10
    assert [v.name for v in found if v.default is None] == []


def test_every_airflow_service_runs_the_one_image_with_the_celery_executor(services: dict[str, Any]) -> None:
    airflow = {name: s for name, s in services.items() if name.startswith("airflow-")}
    assert set(airflow) == AIRFLOW_SERVICES
    assert {s["image"] for s in airflow.values()} == {services["smtp"]["image"]} == {"clientflow:0.1.0"}
    builds = {(s["build"]["context"], s["build"]["dockerfile"]) for s in airflow.values()}
    assert len(builds) == 1
    ((context, dockerfile),) = builds
    assert (COMPOSE_FILE.parent / context / dockerfile).resolve() == ROOT / "Dockerfile"
    assert {_env(s)["AIRFLOW__CORE__EXECUTOR"] for s in airflow.values()} == {"CeleryExecutor"}
    # One metadata database, one broker, one JWT secret: otherwise they are separate installations.
    for key in (
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
        "AIRFLOW__CELERY__BROKER_URL",
        "AIRFLOW__API_AUTH__JWT_SECRET",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL",
    ):
        assert len({_env(s)[key] for s in airflow.values()}) == 1, key
    commands = {name: s.get("command") for name, s in airflow.items()}
    assert commands["airflow-apiserver"][-1].endswith("&& exec airflow api-server")
    assert commands["airflow-scheduler"] == "scheduler"
    assert (
        commands["airflow-dag-processor"] == "dag-processor" and commands["airflow-triggerer"] == "triggerer"
    )
    assert (
        urlsplit(_env(airflow["airflow-worker"])["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"]).hostname
        == "airflow-apiserver"
    )


def test_the_image_tag_is_the_project_version(services: dict[str, Any]) -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]
    assert services["airflow-worker"]["image"] == f"clientflow:{version}"


def test_the_celery_workers_and_their_number(services: dict[str, Any]) -> None:
    worker = services["airflow-worker"]
    assert worker["command"] == "celery worker"
    assert int(worker["deploy"]["replicas"]) == 2
    assert int(compose({"CLIENTFLOW_WORKERS": "5"})["services"]["airflow-worker"]["deploy"]["replicas"]) == 5
    assert int(_env(worker)["AIRFLOW__CELERY__WORKER_CONCURRENCY"]) == 4
    # the workers preload (tests/test_executor.py runs this configuration)
    assert _env(worker)["AIRFLOW__CELERY__CELERY_CONFIG_OPTIONS"] == "clientflow.celery_config.CELERY_CONFIG"
    assert "container_name" not in worker, "a fixed container name allows one replica only"
    broker = urlsplit(_env(worker)["AIRFLOW__CELERY__BROKER_URL"])
    assert broker.scheme == "redis" and broker.hostname in services


def test_the_connections_are_the_ones_the_pipeline_reads(services: dict[str, Any]) -> None:
    expected = set(ConnectionIds().model_dump().values())
    local = local_connections(env={})
    for name in AIRFLOW_SERVICES:
        conns = _connections(services[name])
        assert set(conns) == expected, name
        # the same connection types as the local stack's airflow_settings.yaml
        assert {cid: c["conn_type"] for cid, c in conns.items()} == {
            cid: local[cid]["conn_type"] for cid in expected
        }


def test_the_connections_point_at_the_services_of_the_file(services: dict[str, Any]) -> None:
    ids, conns = ConnectionIds(), _connections(services["airflow-worker"])
    for cid in (ids.staging, ids.transformer, ids.production, ids.redis, ids.smtp):
        assert conns[cid]["host"] in services, cid
    s3 = conns[ids.s3]
    assert urlsplit(s3["extra"]["endpoint_url"]).hostname == "minio"
    # the bucket the pipeline reads is the one minio-init creates
    assert s3["extra"]["bucket"] == _env(services["minio-init"])["CLIENTFLOW_BUCKET"]
    make_bucket = " ".join(compose_raw()["services"]["minio-init"]["command"])
    assert 'mc mb --ignore-existing "landing/$${CLIENTFLOW_BUCKET}"' in make_bucket
    minio = _env(services["minio"])
    assert (s3["login"], s3["password"]) == (minio["MINIO_ROOT_USER"], minio["MINIO_ROOT_PASSWORD"])
    # The roles' passwords are the ones airflow-init's bootstrap gives them.
    init = _env(services["airflow-init"])
    assert conns[ids.staging]["password"] == init["CLIENTFLOW_LOADER_PASSWORD"]
    assert conns[ids.transformer]["password"] == init["CLIENTFLOW_TRANSFORMER_PASSWORD"]
    assert conns[ids.production]["password"] == init["CLIENTFLOW_PROMOTER_PASSWORD"]
    assert conns[ids.status]["password"] == init["CLIENTFLOW_STATUS_PASSWORD"]
    assert {cid: conns[cid]["login"] for cid in (ids.staging, ids.transformer, ids.production, ids.status)} == {
        ids.staging: LOADER_ROLE, ids.transformer: TRANSFORMER_ROLE, ids.production: PROMOTER_ROLE,
        ids.status: STATUS_ROLE,
    }
    assert int(conns[ids.redis]["extra"]["db"]) != int(
        urlsplit(_env(services["airflow-worker"])["AIRFLOW__CELERY__BROKER_URL"]).path.strip("/")
    ), "the client locks and Celery's broker share a Redis database"


def test_the_ui_login_is_copied_where_airflow_reads_it(services: dict[str, Any]) -> None:
    api = services["airflow-apiserver"]
    env = _env(api)
    assert env["AIRFLOW__CORE__AUTH_MANAGER"].endswith(".SimpleAuthManager")
    (config,) = api["configs"]
    copy = re.fullmatch(r"cp (\S+) (\S+) && exec airflow api-server", api["command"][-1])
    assert copy, api["command"]
    source, target = copy.groups()
    assert (source, target) == (config["target"], env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"])
    users = dict(u.split(":") for u in env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"].split(","))
    passwords = json.loads(compose()["configs"][config["source"]]["content"])
    assert set(passwords) == set(users) == {"admin"}


def _one_shots(services: dict[str, Any]) -> set[str]:
    return {
        dep
        for s in services.values()
        for dep, cond in (s.get("depends_on") or {}).items()
        if cond.get("condition") == "service_completed_successfully"
    }


def test_every_long_running_service_has_a_healthcheck(services: dict[str, Any]) -> None:
    one_shots = _one_shots(services)
    assert one_shots == {"airflow-init", "minio-init"}
    missing = [
        n for n, s in services.items() if n not in one_shots and not s.get("healthcheck", {}).get("test")
    ]
    assert missing == []
    assert services["airflow-init"]["restart"] == "no"


def test_airflow_services_wait_for_the_databases_and_init(services: dict[str, Any]) -> None:
    for name in AIRFLOW_SERVICES - {"airflow-init"}:
        depends = services[name]["depends_on"]
        assert depends["airflow-init"]["condition"] == "service_completed_successfully", name
        assert depends["postgres"]["condition"] == depends["redis"]["condition"] == "service_healthy", name
    assert services["airflow-init"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    init = " ".join(services["airflow-init"]["command"])
    assert init.index("airflow db migrate") < init.index("python -m clientflow.bootstrap")


def test_published_ports_are_on_loopback_only(services: dict[str, Any]) -> None:
    ports = [str(p) for s in services.values() for p in s.get("ports", [])]
    assert ports and [p for p in ports if not p.startswith("127.0.0.1:")] == []


def plaintext_secrets(raw: dict[str, Any]) -> list[str]:
    """Secrets the file would hand out as written: a secret-named variable whose default is not
    empty or obviously local ("local..."), a secret-named setting or a URL or connection password
    that is not a ${VARIABLE} (or $${VARIABLE} for the shell)."""
    found = [
        f"default of {v.name}"
        for v in variables(raw)
        if SECRET_NAME.search(v.name) and v.default and not v.default.startswith("local")
    ]
    placeholder = re.compile(r"\$?\$\{[A-Za-z_][A-Za-z0-9_]*(:-[^}]*)?\}")
    for name, service in raw["services"].items():
        env = service.get("environment") or {}
        for key, value in env.items():
            if SECRET_NAME.search(key) and not placeholder.fullmatch(str(value)):
                found.append(f"{name}: {key}")
            if key.startswith("AIRFLOW_CONN_") and "password" in json.loads(value):
                if not placeholder.fullmatch(json.loads(value)["password"]):
                    found.append(f"{name}: {key} password")
        for text in [str(v) for v in env.values()] + [str(service.get("command", ""))]:
            for password in re.findall(r"://[^:/@\s\"]+:([^@\s\"]+)@", text):
                if not placeholder.fullmatch(password):
                    found.append(f"{name}: a URL's password")
    for name, config in (raw.get("configs") or {}).items():
        found += [
            f"config {name}"
            for v in json.loads(config.get("content", "{}")).values()
            if not placeholder.fullmatch(v)
        ]
    return found


def test_no_secret_beyond_obviously_local_defaults() -> None:
    assert plaintext_secrets(compose_raw()) == []


def test_the_secret_check_finds_plaintext_secrets() -> None:
    raw = compose_raw()
    worker = raw["services"]["airflow-worker"]["environment"]
    worker["AIRFLOW__API_AUTH__JWT_SECRET"] = "s3cr3t"
    worker["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = "postgresql://postgres:hunter2@postgres/airflow"
    worker["AIRFLOW_CONN_CLIENTFLOW_STAGING"] = json.dumps({"conn_type": "postgres", "password": "hunter2"})
    raw["services"]["minio"]["environment"]["MINIO_ROOT_PASSWORD"] = "${MINIO_PASSWORD:-minio123}"
    assert sorted(plaintext_secrets(raw)) == [
        "airflow-worker: AIRFLOW_CONN_CLIENTFLOW_STAGING password",
        "airflow-worker: AIRFLOW__API_AUTH__JWT_SECRET",
        "airflow-worker: a URL's password",
        "default of MINIO_PASSWORD",
    ]
