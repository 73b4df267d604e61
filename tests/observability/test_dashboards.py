"""observability/grafana: the dashboards are generated (and committed as generated), valid
for Grafana's dashboard schema, every panel says what it shows and in which unit, and every
query parses and reads only what berth exports or records."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.observability.support import (
    DASHBOARD_FILES,
    OBSERVABILITY_DIR,
    promtool,
    unknown_metrics,
)
from tests.support import require_tool, schema_file

GENERATOR = OBSERVABILITY_DIR / "grafana" / "generate.py"
VARIABLES = {"namespace", "pod", "route"}
# What Grafana substitutes before a query reaches Prometheus.
SUBSTITUTIONS = {"$__rate_interval": "5m", "$namespace": ".*", "$pod": ".*", "$route": ".*"}


def load(path: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(path.read_text())
    return loaded


def expressions(board: dict[str, Any]) -> list[str]:
    return [target["expr"] for panel in board["panels"] for target in panel["targets"]]


def substituted(expression: str) -> str:
    for variable, value in SUBSTITUTIONS.items():
        expression = expression.replace(variable, value)
    assert "$" not in expression, expression
    return expression


def test_the_committed_dashboards_are_what_the_generator_writes() -> None:
    checked = subprocess.run(
        [sys.executable, str(GENERATOR), "--check"], capture_output=True, text=True, check=False
    )

    assert DASHBOARD_FILES
    assert checked.returncode == 0, checked.stdout


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=[p.stem for p in DASHBOARD_FILES])
def test_each_dashboard_fits_grafanas_schema(path: Path) -> None:
    checked = subprocess.run(
        [str(require_tool("check-jsonschema")), "--schemafile",
         str(schema_file("grafana-dashboard.jsonschema.json")), str(path)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip

    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_schema_check_can_fail(tmp_path: Path) -> None:
    board = load(DASHBOARD_FILES[0])
    board["schemaVersion"] = "forty-one"
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps(board))

    checked = subprocess.run(
        [str(require_tool("check-jsonschema")), "--schemafile",
         str(schema_file("grafana-dashboard.jsonschema.json")), str(broken)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip

    assert checked.returncode != 0


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=[p.stem for p in DASHBOARD_FILES])
def test_every_panel_has_a_unit_a_description_and_queries(path: Path) -> None:
    board = load(path)

    assert {v["name"] for v in board["templating"]["list"]} >= VARIABLES
    for panel in board["panels"]:
        assert panel["description"], panel["title"]
        assert panel["fieldConfig"]["defaults"]["unit"], panel["title"]
        assert panel["targets"], panel["title"]
    assert len({panel["id"] for panel in board["panels"]}) == len(board["panels"])


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=[p.stem for p in DASHBOARD_FILES])
def test_every_query_parses_after_grafana_substitutes_its_variables(
    path: Path, tmp_path: Path
) -> None:
    """promtool parses each one as the expression of a recording rule."""
    rules = [
        {"record": f"check:query_{index}", "expr": substituted(expression)}
        for index, expression in enumerate(expressions(load(path)))
    ]
    (tmp_path / "queries.yaml").write_text(
        yaml.safe_dump({"groups": [{"name": "q", "rules": rules}]})
    )

    checked = promtool("check", "rules", tmp_path / "queries.yaml")

    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_a_query_that_does_not_parse_is_caught(tmp_path: Path) -> None:
    rules = [
        {"record": "check:broken", "expr": substituted("sum by (pod (rate(x[$__rate_interval]))")}
    ]
    (tmp_path / "queries.yaml").write_text(
        yaml.safe_dump({"groups": [{"name": "q", "rules": rules}]})
    )

    assert promtool("check", "rules", tmp_path / "queries.yaml").returncode != 0


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=[p.stem for p in DASHBOARD_FILES])
def test_every_query_reads_what_berth_exports_or_records(path: Path) -> None:
    unknown = [
        name for expression in expressions(load(path)) for name in unknown_metrics(expression)
    ]

    assert unknown == []
    assert all(re.search(r'namespace=~"\$namespace"', e) for e in expressions(load(path)))
