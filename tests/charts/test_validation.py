"""The rendered chart is valid: helm lint, the Kubernetes schemas of the oldest and newest
supported versions, a real API server's strict dry run, checkov, and values.schema.json."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml
from lightkube import AsyncClient
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Namespace

from tests.charts.support import CHART_DIR, CI_VALUES, DEFAULT_VALUES, KUBERNETES_VERSIONS, Chart
from tests.kube import ApiServer, kubectl
from tests.support import require_tool

# Not built-in kinds: no schema offline, and neither the Gateway API's nor the Prometheus
# Operator's CRDs on the test API server (tests/charts/test_service.py checks their shape).
NOT_BUILT_IN = {"HTTPRoute", "ServiceMonitor", "PodMonitor", "PrometheusRule"}


def ids(paths: list[Path]) -> list[str]:
    return [path.stem for path in paths]


@pytest.mark.parametrize("values", CI_VALUES, ids=ids(CI_VALUES))
def test_helm_lint_strict_passes(chart: Chart, values: Path) -> None:
    linted = chart.run("lint", "--strict", str(CHART_DIR), "-f", str(values), check=False)

    assert linted.returncode == 0, linted.stdout + linted.stderr


def built_in_manifests(chart: Chart, values: Path) -> str:
    documents = [d for d in chart.render(values).manifests if d["kind"] not in NOT_BUILT_IN]
    return yaml.safe_dump_all(documents)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("values", CI_VALUES, ids=ids(CI_VALUES))
def test_every_manifest_fits_the_kubernetes_schema_strictly(
    chart: Chart, kubernetes_validate: Path, values: Path, version: str, tmp_path: Path
) -> None:
    rendered = tmp_path / "rendered.yaml"
    rendered.write_text(built_in_manifests(chart, values))

    checked = subprocess.run(
        [str(kubernetes_validate), "--strict", "--quiet", "-k", version, str(rendered)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "ERROR" not in checked.stdout


def test_a_manifest_with_an_unknown_field_fails_the_schema_check(
    kubernetes_validate: Path, tmp_path: Path
) -> None:
    """The check above can fail: strict mode refuses what the API server would drop."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "apiVersion: v1\nkind: Service\nmetadata: {name: x}\n"
        "spec: {ports: [{port: 80}], selectr: {app: x}}\n"
    )

    checked = subprocess.run(
        [str(kubernetes_validate), "--strict", "--quiet", "-k", KUBERNETES_VERSIONS[0], str(bad)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert checked.returncode != 0
    assert "selectr" in checked.stdout + checked.stderr


@pytest.mark.parametrize("values", CI_VALUES, ids=ids(CI_VALUES))
async def test_a_real_api_server_accepts_every_manifest_strictly(
    chart: Chart, kube_server: ApiServer, kube_admin: AsyncClient, values: Path, tmp_path: Path
) -> None:
    """`kubectl apply --dry-run=server --validate=strict`: admission, defaulting and field
    validation of the API server (the Tenant CRD installed for real)."""
    for name in ("berth", "shop", "billing"):
        if name not in [n.metadata.name async for n in kube_admin.list(Namespace) if n.metadata]:
            await kube_admin.create(Namespace(metadata=ObjectMeta(name=name)))
    rendered = tmp_path / "rendered.yaml"
    rendered.write_text(built_in_manifests(chart, values))

    applied = kubectl(
        kube_server, "apply", "--dry-run=server", "--validate=strict", "-f", str(rendered),
        check=False,
    )  # fmt: skip

    assert applied.returncode == 0, applied.stderr
    assert "created (server dry run)" in applied.stdout


def test_checkov_finds_nothing_but_the_justified_skips(chart: Chart, tmp_path: Path) -> None:
    """With the NetworkPolicies on (every pod covered); each skip says why in .checkov.yaml."""
    checkov = require_tool("checkov")
    (tmp_path / "rendered.yaml").write_text(
        chart.template(CHART_DIR / "ci" / "networkpolicy-values.yaml").stdout
    )

    scanned = subprocess.run(
        [str(checkov), "-d", str(tmp_path), "--framework", "kubernetes", "--skip-download",
         "--compact", "--quiet", "--config-file", str(CHART_DIR / ".checkov.yaml")],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip

    assert scanned.returncode == 0, scanned.stdout[-4000:]
    assert "Failed checks: 0" in scanned.stdout


def test_every_skipped_checkov_check_is_justified() -> None:
    lines = (CHART_DIR / ".checkov.yaml").read_text().splitlines()
    skips = [i for i, line in enumerate(lines) if line.strip().startswith("- CKV")]

    assert skips
    for index in skips:
        assert lines[index - 1].strip().startswith("#"), lines[index]


def test_a_misspelled_value_is_refused_by_the_schema(chart: Chart) -> None:
    refused = chart.template(DEFAULT_VALUES, settings={"replicaCont": "3"}, check=False)

    assert refused.returncode != 0
    assert "additional properties 'replicaCont' not allowed" in refused.stderr


def test_a_wrong_type_is_refused_by_the_schema(chart: Chart) -> None:
    refused = chart.template(
        DEFAULT_VALUES, settings={"autoscaling.enabled": "yes please"}, check=False
    )

    assert refused.returncode != 0
    assert "autoscaling" in refused.stderr


def test_values_of_a_parent_chart_are_allowed(chart: Chart) -> None:
    """As a subchart, berth receives `global`: the schema must not refuse it."""
    assert chart.template(DEFAULT_VALUES, settings={"global.domain": "example.com"}).returncode == 0


def test_a_missing_database_url_fails_the_install_saying_what_to_set(chart: Chart) -> None:
    refused = chart.template(CHART_DIR / "values.yaml", check=False)

    assert refused.returncode != 0
    assert "database.url is required" in refused.stderr
    assert "existingSecret" in refused.stderr


def test_a_short_jwt_secret_is_refused_before_the_service_would_refuse_it(chart: Chart) -> None:
    refused = chart.template(DEFAULT_VALUES, settings={"auth.jwtSecret": "short"}, check=False)

    assert refused.returncode != 0
    assert "jwtSecret" in refused.stderr
