"""The operator's runtime pieces without a cluster: settings from BERTH_OPERATOR__*, the
command line, kopf's configuration, the login kopf shares with lightkube, the metrics."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import kopf
import pytest
import yaml
from berth_operator import metrics as names
from berth_operator.config import OperatorSettings, load_operator_settings
from berth_operator.crd import render_yaml
from berth_operator.handlers import KOPF_PREFIX, connection_info, kopf_settings
from berth_operator.metrics import Handler, OperatorMetrics, Result
from berth_operator.rbac import (
    CRD_RULES,
    OPERATOR_NAMESPACE_RULES,
    TENANT_NAMESPACE_RULES,
    TENANTS_BINDING,
)
from berth_operator.resource import FINALIZER, Phase
from lightkube.config.kubeconfig import KubeConfig
from prometheus_client import generate_latest

from service.core.config import ConfigError


def test_settings_come_from_the_environment_in_the_services_style(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BERTH_OPERATOR__NAMESPACES", "tenants-a, tenants-b")
    monkeypatch.setenv("BERTH_OPERATOR__DEFAULT_SERVER__NAME", "pg-admin")
    monkeypatch.setenv("BERTH_OPERATOR__TIMER_SECONDS", "60")
    monkeypatch.setenv("POD_NAMESPACE", "berth")

    settings = load_operator_settings()

    assert settings.namespaces == ["tenants-a", "tenants-b"]
    assert (settings.default_server.name, settings.default_server.key) == ("pg-admin", "url")
    assert settings.default_server_namespace == "berth"
    assert settings.timer_seconds == 60


def test_a_bad_setting_is_one_line_naming_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BERTH_OPERATOR__TIMER_SECONDS", "1")
    monkeypatch.setenv("BERTH_OPERATOR__REGISTRY_SECRET", "Not A Name")

    with pytest.raises(ConfigError) as refused:
        load_operator_settings()

    message = str(refused.value)
    assert "BERTH_OPERATOR__TIMER_SECONDS" in message
    assert "BERTH_OPERATOR__REGISTRY_SECRET" in message
    assert "\n" not in message


def run_cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "berth_operator", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"PATH": "/usr/bin:/bin", **env},
        cwd=Path(__file__).parent,
    )


def test_the_command_line_prints_the_crd_and_the_rbac() -> None:
    crd = run_cli("crd")
    rbac = run_cli("rbac", "--namespace", "berth", "--watch", "a,b")

    assert crd.returncode == 0
    assert crd.stdout == render_yaml()
    documents = list(yaml.safe_load_all(rbac.stdout))
    kinds = [(d["kind"], d["metadata"].get("namespace")) for d in documents]
    assert kinds == [
        ("Role", "berth"), ("RoleBinding", "berth"),
        ("ClusterRole", None), ("ClusterRoleBinding", None),
        ("ClusterRole", None), ("RoleBinding", "a"), ("RoleBinding", "b"),
    ]  # fmt: skip
    assert documents[0]["rules"] == OPERATOR_NAMESPACE_RULES
    assert documents[2]["rules"] == CRD_RULES
    assert documents[4]["rules"] == TENANT_NAMESPACE_RULES
    # One ClusterRole for the Tenant rules (a namespace's deletion cannot take it), bound in
    # each watched namespace under the name the binding guard holds.
    for binding in documents[5:]:
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": documents[4]["metadata"]["name"],
        }
        assert binding["metadata"]["name"] == TENANTS_BINDING


def test_watching_every_namespace_needs_a_cluster_role() -> None:
    documents = list(yaml.safe_load_all(run_cli("rbac", "--namespace", "berth").stdout))

    assert [d["kind"] for d in documents][4:] == ["ClusterRole", "ClusterRoleBinding"]
    assert documents[4]["rules"] == TENANT_NAMESPACE_RULES


def test_bad_settings_exit_2_before_touching_a_cluster() -> None:
    result = run_cli("run", BERTH_OPERATOR__MAX_CONCURRENT_RECONCILES="0")

    assert result.returncode == 2
    assert "BERTH_OPERATOR__MAX_CONCURRENT_RECONCILES" in result.stderr
    assert "Traceback" not in result.stderr


def test_no_secret_grants_list_or_watch() -> None:
    for rule in TENANT_NAMESPACE_RULES + OPERATOR_NAMESPACE_RULES:
        if "secrets" in rule["resources"]:
            assert not {"list", "watch", "delete"} & set(rule["verbs"])


def test_kopf_runs_standalone_with_our_finalizer_and_annotations_and_no_log_events() -> None:
    configured = kopf_settings(OperatorSettings())

    assert configured.peering.standalone
    assert configured.persistence.finalizer == FINALIZER
    assert isinstance(configured.persistence.progress_storage, kopf.AnnotationsProgressStorage)
    assert configured.persistence.progress_storage.prefix == KOPF_PREFIX
    assert not configured.posting.enabled
    assert configured.watching.server_timeout


def test_kopf_logs_in_with_what_lightkube_read(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("rotated-token\n")
    config = KubeConfig.from_dict(
        {
            "clusters": [
                {
                    "name": "c",
                    "cluster": {
                        "server": "https://10.0.0.1:6443",
                        "certificate-authority-data": "Q0E=",
                    },
                }
            ],
            "users": [{"name": "u", "user": {"tokenFile": str(token)}}],
            "contexts": [
                {"name": "x", "context": {"cluster": "c", "user": "u", "namespace": "berth"}}
            ],
            "current-context": "x",
        }
    ).get()
    assert config is not None

    info = connection_info(config)

    assert (info.server, info.ca_data, info.token, info.default_namespace) == (
        "https://10.0.0.1:6443", "Q0E=", "rotated-token", "berth",
    )  # fmt: skip


def test_metrics_are_exported_under_their_defined_names() -> None:
    metrics = OperatorMetrics()
    metrics.reconciles.labels(Handler.CREATE.value, Result.SUCCESS.value).inc()
    metrics.duration.labels(Handler.CREATE.value).observe(0.2)
    metrics.drift_repairs.labels("role_created").inc()
    metrics.registry_conflicts.inc()
    metrics.set_phase("uid-1", Phase.READY)
    metrics.set_phase("uid-2", Phase.READY)
    metrics.set_phase("uid-3", Phase.FAILED)
    metrics.forget("uid-2")

    exposed = generate_latest(metrics.registry).decode()

    assert f'{names.RECONCILES}{{handler="create",result="success"}} 1.0' in exposed
    assert f'{names.RECONCILE_DURATION}_count{{handler="create"}} 1.0' in exposed
    assert f'{names.DRIFT_REPAIRS}{{kind="role_created"}} 1.0' in exposed
    assert f"{names.REGISTRY_WRITE_CONFLICTS} 1.0" in exposed
    assert f'{names.TENANTS}{{phase="Ready"}} 1.0' in exposed
    assert f'{names.TENANTS}{{phase="Failed"}} 1.0' in exposed
    assert f'{names.TENANTS}{{phase="Provisioning"}} 0.0' in exposed
    assert f"{names.LEASE_HELD} 0.0" in exposed
