"""observability/prometheus: every rules file passes `promtool check rules`, has unit tests
that `promtool test rules` passes, and reads only metrics berth really exports (their names
imported from the metrics modules, never retyped here)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml
from berth_operator import metrics as operator_metrics

from service.core import metrics as core_metrics
from service.tenants import metrics as tenant_metrics
from tests.support import REPOSITORY, require_tool

PROMETHEUS_DIR = REPOSITORY / "observability" / "prometheus"
RULE_FILES = sorted((PROMETHEUS_DIR / "rules").glob("*.yaml"))
TEST_FILES = sorted((PROMETHEUS_DIR / "tests").glob("*.test.yaml"))
# A metric selector: a name followed by its labels or a range (`foo{...}`, `foo[5m]`).
SELECTOR = re.compile(r"\b([a-zA-Z_][a-zA-Z0-9_:]*)\s*[{\[]")
HISTOGRAM_SUFFIXES = ("_bucket", "_count", "_sum")


def exported_metric_names() -> set[str]:
    """Every metric name the service and the operator define (module-level string constants)."""
    names = set()
    for module in (core_metrics, tenant_metrics, operator_metrics):
        for name, value in vars(module).items():
            if name.isupper() and isinstance(value, str) and re.fullmatch(r"[a-z_]+", value):
                names.add(value)
    return names


def promtool(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(require_tool("promtool")), *map(str, args)],
        capture_output=True, text=True, timeout=120, check=False, cwd=cwd,
    )  # fmt: skip


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
    exported = exported_metric_names()
    recorded = {
        rule["record"]
        for g in yaml.safe_load(rules.read_text())["groups"]
        for rule in g["rules"]
        if "record" in rule
    }
    unknown = []
    for expression in rule_expressions(rules):
        for name in SELECTOR.findall(expression):
            base = next(
                (name.removesuffix(s) for s in HISTOGRAM_SUFFIXES if name.endswith(s)), name
            )
            if base not in exported and name not in recorded and name not in {"by", "without"}:
                unknown.append(name)

    assert unknown == []
    assert core_metrics.HTTP_REQUEST_DURATION in exported


def test_the_metric_name_check_can_fail() -> None:
    names = SELECTOR.findall('sum(rate(http_requests_total{status="500"}[5m]))')

    assert names == ["http_requests_total"]
    assert "http_requests_total" not in exported_metric_names()
