"""What the chart says about the service comes from the service: its routes, port and
settings (imported here, never retyped), the registry mount of docs/tenants.md, the shutdown
it can do, and a pod spec hardened as a platform team expects."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from typing import Any

import pytest
import yaml
from berth_operator.config import OperatorSettings

from service.core.config import (
    DatabaseSettings,
    HttpSettings,
    MongoSettings,
    SubmissionSettings,
    TenantSettings,
    env_name,
)
from service.main import LIVE_PATH, METRICS_PATH, READY_PATH
from tests.charts.support import (
    CHART_DIR,
    DEFAULT_VALUES,
    RELEASE,
    Chart,
    Rendered,
    container,
    service_deployment,
)
from tests.support import REPOSITORY, process_env, setting_path

CI = CHART_DIR / "ci"


@pytest.fixture(scope="module")
def rendered(chart: Chart) -> Rendered:
    return chart.render()


def test_probes_ask_the_services_own_health_routes_on_its_port(rendered: Rendered) -> None:
    api = container(service_deployment(rendered), "api")

    assert api["startupProbe"]["httpGet"]["path"] == LIVE_PATH
    assert api["livenessProbe"]["httpGet"]["path"] == LIVE_PATH
    assert api["readinessProbe"]["httpGet"]["path"] == READY_PATH
    assert api["ports"][0] == {
        "name": "http",
        "containerPort": HttpSettings().port,
        "protocol": "TCP",
    }
    assert rendered.environment(api)["BERTH_HTTP__PORT"] == str(HttpSettings().port)


def test_every_environment_variable_is_a_setting_of_the_service(chart: Chart) -> None:
    rendered = chart.render(settings={"config.BERTH_TENANTS__ENGINE_POOL_SIZE": "7"})
    api = container(service_deployment(rendered), "api")

    names = set(rendered.environment(api))

    assert "BERTH_TENANTS__ENGINE_POOL_SIZE" in names
    assert [n for n in names if setting_path(n) is None] == []


def test_the_check_for_settings_names_can_fail() -> None:
    assert setting_path("BERTH_DATABASE__URL") == ("database", "url")
    assert setting_path("BERTH_DATABASE__URI") is None
    assert setting_path("BERTH_DATABSE__URL") is None


@pytest.mark.parametrize(
    "values", ["default-values", "hpa-values", "networkpolicy-values", "mongo-values"]
)
def test_the_rendered_settings_pass_the_services_production_check(
    chart: Chart, values: str, tmp_path: Any
) -> None:
    """`python -m service check-config` with the environment the pod would get."""
    rendered = chart.render(CI / f"{values}.yaml")
    env = rendered.environment(container(service_deployment(rendered), "api"))

    checked = subprocess.run(
        [sys.executable, "-m", "service", "check-config"],
        env=process_env(**env), cwd=tmp_path, capture_output=True, text=True, timeout=60,
        check=False,
    )  # fmt: skip

    assert env["BERTH_ENVIRONMENT"] == "production"
    assert checked.returncode == 0, checked.stderr


MONGO_URL = env_name("mongo", "url")
CI_MONGO_URL = yaml.safe_load((CI / "mongo-values.yaml").read_text())["mongo"]["url"]


def settings_containers(rendered: Rendered) -> list[tuple[str, dict[str, Any]]]:
    """Every container that reads the service's settings: the API, its schema wait, and the
    migration Job's two (they refuse a production start just as the API does)."""
    deployment, job = service_deployment(rendered), rendered.one("Job", f"{RELEASE}-migrations")
    return [
        (name, container(owner, name))
        for owner, name in [
            (deployment, "api"),
            (deployment, "wait-for-schema"),
            (job, "control-plane"),
            (job, "tenants"),
        ]
    ]


def test_the_mongo_url_and_the_submission_settings_reach_every_container_that_reads_them(
    chart: Chart,
) -> None:
    rendered = chart.render(CI / "mongo-values.yaml")
    submissions = yaml.safe_load((CI / "mongo-values.yaml").read_text())["submissions"]

    for where, spec in settings_containers(rendered):
        env = rendered.environment(spec)
        assert env[MONGO_URL] == CI_MONGO_URL, where
        assert env[env_name("submissions", "enabled")] == "true", where
        assert env[env_name("submissions", "worker_enabled")] == "true", where
        assert env[env_name("submissions", "worker_concurrency")] == str(
            submissions["workerConcurrency"]
        ), where
    # A URL may carry a password: it comes from the Secret, never the ConfigMap.
    assert all(MONGO_URL not in m["data"] for m in rendered.of_kind("ConfigMap"))


