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
from tests.observability.support import (
    PROMETHEUS_DIR,
    RULE_FILES,
    SELECTOR,
    exported_metric_names,
    promtool,
    unknown_metrics,
)

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
    "result": {r.value for r in Result},
    "handler": {h.value for h in Handler},
    "phase": {p.value for p in Phase},
}
LABEL_MATCHER = re.compile(r'\b(result|phase)(?:=~|!~|=|!=)"([^"]+)"')


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
    tested = {
        case["alertname"]
        for path in TEST_FILES
        for test in yaml.safe_load(path.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
    }

    assert {alert["alert"] for alert in alerts()} <= tested
