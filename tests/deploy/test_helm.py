"""deploy/helm/values.yaml: values for the official Airflow chart that run the image the Dockerfile
builds, as compose does, with the connections from Secrets. No Helm or cluster runs here, so these
check the keys against the chart's and the values against the other deployment files."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml

from clientflow.config import ConnectionIds
from tests.support.deploy import HELM_VALUES, ROOT, compose, dockerfile, dockerfile_env

CHART_VERSION = "1.19.0"

# Keys of the chart's values.yaml (apache/airflow chart/values.yaml at commit
# d6ba4817823e8ffd2d3f676fc92aa7381e7d30f0, on the way to 1.19.0, default Airflow 3.1.3): the top
# level, and the parts of the sections this file sets. Helm ignores a misspelt key; here it fails.
CHART_TOP_LEVEL = {
    "fullnameOverride",
    "nameOverride",
    "useStandardNaming",
    "revisionHistoryLimit",
    "uid",
    "gid",
    "securityContext",
    "securityContexts",
    "containerLifecycleHooks",
    "airflowHome",
    "defaultAirflowRepository",
    "defaultAirflowTag",
    "defaultAirflowDigest",
    "airflowVersion",
    "images",
    "nodeSelector",
    "affinity",
    "tolerations",
    "topologySpreadConstraints",
    "schedulerName",
    "labels",
    "imagePullSecrets",
    "ingress",
    "networkPolicies",
    "airflowPodAnnotations",
    "airflowConfigAnnotations",
    "airflowLocalSettings",
    "rbac",
    "executor",
    "allowPodLaunching",
    "allowJobLaunching",
    "env",
    "volumes",
    "volumeMounts",
    "secret",
    "enableBuiltInSecretEnvVars",
    "priorityClasses",
    "extraSecrets",
    "extraConfigMaps",
    "extraEnv",
    "extraEnvFrom",
    "data",
    "fernetKey",
    "fernetKeySecretName",
    "fernetKeySecretAnnotations",
    "apiSecretKey",
    "apiSecretAnnotations",
    "apiSecretKeySecretName",
    "jwtSecret",
    "jwtSecretAnnotations",
    "jwtSecretName",
    "webserverSecretKey",
    "webserverSecretAnnotations",
    "webserverSecretKeySecretName",
    "kerberos",
    "workers",
    "scheduler",
    "createUserJob",
    "migrateDatabaseJob",
    "apiServer",
    "webserver",
    "triggerer",
    "dagProcessor",
    "flower",
    "statsd",
    "pgbouncer",
    "redis",
    "registry",
    "elasticsearch",
    "opensearch",
    "ports",
    "quotas",
    "limits",
    "cleanup",
    "databaseCleanup",
    "postgresql",
    "config",
    "multiNamespaceMode",
    "podTemplate",
    "dags",
    "logs",
}
CHART_SECTIONS = {
    "images": {
        "airflow",
        "useDefaultImageForMigration",
        "migrationsWaitTimeout",
        "pod_template",
        "flower",
        "statsd",
        "redis",
        "pgbouncer",
        "pgbouncerExporter",
        "gitSync",
    },
    "images.airflow": {"repository", "tag", "digest", "pullPolicy"},
    "dags": {"mountPath", "persistence", "gitSync"},
    "data": {
        "metadataSecretName",
        "resultBackendSecretName",
        "brokerUrlSecretName",
        "metadataConnection",
        "resultBackendConnection",
        "brokerUrl",
    },
    "workers": {
        "replicas",
        "resources",
        "persistence",
        "keda",
        "hpa",
        "env",
        "celery",
        "kubernetes",
        "terminationGracePeriodSeconds",
        "nodeSelector",
        "affinity",
        "tolerations",
    },
    "workers.persistence": {"enabled", "size", "storageClassName", "fixPermissions", "annotations"},
    "scheduler": {"enabled", "replicas", "resources", "env", "nodeSelector", "affinity", "tolerations"},
    "dagProcessor": {"enabled", "replicas", "resources", "env", "nodeSelector", "affinity", "tolerations"},
    "triggerer": {
        "enabled",
        "replicas",
        "resources",
        "persistence",
        "keda",
        "env",
        "nodeSelector",
        "affinity",
        "tolerations",
    },
    "triggerer.persistence": {"enabled", "size", "storageClassName", "fixPermissions", "annotations"},
    "apiServer": {
        "enabled",
        "replicas",
        "resources",
        "hpa",
        "service",
        "env",
        "nodeSelector",
        "affinity",
        "tolerations",
        "args",
        "extraVolumes",
        "extraVolumeMounts",
    },
    "createUserJob": {"enabled"},
    "redis": {"enabled", "persistence", "resources", "passwordSecretName", "password"},
    "postgresql": {"enabled", "image", "auth"},
}
COMPONENTS = ("workers", "scheduler", "dagProcessor", "triggerer", "apiServer")


@pytest.fixture(scope="module")
def values() -> dict[str, Any]:
    doc = yaml.safe_load(HELM_VALUES.read_text(encoding="utf-8"))
    assert isinstance(doc, dict)
    return doc


def _at(values: dict[str, Any], dotted: str) -> Any:
    node: Any = values
    for key in dotted.split("."):
        node = node[key]
    return node


def test_the_chart_version_is_named_in_the_file_and_the_readme() -> None:
    text = HELM_VALUES.read_text(encoding="utf-8")
    assert re.search(rf"chart version {re.escape(CHART_VERSION)}\b", text)
    assert set(re.findall(r"--version (\S+)", text)) == {CHART_VERSION}
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert f"chart {CHART_VERSION}" in readme


def test_only_keys_the_chart_has(values: dict[str, Any]) -> None:
    assert set(values) - CHART_TOP_LEVEL == set()
    for section, known in CHART_SECTIONS.items():
        try:
            node = _at(values, section)
        except KeyError:
            continue
        assert set(node) - known == set(), section


def test_the_image_is_the_one_compose_runs(values: dict[str, Any]) -> None:
    image = compose()["services"]["airflow-worker"]["image"]
    assert f"{values['images']['airflow']['repository']}:{values['images']['airflow']['tag']}" == image
    # the chart's migration job and pod template fall back to the default image: the same one
    assert f"{values['defaultAirflowRepository']}:{values['defaultAirflowTag']}" == image
    base = next(i.args for i in dockerfile() if i.keyword == "FROM")
    assert base.startswith(f"apache/airflow:{values['airflowVersion']}-")
    assert values["uid"] == 50000 and values["gid"] == 0, "the official image's airflow user"


def test_the_executor_is_the_one_compose_runs(values: dict[str, Any]) -> None:
    executors = {
        s["environment"]["AIRFLOW__CORE__EXECUTOR"]
        for name, s in compose()["services"].items()
        if name.startswith("airflow-")
    }
    assert executors == {values["executor"]} == {"CeleryExecutor"}


def test_workers_have_replicas_and_resources(values: dict[str, Any]) -> None:
    workers = values["workers"]
    assert isinstance(workers["replicas"], int) and workers["replicas"] >= 2
    assert isinstance(values["config"]["celery"]["worker_concurrency"], int)
    assert values["config"]["celery"]["celery_config_options"] == "clientflow.celery_config.CELERY_CONFIG"
    for component in COMPONENTS:
        resources = values[component]["resources"]
        assert {"cpu", "memory"} <= set(resources["requests"]), component
        assert "memory" in resources["limits"], component
    for component in ("triggerer", "dagProcessor"):
        assert values[component]["enabled"] is True and values[component]["replicas"] >= 1, component
    assert values["apiServer"]["replicas"] >= 1


def test_the_dags_come_from_the_image(values: dict[str, Any]) -> None:
    assert values["dags"]["persistence"]["enabled"] is False
    assert values["dags"]["gitSync"]["enabled"] is False
    env = dockerfile_env(dockerfile())
    core = values["config"]["core"]
    assert core["dags_folder"] == env["AIRFLOW__CORE__DAGS_FOLDER"]
    assert core["plugins_folder"] == env["AIRFLOW__CORE__PLUGINS_FOLDER"]


def test_connections_come_from_secrets(values: dict[str, Any]) -> None:
    expected = {f"AIRFLOW_CONN_{cid.upper()}" for cid in ConnectionIds().model_dump().values()}
    assert {entry["envName"] for entry in values["secret"]} == expected
    assert all(entry["secretName"] and entry["secretKey"] for entry in values["secret"])
    assert values["postgresql"]["enabled"] is False, "the metadata database is an external one"
    assert values["data"]["metadataSecretName"]


def test_no_secret_in_the_values(values: dict[str, Any]) -> None:
    for key in ("fernetKey", "apiSecretKey", "jwtSecret", "webserverSecretKey", "extraSecrets"):
        assert values.get(key) is None, key
    assert "metadataConnection" not in values["data"] and "password" not in values.get("redis", {})
    # every Secret the values name is listed in the file's header, for whoever installs it
    header = HELM_VALUES.read_text(encoding="utf-8").split("\n\n")[0]
    volumes = values["apiServer"]["extraVolumes"]
    named = {e["secretName"] for e in values["secret"]} | {v["secret"]["secretName"] for v in volumes}
    named |= {v for k, v in values.items() if k.endswith("SecretName")}
    named.add(values["data"]["metadataSecretName"])
    assert {name for name in named if name not in header} == set()


def test_the_ui_login_is_copied_where_airflow_reads_it(values: dict[str, Any]) -> None:
    core, api = values["config"]["core"], values["apiServer"]
    assert core["auth_manager"].endswith(".SimpleAuthManager")
    assert values["createUserJob"]["enabled"] is False, "its `airflow users create` needs the FAB provider"
    (mount,), (volume,) = api["extraVolumeMounts"], api["extraVolumes"]
    assert mount["name"] == volume["name"] and mount["readOnly"] is True
    copy = re.fullmatch(r"cp (\S+) (\S+) && exec airflow api-server", api["args"][-1])
    assert copy, api["args"]
    source, target = copy.groups()
    assert source.startswith(mount["mountPath"].rstrip("/") + "/")
    assert target == core["simple_auth_manager_passwords_file"]
    assert api["args"][:2] == ["bash", "-c"]