def test_the_charts_submission_defaults_are_the_services_own() -> None:
    values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())["submissions"]
    defaults = SubmissionSettings()

    assert values == {
        "enabled": defaults.enabled,
        "workerEnabled": defaults.worker_enabled,
        "workerConcurrency": defaults.worker_concurrency,
    }


def test_submissions_in_production_without_a_mongo_url_fail_the_install(chart: Chart) -> None:
    """The service would refuse to start (production_problems): helm says so first."""
    refused = chart.template(DEFAULT_VALUES, settings={"mongo.url": ""}, check=False)

    assert refused.returncode != 0
    assert "mongo.url is required while submissions.enabled in production" in refused.stderr


@pytest.mark.parametrize(
    "settings",
    [
        pytest.param({"submissions.enabled": "false"}, id="submissions-off"),
        pytest.param({"environment": "local"}, id="not-production"),
    ],
)
def test_without_a_mongo_url_where_the_service_starts_without_one_no_url_is_passed(
    chart: Chart, settings: dict[str, str]
) -> None:
    rendered = chart.render(DEFAULT_VALUES, settings={"mongo.url": "", **settings})

    for where, spec in settings_containers(rendered):
        assert MONGO_URL not in rendered.environment(spec), where
    secret = rendered.one("Secret", RELEASE)
    assert "mongo-url" not in secret["data"]


@pytest.mark.parametrize(
    ("settings", "optional"),
    [
        pytest.param({}, False, id="required"),
        pytest.param({"submissions.enabled": "false"}, True, id="submissions-off"),
    ],
)
def test_with_an_existing_secret_the_mongo_url_is_its_mongo_url_key(
    chart: Chart, settings: dict[str, str], optional: bool
) -> None:
    """Optional only where the service starts without it; otherwise the kubelet refuses the
    pod naming the missing key."""
    rendered = chart.render(CI / "existing-secret-values.yaml", settings=settings)

    for where, spec in settings_containers(rendered):
        (variable,) = [item for item in spec["env"] if item["name"] == MONGO_URL]
        reference = variable["valueFrom"]["secretKeyRef"]
        assert reference["name"] == "berth-secrets", where
        assert reference["key"] == "mongo-url", where
        assert reference.get("optional", False) is optional, where


def test_with_the_hpa_on_the_deployment_has_no_replicas(chart: Chart) -> None:
    without = service_deployment(chart.render())
    rendered = chart.render(CI / "hpa-values.yaml")

    assert without["spec"]["replicas"] == 2
    assert "replicas" not in service_deployment(rendered)["spec"]
    hpa = rendered.one("HorizontalPodAutoscaler", RELEASE)
    assert hpa["spec"]["scaleTargetRef"]["name"] == RELEASE
    kinds = {metric["type"] for metric in hpa["spec"]["metrics"]}
    assert kinds == {"Resource", "Pods"}
    assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 300


def test_an_hpa_without_a_metric_is_refused(chart: Chart) -> None:
    refused = chart.template(
        DEFAULT_VALUES,
        settings={
            "autoscaling.enabled": "true",
            "autoscaling.targetCPUUtilizationPercentage": "null",
        },
        check=False,
    )

    assert refused.returncode != 0
    assert "autoscaling.enabled needs a metric" in refused.stderr


def test_the_disruption_budget_never_blocks_a_drain(rendered: Rendered) -> None:
    budget = rendered.one("PodDisruptionBudget", RELEASE)

    assert budget["spec"] == {
        "maxUnavailable": 1,
        "selector": {
            "matchLabels": service_deployment(rendered)["spec"]["selector"]["matchLabels"]
        },
    }


def test_a_changed_setting_rolls_the_pods_and_an_unchanged_one_does_not(chart: Chart) -> None:
    def checksum(**settings: str) -> str:
        deployment = service_deployment(chart.render(settings=settings))
        return str(deployment["spec"]["template"]["metadata"]["annotations"]["checksum/config"])

    assert checksum() == checksum()
    assert checksum() != checksum(**{"config.BERTH_CACHE__TTL_SECONDS": "30"})
    assert checksum() != checksum(**{"redis.url": "redis://elsewhere:6379/0"})
    assert checksum() != checksum(**{"mongo.url": "mongodb://elsewhere:27017"})
    assert checksum() != checksum(**{"submissions.workerConcurrency": "2"})


