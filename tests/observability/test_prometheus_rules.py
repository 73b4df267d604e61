"""observability/prometheus: every rules file passes `promtool check rules`, has unit tests
that `promtool test rules` passes, and reads only metrics berth really exports (their names
imported from the metrics modules, never retyped here)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from berth_operator.metrics import Handler, Result
from berth_operator.resource import Phase

from service.core import metrics as core_metrics
from service.core.ratelimit import RULES
from service.core.store import RedisErrorKind
from service.identity.metrics import LoginOutcome, RefreshOutcome
from service.submissions.metrics import Outcome
from service.tenants.metrics import EVICTION_REASONS
from tests.charts.support import Chart
from tests.observability.support import (
    PROMETHEUS_DIR,
    RULE_FILES,
    SELECTOR,
    exported_metric_names,
    promtool,
    unknown_metrics,
)
from tests.support import require_tool

TEST_FILES = sorted((PROMETHEUS_DIR / "tests").glob("*.test.yaml"))


def rule_expressions(path: Path) -> list[str]:
    groups = yaml.safe_load(path.read_text())["groups"]
    return [rule["expr"] for group in groups for rule in group["rules"]]


def test_there_are_rules_and_tests() -> None:
    assert RULE_FILES
    assert TEST_FILES


@pytest.mark.parametrize("rules", RULE_FILES, ids=[p.stem for p in RULE_FILES])
def test_promtool_accepts_the_rules(rules: Path) -> None:
    checked = promtool("check", "rules", rules)

    assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.mark.parametrize("tests", TEST_FILES, ids=[p.stem for p in TEST_FILES])
def test_the_rules_unit_tests_pass(tests: Path) -> None:
    ran = promtool("test", "rules", tests.name, cwd=tests.parent)

    assert ran.returncode == 0, ran.stdout + ran.stderr


def test_a_wrong_expectation_fails_the_unit_tests(tmp_path: Path) -> None:
    """The unit tests can fail: the same file with one expected value changed does."""
    (tmp_path / "rules").mkdir()
    for rules in RULE_FILES:
        (tmp_path / "rules" / rules.name).write_text(rules.read_text())
    (tmp_path / "tests").mkdir()
    recording = PROMETHEUS_DIR / "tests" / "berth-recording.test.yaml"
    source = recording.read_text()
    broken = source.replace("value: 0.1\n", "value: 0.2\n", 1)
    assert broken != source
    (tmp_path / "tests" / recording.name).write_text(broken)

    ran = promtool("test", "rules", recording.name, cwd=tmp_path / "tests")

    assert ran.returncode != 0


@pytest.mark.parametrize("rules", RULE_FILES, ids=[p.stem for p in RULE_FILES])
def test_every_rules_file_has_unit_tests(rules: Path) -> None:
    covered = {
        (PROMETHEUS_DIR / "tests" / name).resolve()
        for tests in TEST_FILES
        for name in yaml.safe_load(tests.read_text())["rule_files"]
    }

    assert rules.resolve() in covered


@pytest.mark.parametrize("rules", RULE_FILES, ids=[p.stem for p in RULE_FILES])
def test_the_rules_read_only_metrics_berth_exports(rules: Path) -> None:
    unknown = [
        name for expression in rule_expressions(rules) for name in unknown_metrics(expression)
    ]

    assert unknown == []
    assert core_metrics.HTTP_REQUEST_DURATION in exported_metric_names()


def test_the_metric_name_check_can_fail() -> None:
    names = SELECTOR.findall('sum(rate(http_requests_total{status="500"}[5m]))')

    assert names == ["http_requests_total"]
    assert "http_requests_total" not in exported_metric_names()


# Label values the rules match on, and where berth defines them.
LABEL_VALUES = {
    "result": {r.value for r in (*Result, *core_metrics.LocalLookupResult)},
    "handler": {h.value for h in Handler},
    "phase": {p.value for p in Phase},
    "reason": set(EVICTION_REASONS),
    "kind": {k.value for k in RedisErrorKind} | {k.value for k in core_metrics.DbErrorKind},
    "rule": set(RULES),
    "outcome": {o.value for o in (*Outcome, *LoginOutcome, *RefreshOutcome)},
}
LABEL_MATCHER = re.compile(r'\b(result|phase|reason|kind|rule|outcome)(?:=~|!~|=|!=)"([^"]+)"')


@pytest.mark.parametrize("rules", RULE_FILES, ids=[p.stem for p in RULE_FILES])
def test_label_values_matched_are_the_ones_berth_writes(rules: Path) -> None:
    wrong = [
        (label, value)
        for expression in rule_expressions(rules)
        for label, values in LABEL_MATCHER.findall(expression)
        for value in values.split("|")
        if value not in LABEL_VALUES[label]
    ]

    assert wrong == []


def alerts() -> list[dict[str, Any]]:
    return [
        rule
        for path in RULE_FILES
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
        if "alert" in rule
    ]


def test_every_alert_has_a_severity_and_a_runbook_section() -> None:
    readme = (PROMETHEUS_DIR.parent / "README.md").read_text()
    sections = {line[4:].strip().lower() for line in readme.splitlines() if line.startswith("### ")}

    assert alerts()
    for alert in alerts():
        assert alert["labels"]["severity"] in {"page", "ticket"}, alert["alert"]
        anchor = alert["annotations"]["runbook"].split("#", 1)[1]
        assert anchor == alert["alert"].lower()
        assert anchor in sections, f"no runbook section for {alert['alert']}"


def test_every_alert_is_unit_tested() -> None:
    """Each alert has a case where it fires and one where it stays quiet."""
    cases = [
        case
        for path in TEST_FILES
        for test in yaml.safe_load(path.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
    ]
    fired = {case["alertname"] for case in cases if case.get("exp_alerts")}
    quiet = {case["alertname"] for case in cases if not case.get("exp_alerts")}
    names = {alert["alert"] for alert in alerts()}

    assert names - fired == set(), "no unit test fires these"
    assert names - quiet == set(), "no unit test keeps these quiet"


def recording_rules_named(prefix: str) -> dict[str, str]:
    """{window: expression} of the recording rules `<prefix><window>`."""
    return {
        rule["record"].removeprefix(prefix): rule["expr"]
        for path in RULE_FILES
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
        if rule.get("record", "").startswith(prefix)
    }


HTTP_SELECTOR = re.compile(
    rf"\b{core_metrics.HTTP_REQUEST_DURATION}_(count|bucket)(\{{[^}}]*\}})?\[(\w+)\]"
)
LE_MATCHER = re.compile(r'\ble="([^"]+)"')
SLOW_RATIOS = "berth:slo_slow_requests:ratio_rate"
ERROR_RATIOS = "berth:slo_errors:ratio_rate"


def test_the_latency_slo_threshold_is_a_bucket_the_service_has() -> None:
    """`le` must be a boundary of LATENCY_BUCKETS (another value matches no series), the
    same in every window, and the one the latency alerts' texts name."""
    slow = recording_rules_named(SLOW_RATIOS)
    boundaries = {le for expression in slow.values() for le in LE_MATCHER.findall(expression)}

    assert len(boundaries) == 1, boundaries
    (le,) = boundaries
    assert float(le) in core_metrics.LATENCY_BUCKETS
    latency_alerts = [a for a in alerts() if a["alert"].startswith("BerthLatencyBudget")]
    assert len(latency_alerts) == 2
    for alert in latency_alerts:
        assert f"{float(le) * 1000:g} ms" in alert["annotations"]["description"]


