"""What the observability tests share: the files, the metric names berth exports (imported
from its metrics modules), the recording rules, and promtool."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import yaml
from berth_operator import metrics as operator_metrics

from service.articles import metrics as article_metrics
from service.core import metrics as core_metrics
from service.identity import metrics as identity_metrics
from service.submissions import metrics as submission_metrics
from service.tenants import metrics as tenant_metrics
from tests.support import REPOSITORY, require_tool

OBSERVABILITY_DIR = REPOSITORY / "observability"
PROMETHEUS_DIR = OBSERVABILITY_DIR / "prometheus"
RULE_FILES = sorted((PROMETHEUS_DIR / "rules").glob("*.yaml"))
DASHBOARD_FILES = sorted((OBSERVABILITY_DIR / "grafana" / "dashboards").glob("*.json"))
# A metric selector: a name followed by its labels or a range (`foo{...}`, `foo[5m]`).
SELECTOR = re.compile(r"\b([a-zA-Z_][a-zA-Z0-9_:]*)\s*[{\[]")
HISTOGRAM_SUFFIXES = ("_bucket", "_count", "_sum")


# Every module that declares metric names (the rule: service/core/metrics.py).
METRICS_MODULES = (
    core_metrics,
    tenant_metrics,
    identity_metrics,
    article_metrics,
    submission_metrics,
    operator_metrics,
)


# Metrics the rules and dashboards read that berth does not export, with who does: a cluster
# runs these (kube-prometheus-stack installs kube-state-metrics).
EXTERNAL_METRICS = {
    "kube_pod_container_status_restarts_total": "kube-state-metrics",
    "kube_pod_status_ready": "kube-state-metrics",
    "up": "Prometheus (one series per scrape target)",
}


def exported_metric_names() -> set[str]:
    """Every metric name the service and the operator define (module-level string constants)."""
    names = set()
    for module in METRICS_MODULES:
        for name, value in vars(module).items():
            if (
                name.isupper()
                and isinstance(value, str)
                and re.fullmatch(r"[a-z]+(_[a-z]+)+", value)
            ):
                names.add(value)
    return names


def recorded_names() -> set[str]:
    return {
        rule["record"]
        for path in RULE_FILES
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
        if "record" in rule
    }


def unknown_metrics(expression: str) -> list[str]:
    """The metrics `expression` reads that berth neither exports nor records, and that are
    not one of the EXTERNAL_METRICS."""
    known = exported_metric_names() | recorded_names() | set(EXTERNAL_METRICS)
    unknown = []
    for name in SELECTOR.findall(expression):
        base = next((name.removesuffix(s) for s in HISTOGRAM_SUFFIXES if name.endswith(s)), name)
        if base not in known and name not in known:
            unknown.append(name)
    return unknown


def promtool(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(require_tool("promtool")), *map(str, args)],
        capture_output=True, text=True, timeout=120, check=False, cwd=cwd,
    )  # fmt: skip