def test_the_grace_period_covers_the_prestop_pause_and_the_drain(chart: Chart) -> None:
    rendered = chart.render(
        settings={"shutdown.preStopSeconds": "7", "shutdown.drainSeconds": "30"}
    )
    deployment = service_deployment(rendered)
    api = container(deployment, "api")

    assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 7 + 30 + 5
    assert api["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", "7"]
    assert rendered.environment(api)["BERTH_HTTP__GRACEFUL_SHUTDOWN_SECONDS"] == "30"


def test_the_default_drain_is_the_services_own_default(rendered: Rendered) -> None:
    api = container(service_deployment(rendered), "api")

    drain = float(rendered.environment(api)["BERTH_HTTP__GRACEFUL_SHUTDOWN_SECONDS"])

    assert drain == HttpSettings().graceful_shutdown_seconds


def registry_block_of_the_docs() -> dict[str, Any]:
    """The YAML block in docs/tenants.md that says how pods mount the registry."""
    text = (REPOSITORY / "docs" / "tenants.md").read_text()
    after = text.split("Mounted in the service's pods as a directory", 1)[1]
    block = re.search(r"```yaml\n(.*?)```", after, re.DOTALL)
    assert block is not None
    loaded: dict[str, Any] = yaml.safe_load(block.group(1))
    return loaded


def test_the_registry_is_mounted_as_docs_tenants_md_says(rendered: Rendered) -> None:
    documented = registry_block_of_the_docs()
    pod = service_deployment(rendered)["spec"]["template"]["spec"]
    api = container(service_deployment(rendered), "api")
    job = rendered.one("Job", f"{RELEASE}-migrations")

    (volume,) = documented["volumes"]
    (mount,) = documented["containers"][0]["volumeMounts"]
    (env,) = documented["containers"][0]["env"]
    assert volume in pod["volumes"]
    assert mount in api["volumeMounts"]
    assert rendered.environment(api)[env["name"]] == env["value"]
    assert mount in container(job, "tenants")["volumeMounts"]
    assert volume in job["spec"]["template"]["spec"]["volumes"]
    assert volume["secret"]["secretName"] == OperatorSettings().registry_secret
    assert not [
        s
        for s in rendered.of_kind("Secret")
        if s["metadata"]["name"] == volume["secret"]["secretName"]
    ]


def test_every_container_is_hardened(chart: Chart) -> None:
    for values in ("default-values", "networkpolicy-values"):
        rendered = chart.render(CI / f"{values}.yaml")
        for where, spec in rendered.containers():
            context = spec["securityContext"]
            assert context["runAsNonRoot"] is True, where
            assert context["readOnlyRootFilesystem"] is True, where
            assert context["allowPrivilegeEscalation"] is False, where
            assert context["capabilities"] == {"drop": ["ALL"]}, where
            assert context["seccompProfile"] == {"type": "RuntimeDefault"}, where
            assert isinstance(context["runAsUser"], int), where
            assert {"name": "tmp", "mountPath": "/tmp"} in spec.get("volumeMounts", []), where
            assert "memory" in spec["resources"]["limits"], where


def test_only_the_operator_holds_a_service_account_token(rendered: Rendered) -> None:
    holders = [
        where
        for where, pod in rendered.pod_specs()
        if pod.get("automountServiceAccountToken", True)
    ]

    assert holders == [f"Deployment/{RELEASE}-operator"]


def test_pods_spread_over_nodes_and_zones_without_blocking_scheduling(rendered: Rendered) -> None:
    spread = service_deployment(rendered)["spec"]["template"]["spec"]["topologySpreadConstraints"]

    assert [c["topologyKey"] for c in spread] == [
        "kubernetes.io/hostname",
        "topology.kubernetes.io/zone",
    ]
    assert {c["whenUnsatisfiable"] for c in spread} == {"ScheduleAnyway"}


def test_the_ingress_and_the_route_reach_the_service_port(chart: Chart) -> None:
    rendered = chart.render(CI / "ingress-values.yaml")
    service = rendered.one("Service", RELEASE)

    ingress = rendered.one("Ingress", RELEASE)
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": RELEASE, "port": {"name": service["spec"]["ports"][0]["name"]}}
    route = rendered.one("HTTPRoute", RELEASE)
    assert route["spec"]["rules"][0]["backendRefs"] == [
        {"name": RELEASE, "port": service["spec"]["ports"][0]["port"]}
    ]
    assert route["spec"]["parentRefs"] == [{"name": "public", "namespace": "gateways"}]