def test_the_latency_slo_counts_the_requests_the_availability_slo_counts() -> None:
    """The same windows; every request counted (no matcher besides `le`), as the
    availability SLO's denominators count them."""
    slow = recording_rules_named(SLOW_RATIOS)
    errors = recording_rules_named(ERROR_RATIOS)

    assert set(slow) == set(errors) == {"5m", "30m", "1h", "2h", "6h", "1d", "3d"}
    for window, expression in slow.items():
        selectors = {
            (kind, LE_MATCHER.sub("", matchers).strip("{}, "), range_)
            for kind, matchers, range_ in HTTP_SELECTOR.findall(expression)
        }
        assert selectors == {("count", "", window), ("bucket", "", window)}, expression
        assert "by (namespace, job)" in expression
        assert "pod" not in expression
        assert ("count", "", window) in set(HTTP_SELECTOR.findall(errors[window]))


def test_the_restart_alert_selects_the_charts_pods() -> None:
    """kube-state-metrics names pods and containers, not berth: the alert's patterns match
    the containers of the Deployments the chart renders (pods are `<deployment>-<hash>-<id>`)
    and not another application's `api` container."""
    (alert,) = [a for a in alerts() if a["alert"] == "BerthPodsRestarting"]
    matchers = dict(re.findall(r'\b(pod|container)=~"([^"]+)"', alert["expr"]))
    rendered = Chart(helm=require_tool("helm")).render()
    deployments = rendered.of_kind("Deployment")
    components = {d["metadata"]["labels"]["app.kubernetes.io/component"] for d in deployments}

    assert components >= {"api", "operator"}
    for deployment in deployments:
        pod = f"{deployment['metadata']['name']}-5d8f7c9b6-x2x4z"
        assert re.fullmatch(matchers["pod"], pod), pod
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            assert re.fullmatch(matchers["container"], container["name"]), container["name"]
    assert not re.fullmatch(matchers["pod"], "shop-api-5f6d7c8b9-abcde")
