"""observability/prometheus: every rules file passes `promtool check rules`, has unit tests
that `promtool test rules` passes, and reads only metrics berth really exports (their names
imported from the metrics modules, never retyped here)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

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
    source = TEST_FILES[0].read_text()
    broken = source.replace("value: 0.1\n", "value: 0.2\n", 1)
    assert broken != source
    (tmp_path / "tests" / TEST_FILES[0].name).write_text(broken)

    ran = promtool("test", "rules", TEST_FILES[0].name, cwd=tmp_path / "tests")

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