def test_network_policies_keep_dns_and_reach_only_the_backends(chart: Chart) -> None:
    rendered = chart.render(CI / "networkpolicy-values.yaml")
    api = rendered.one("NetworkPolicy", RELEASE)

    ports = [[p["port"] for p in rule["ports"]] for rule in api["spec"]["egress"]]
    assert ports == [[53, 53], [5432], [6379], [27017]]
    assert api["spec"]["egress"][2]["to"] == [{"ipBlock": {"cidr": "10.20.0.0/16"}}]
    selectors = [p["spec"]["podSelector"]["matchLabels"] for p in rendered.of_kind("NetworkPolicy")]
    for manifest in rendered.manifests:
        labels = pod_labels(manifest)
        if labels is not None:
            assert any(s.items() <= labels.items() for s in selectors), manifest["metadata"]["name"]


def test_mongodb_egress_is_the_configured_one_and_only_where_it_is_used(chart: Chart) -> None:
    """The service reaches MongoDB for submissions, the operator to create tenant users; the
    migration Job never does."""
    mongo = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "db"}},
              "podSelector": {"matchLabels": {"app.kubernetes.io/name": "mongodb"}}}]  # fmt: skip

    port = yaml.safe_load((CHART_DIR / "values.yaml").read_text())["networkPolicy"]["mongo"]["port"]

    def egress_to_mongo(rendered: Rendered, name: str) -> list[Any]:
        policy = rendered.one("NetworkPolicy", name)
        return [
            rule["to"]
            for rule in policy["spec"]["egress"]
            if [p["port"] for p in rule["ports"]] == [port]
        ]

    rendered = chart.render(CI / "mongo-values.yaml")
    assert egress_to_mongo(rendered, RELEASE) == [mongo]
    assert egress_to_mongo(rendered, f"{RELEASE}-operator") == [mongo]
    assert egress_to_mongo(rendered, f"{RELEASE}-migrations") == []
    without = chart.render(CI / "mongo-values.yaml", settings={"submissions.enabled": "false"})
    assert egress_to_mongo(without, RELEASE) == []


def pod_labels(manifest: dict[str, Any]) -> dict[str, str] | None:
    """The labels of the pods a manifest makes (None: it makes none)."""
    if manifest["kind"] == "Pod":
        return dict(manifest["metadata"]["labels"])
    template = manifest.get("spec", {}).get("template")
    return None if template is None else dict(template["metadata"]["labels"])


def test_the_notes_budget_uses_the_services_own_pool_defaults(chart: Chart) -> None:
    notes = chart.run(
        "install", "--dry-run=client", RELEASE, str(CHART_DIR), "-f", str(DEFAULT_VALUES)
    ).stdout
    database, tenants = DatabaseSettings(), TenantSettings()
    control = database.pool_size + database.max_overflow
    per_tenant = tenants.engine_pool_size + tenants.engine_max_overflow
    per_replica = control + tenants.engine_cache_size * per_tenant

    assert (
        f"{control} + {tenants.engine_cache_size} x {per_tenant} = {per_replica} per replica"
        in notes
    )
    assert f"x 2 replicas = {2 * per_replica} connections" in notes


def test_the_notes_mongodb_budget_uses_the_services_pool_defaults_or_the_configured_ones(
    chart: Chart,
) -> None:
    def notes(values: str) -> str:
        path = str(CI / f"{values}.yaml")
        return chart.run("install", "--dry-run=client", RELEASE, str(CHART_DIR), "-f", path).stdout

    mongo = MongoSettings()
    per_replica = mongo.client_cache_size * mongo.pool_size
    configured = yaml.safe_load((CI / "mongo-values.yaml").read_text())["config"]
    cache, pool = (
        int(configured[env_name("mongo", field)]) for field in ("client_cache_size", "pool_size")
    )

    assert f"{mongo.client_cache_size} x {mongo.pool_size} = {per_replica} per replica" in (
        notes("default-values")
    )
    assert f"x 2 replicas = {2 * per_replica} connections: keep it under MongoDB's" in (
        notes("default-values")
    )
    assert f"{cache} x {pool} = {cache * pool} per replica" in notes("mongo-values")


def test_the_charts_app_version_is_the_projects_version() -> None:
    project = tomllib.loads((REPOSITORY / "pyproject.toml").read_text())["project"]
    chart = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())

    assert chart["appVersion"] == project["version"]


