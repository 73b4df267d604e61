"""The operator in the chart: the RBAC berth_operator/rbac.py defines (the end-to-end test
binds exactly that), one instance, the settings the operator reads, the CRD it generates."""

from __future__ import annotations

import base64
from typing import Any

import pytest
import yaml
from berth_operator import rbac
from berth_operator.app import LIVENESS_PATH
from berth_operator.config import ENV_PREFIX, OperatorSettings, operator_env_name

from tests.charts.support import (
    CHART_DIR,
    DEFAULT_VALUES,
    NAMESPACE,
    RELEASE,
    Chart,
    Rendered,
    container,
)
from tests.support import setting_path

CI = CHART_DIR / "ci"
RBAC_KINDS = {"Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"}
OPERATOR = f"{RELEASE}-operator"


def comparable(manifest: dict[str, Any]) -> dict[str, Any]:
    """What RBAC decides on: kind, name, namespace, rules, roleRef, subjects."""
    metadata = manifest["metadata"]
    keys = ("rules", "roleRef", "subjects")
    return {
        "kind": manifest["kind"],
        "name": metadata["name"],
        "namespace": metadata.get("namespace"),
        **{key: manifest[key] for key in keys if key in manifest},
    }


@pytest.mark.parametrize(
    ("values", "watched"),
    [
        ("default-values", [NAMESPACE]),
        ("watched-namespaces-values", ["shop", "billing"]),
        ("all-namespaces-values", None),
    ],
)
def test_the_rbac_is_exactly_what_the_operator_defines(
    chart: Chart, values: str, watched: list[str] | None
) -> None:
    rendered = chart.render(CI / f"{values}.yaml")
    values_file = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    account = values_file["operator"]["serviceAccount"]["name"]

    ours = [comparable(m) for m in rendered.manifests if m["kind"] in RBAC_KINDS]
    expected = [comparable(m) for m in rbac.manifests(NAMESPACE, account, watched)]

    assert sorted(ours, key=str) == sorted(expected, key=str)


def test_the_rules_file_is_generated_from_the_operator() -> None:
    assert (
        CHART_DIR / "files" / "operator-rbac.yaml"
    ).read_text() == rbac.render_chart_rules_yaml()


def test_no_operator_means_no_operator_objects(chart: Chart) -> None:
    rendered = chart.render(CI / "operator-off-values.yaml")

    assert [m for m in rendered.manifests if m["kind"] in RBAC_KINDS] == []
    assert [d["metadata"]["name"] for d in rendered.of_kind("Deployment")] == [RELEASE]


def test_the_operator_runs_alone_with_the_settings_it_reads(chart: Chart) -> None:
    rendered = chart.render(CI / "watched-namespaces-values.yaml")
    deployment = rendered.one("Deployment", OPERATOR)
    operator = container(deployment, "operator")
    env = {item["name"]: item.get("value") for item in operator["env"]}
    defaults = OperatorSettings()

    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert operator["args"] == ["berth_operator", "run"]
    assert operator["livenessProbe"]["httpGet"] == {"path": LIVENESS_PATH, "port": "liveness"}
    ports = {port["name"]: port["containerPort"] for port in operator["ports"]}
    assert ports == {"liveness": defaults.liveness_port, "metrics": defaults.metrics_port}
    assert env["BERTH_OPERATOR__NAMESPACES"] == "shop,billing"
    assert env["BERTH_OPERATOR__REGISTRY_SECRET"] == defaults.registry_secret
    assert env["BERTH_OPERATOR__DEFAULT_SERVER__NAME"] == "berth-postgres-admin"
    assert "POD_NAMESPACE" in env
    unknown = [
        name
        for name in env
        if name != "POD_NAMESPACE" and setting_path(name, OperatorSettings, ENV_PREFIX) is None
    ]
    assert unknown == []


MONGO_NAME = operator_env_name("default_mongo_server", "name")
MONGO_KEY = operator_env_name("default_mongo_server", "key")
ADMIN_URL = "mongodb://root:ci-password@mongodb.db.svc:27017/?authSource=admin"


def operator_env(rendered: Rendered) -> dict[str, str]:
    operator = container(rendered.one("Deployment", OPERATOR), "operator")
    return {item["name"]: item.get("value") for item in operator["env"]}


def test_the_default_mongo_server_can_be_a_secret_the_user_made(chart: Chart) -> None:
    rendered = chart.render(CI / "mongo-values.yaml")

    env = operator_env(rendered)

    assert (env[MONGO_NAME], env[MONGO_KEY]) == ("berth-mongo-admin", "admin-url")
    assert not [s for s in rendered.of_kind("Secret") if s["metadata"]["name"] == env[MONGO_NAME]]
    unknown = [
        name
        for name in env
        if name != "POD_NAMESPACE" and setting_path(name, OperatorSettings, ENV_PREFIX) is None
    ]
    assert unknown == []  # every variable the chart sets is one the operator reads


def test_the_default_mongo_server_given_as_a_url_is_kept_in_a_secret_of_the_chart(
    chart: Chart,
) -> None:
    rendered = chart.render(DEFAULT_VALUES, settings={"operator.defaultMongoServer.url": ADMIN_URL})

    env = operator_env(rendered)
    secret = rendered.one("Secret", env[MONGO_NAME])

    assert secret["metadata"]["namespace"] == NAMESPACE
    assert base64.b64decode(secret["data"][env[MONGO_KEY]]).decode() == ADMIN_URL
    assert ADMIN_URL not in env.values()  # a password: never in the pod spec


def test_no_default_mongo_server_means_no_setting_and_no_secret(chart: Chart) -> None:
    rendered = chart.render()

    assert MONGO_NAME not in operator_env(rendered)
    assert not [s for s in rendered.of_kind("Secret") if "mongo" in s["metadata"]["name"]]


def test_a_mongo_server_given_twice_is_refused(chart: Chart) -> None:
    refused = chart.template(
        CI / "mongo-values.yaml",
        settings={"operator.defaultMongoServer.url": ADMIN_URL},
        check=False,
    )

    assert refused.returncode != 0
    assert "operator.defaultMongoServer: set url or secretName, not both" in refused.stderr


def test_watching_every_namespace_leaves_the_namespaces_setting_empty(chart: Chart) -> None:
    rendered = chart.render(CI / "all-namespaces-values.yaml")
    operator = container(rendered.one("Deployment", OPERATOR), "operator")

    env = {item["name"]: item.get("value") for item in operator["env"]}

    assert env["BERTH_OPERATOR__NAMESPACES"] == ""


def test_the_charts_crd_is_the_operators() -> None:
    from berth_operator.crd import render_yaml

    committed = (CHART_DIR / "crds" / "tenants.berth.dev.yaml").read_text()

    assert yaml.safe_load(committed) == yaml.safe_load(render_yaml())