def test_the_parameter_table_of_the_readme_is_current(tmp_path: Any) -> None:
    script = REPOSITORY / "scripts" / "chart-readme.py"

    current = subprocess.run(
        [sys.executable, str(script), "--check"], capture_output=True, text=True, check=False
    )

    assert current.returncode == 0, current.stdout
    readme = (CHART_DIR / "README.md").read_text()
    for key in (
        "replicaCount",
        "autoscaling.enabled",
        "operator.namespaces",
        "migrations.useHelmHooks",
    ):
        assert f"| `{key}` |" in readme


def test_metrics_are_served_apart_from_the_api_and_never_routed_by_the_ingress(
    chart: Chart,
) -> None:
    rendered = chart.render(CI / "ingress-values.yaml")
    api = container(service_deployment(rendered), "api")
    ports = {port["name"]: port["containerPort"] for port in api["ports"]}
    service_ports = {p["name"]: p for p in rendered.one("Service", RELEASE)["spec"]["ports"]}

    assert rendered.environment(api)["BERTH_OBSERVABILITY__METRICS_PORT"] == str(ports["metrics"])
    assert ports["metrics"] != ports["http"]
    assert service_ports["metrics"]["targetPort"] == "metrics"
    paths = rendered.one("Ingress", RELEASE)["spec"]["rules"][0]["http"]["paths"]
    assert {p["backend"]["service"]["port"]["name"] for p in paths} == {"http"}


def test_monitors_scrape_the_service_and_the_operator_where_they_serve_metrics(
    chart: Chart,
) -> None:
    rendered = chart.render(CI / "monitoring-values.yaml")
    service = rendered.one("Service", RELEASE)
    monitor = rendered.one("ServiceMonitor", RELEASE)
    pod_monitor = rendered.one("PodMonitor", f"{RELEASE}-operator")
    operator_pod = rendered.one("Deployment", f"{RELEASE}-operator")["spec"]["template"]

    # kube-prometheus-stack selects monitors by its release label.
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    assert monitor["spec"]["endpoints"][0]["path"] == METRICS_PATH
    selector = pod_monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= operator_pod["metadata"]["labels"].items()
    operator_ports = {p["name"] for p in operator_pod["spec"]["containers"][0]["ports"]}
    assert pod_monitor["spec"]["podMetricsEndpoints"][0]["port"] in operator_ports


def test_no_monitors_unless_asked(rendered: Rendered) -> None:
    for kind in ("ServiceMonitor", "PodMonitor", "PrometheusRule"):
        assert rendered.of_kind(kind) == [], kind
    assert not [
        m for m in rendered.of_kind("ConfigMap") if "grafana_dashboard" in m["metadata"]["labels"]
    ]


@pytest.mark.parametrize(
    ("source", "copies"),
    [("prometheus/rules", "prometheus"), ("grafana/dashboards", "dashboards")],
)
def test_the_chart_carries_exact_copies_of_observability(source: str, copies: str) -> None:
    """Helm reads nothing outside the chart: its files/ hold copies, kept equal here."""
    originals = sorted((REPOSITORY / "observability" / source).glob("*.*"))
    carried = sorted((CHART_DIR / "files" / copies).glob("*.*"))

    assert originals
    assert [p.name for p in carried] == [p.name for p in originals]
    for original, copy in zip(originals, carried, strict=True):
        assert copy.read_text() == original.read_text(), original.name


def test_the_prometheus_rule_carries_the_rules_of_observability(chart: Chart) -> None:
    source = REPOSITORY / "observability" / "prometheus" / "rules"
    rule = chart.render(CI / "monitoring-values.yaml").one("PrometheusRule", RELEASE)

    expected = [
        g for p in sorted(source.glob("*.yaml")) for g in yaml.safe_load(p.read_text())["groups"]
    ]
    assert rule["spec"]["groups"] == expected
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_each_dashboard_is_a_configmap_the_grafana_sidecar_picks_up(chart: Chart) -> None:
    source = sorted((REPOSITORY / "observability" / "grafana" / "dashboards").glob("*.json"))
    rendered = chart.render(CI / "monitoring-values.yaml")
    maps = [
        m for m in rendered.of_kind("ConfigMap") if "grafana_dashboard" in m["metadata"]["labels"]
    ]

    assert len(maps) == len(source)
    for dashboard, config_map in zip(
        source, sorted(maps, key=lambda m: m["metadata"]["name"]), strict=True
    ):
        assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert json.loads(config_map["data"][dashboard.name]) == json.loads(dashboard.read_text())
