"""observability/grafana: the dashboards are generated (and committed as generated), valid
for Grafana's dashboard schema, every panel says what it shows and in which unit, every
query parses and reads only what berth exports or records (or what the cluster's own
exporters do), the logs panel selects only labels the log pipeline sets, and the
provisioning files provide the datasources and the folder the dashboards expect.

Nothing is retyped here: the variables, datasources and queries are read from the
dashboards' JSON, the generator's definitions or the pipeline's and chart's own files.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from tests.observability.logs_support import alloy_config
from tests.observability.support import (
    DASHBOARD_FILES,
    EXTERNAL_METRICS,
    OBSERVABILITY_DIR,
    promtool,
    unknown_metrics,
)
from tests.support import REPOSITORY, require_tool, schema_file

GRAFANA_DIR = OBSERVABILITY_DIR / "grafana"
GENERATOR = GRAFANA_DIR / "generate.py"
PROVISIONING_DIR = GRAFANA_DIR / "provisioning"
DATASOURCES_FILE = PROVISIONING_DIR / "datasources" / "berth.yaml"
DASHBOARD_PROVIDERS_FILE = PROVISIONING_DIR / "dashboards" / "berth.yaml"
CHART_VALUES = REPOSITORY / "charts" / "berth" / "values.yaml"
# Every dashboard has these (the service's route variable is checked on its own).
COMMON_VARIABLES = {"namespace", "pod"}
# Grafana's own variables, as Grafana substitutes them before a query reaches Prometheus.
BUILT_IN = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}
VARIABLE = re.compile(r"\$\{?(\w+)\}?")
ENVIRONMENT = re.compile(r"\$\{(\w+)\}|\$(\w+)")


def load(path: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(path.read_text())
    return loaded


@functools.cache
def generator() -> ModuleType:
    """observability/grafana/generate.py, imported (its definitions, not its output)."""
    spec = importlib.util.spec_from_file_location("berth_grafana_generate", GENERATOR)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


BOARDS = {path.name: load(path) for path in DASHBOARD_FILES}
IDS = [p.stem for p in DASHBOARD_FILES]


def panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, rows and the panels inside (collapsed) rows too."""
    found = []
    for panel in board["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def variables(board: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {variable["name"]: variable for variable in board["templating"]["list"]}


def datasource_variables(board: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """`${name}` -> the datasource variable (its `query` is the datasource type)."""
    return {
        f"${{{name}}}": variable
        for name, variable in variables(board).items()
        if variable["type"] == "datasource"
    }


def is_loki(board: dict[str, Any], panel: dict[str, Any]) -> bool:
    return bool(panel.get("datasource", {}).get("type") == "loki")


def targets(board: dict[str, Any], *, loki: bool) -> list[dict[str, Any]]:
    return [
        target
        for panel in panels(board)
        if panel["type"] != "row" and is_loki(board, panel) == loki
        for target in panel["targets"]
    ]


def expressions(board: dict[str, Any]) -> list[str]:
    """The PromQL of every Prometheus target."""
    return [target["expr"] for target in targets(board, loki=False)]


def substituted(board: dict[str, Any], expression: str) -> str:
    """`expression` as Grafana sends it with every variable at its default: "All" is the
    variable's allValue, a textbox its default text."""
    values = dict(BUILT_IN)
    for name, variable in variables(board).items():
        if variable.get("includeAll"):
            values[f"${name}"] = variable["allValue"]
        elif variable["type"] == "textbox":
            values[f"${name}"] = variable["query"]
    for name in sorted(values, key=len, reverse=True):
        expression = expression.replace(name, values[name])
    assert not VARIABLE.search(expression), f"a variable left in {expression!r}"
    return expression


def test_the_committed_dashboards_are_what_the_generator_writes() -> None:
    checked = subprocess.run(
        [sys.executable, str(GENERATOR), "--check"], capture_output=True, text=True, check=False
    )

    assert DASHBOARD_FILES
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert set(generator().ALL) == set(BOARDS)


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=IDS)
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


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=IDS)
def test_every_panel_has_a_unit_a_description_and_queries_and_sits_in_a_row(
    path: Path,
) -> None:
    board = BOARDS[path.name]
    everything = panels(board)

    assert board["panels"][0]["type"] == "row", "the first panel is a row"
    for panel in everything:
        if panel["type"] == "row":
            assert panel.get("title"), panel
            continue
        assert panel.get("description"), panel["title"]
        assert panel["fieldConfig"]["defaults"].get("unit"), panel["title"]
        assert panel["targets"], panel["title"]
        assert all(target.get("expr") for target in panel["targets"]), panel["title"]
    assert len({panel["id"] for panel in everything}) == len(everything)
    rows = [panel for panel in everything if panel["type"] == "row"]
    assert all(rows[i]["gridPos"]["y"] < rows[i + 1]["gridPos"]["y"] for i in range(len(rows) - 1))


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=IDS)
def test_every_dashboard_has_the_namespace_and_pod_variables_and_defines_what_it_uses(
    path: Path,
) -> None:
    board = BOARDS[path.name]
    defined = set(variables(board))
    used = {
        name
        for target in targets(board, loki=False) + targets(board, loki=True)
        for name in VARIABLE.findall(target["expr"])
        if not name.startswith("__")
    }
    sources = {panel["datasource"]["uid"] for panel in panels(board) if "datasource" in panel}

    assert defined >= COMMON_VARIABLES
    assert used <= defined, used - defined
    assert sources <= set(datasource_variables(board)), sources


def test_the_service_dashboard_filters_by_route() -> None:
    service = generator().SERVICE_OVERVIEW

    assert "route" in variables(service)
    assert any('handler=~"$route"' in e for e in expressions(service))


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=IDS)
def test_every_query_parses_after_grafana_substitutes_its_variables(
    path: Path, tmp_path: Path
) -> None:
    """promtool parses each one as the expression of a recording rule."""
    board = BOARDS[path.name]
    rules = [
        {"record": f"check:query_{index}", "expr": substituted(board, expression)}
        for index, expression in enumerate(expressions(board))
    ]
    (tmp_path / "queries.yaml").write_text(
        yaml.safe_dump({"groups": [{"name": "q", "rules": rules}]})
    )

    checked = promtool("check", "rules", tmp_path / "queries.yaml")

    assert rules
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_a_query_that_does_not_parse_is_caught(tmp_path: Path) -> None:
    board = BOARDS[DASHBOARD_FILES[0].name]
    broken = substituted(board, "sum by (pod (rate(x[$__rate_interval]))")
    rules = [{"record": "check:broken", "expr": broken}]
    (tmp_path / "queries.yaml").write_text(
        yaml.safe_dump({"groups": [{"name": "q", "rules": rules}]})
    )

    assert promtool("check", "rules", tmp_path / "queries.yaml").returncode != 0


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=IDS)
def test_every_query_reads_what_berth_exports_or_records(path: Path) -> None:
    board = BOARDS[path.name]
    unknown = [name for expression in expressions(board) for name in unknown_metrics(expression)]

    assert unknown == []
    assert all('namespace=~"$namespace"' in e for e in expressions(board))


def test_the_external_series_the_generator_names_are_the_known_ones() -> None:
    assert set(EXTERNAL_METRICS) >= generator().EXTERNAL


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=IDS)
def test_quantiles_are_taken_over_buckets_summed_by_le(path: Path) -> None:
    """histogram_quantile over a bucket rate summed `by (le, ...)`, never over raw series
    (which mixes pods) or a sum that drops `le`."""
    for expression in expressions(BOARDS[path.name]):
        for call in re.finditer(r"histogram_quantile\(\s*[\d.]+\s*,\s*(.*)", expression):
            assert re.match(r"sum by \(le[,)]", call[1]), expression
            assert "_bucket{" in call[1], expression


# -- logs --------------------------------------------------------------------------------


def pipeline_labels() -> set[str]:
    """The labels a line reaches Loki with: the relabel rules' targets (not the `__` ones)
    and the labels stage's (observability/alloy/config.alloy)."""
    config = alloy_config()
    relabelled = {
        rule.target_label
        for rule in config.relabel_rules
        if rule.target_label and not rule.target_label.startswith("__")
    }
    return relabelled | set(config.stage("labels"))


def test_the_logs_panel_selects_only_labels_the_log_pipeline_sets() -> None:
    service = generator().SERVICE_OVERVIEW
    queries = [target["expr"] for target in targets(service, loki=True)]
    metadata = set(alloy_config().stage("structured_metadata"))

    assert queries, "the service dashboard has a Loki logs panel"
    for query in queries:
        selector = re.match(r"\{([^}]*)\}", query)
        assert selector, query
        stream_labels = set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", selector[1]))
        filtered = set(re.findall(r"\|\s*(\w+)\s*(?:=~|!~|!=|=)", query[selector.end() :]))
        assert stream_labels <= pipeline_labels(), stream_labels - pipeline_labels()
        assert filtered <= metadata | pipeline_labels(), filtered
        assert "request_id" in filtered
        assert '"$request_id"' in query
    assert variables(service)["request_id"]["type"] == "textbox"


def test_the_logs_panel_has_a_matcher_loki_accepts_with_every_variable_at_all() -> None:
    """Loki refuses a stream selector whose every matcher matches the empty string."""
    service = generator().SERVICE_OVERVIEW
    for target in targets(service, loki=True):
        query = substituted(service, target["expr"])
        selector = re.match(r"\{([^}]*)\}", query)
        assert selector
        matchers = re.findall(r'(\w+)\s*(=~|=)\s*"([^"]*)"', selector[1])
        assert any(
            (op == "=" and value) or (op == "=~" and not re.fullmatch(value, ""))
            for _, op, value in matchers
        ), query


# -- provisioning --------------------------------------------------------------------------


def provisioned(path: Path, key: str) -> list[dict[str, Any]]:
    document = yaml.safe_load(path.read_text())
    assert document["apiVersion"] == 1
    entries: list[dict[str, Any]] = document[key]
    return entries


def expand(value: str, environment: dict[str, str]) -> str:
    """Grafana's expansion of `$VAR` / `${VAR}` in provisioning files."""
    return ENVIRONMENT.sub(lambda m: environment[m[1] or m[2]], value)


def test_the_provisioned_datasources_are_the_ones_the_dashboards_default_to() -> None:
    datasources = {
        (source["type"], source["uid"]): source
        for source in provisioned(DATASOURCES_FILE, "datasources")
    }
    wanted = {
        (variable["query"], variable["current"]["value"])
        for board in BOARDS.values()
        for variable in datasource_variables(board).values()
    }

    assert wanted <= set(datasources), wanted - set(datasources)
    assert {kind for kind, _ in wanted} == {"prometheus", "loki"}
    for source in datasources.values():
        # URLs come from the environment, named in the file's comments.
        assert ENVIRONMENT.fullmatch(source["url"]), source
        assert source["access"] == "proxy"
    assert sum(bool(s.get("isDefault")) for s in datasources.values()) <= 1


def test_every_panel_uses_a_datasource_variable_of_its_own_type() -> None:
    for board in BOARDS.values():
        sources = datasource_variables(board)
        for panel in panels(board):
            if panel["type"] == "row":
                continue
            for reference in [panel["datasource"], *(t["datasource"] for t in panel["targets"])]:
                assert sources[reference["uid"]]["query"] == reference["type"], panel["title"]


def test_the_dashboard_provider_loads_every_dashboard_into_the_charts_folder() -> None:
    (provider,) = provisioned(DASHBOARD_PROVIDERS_FILE, "providers")
    # Grafana run with this repository's provisioning directory (GF_PATHS_PROVISIONING).
    path = Path(
        expand(provider["options"]["path"], {"GF_PATHS_PROVISIONING": str(PROVISIONING_DIR)})
    )
    chart_folder = yaml.safe_load(CHART_VALUES.read_text())["monitoring"]["dashboards"]["folder"]

    assert provider["type"] == "file"
    assert provider["folder"] == chart_folder
    assert path.resolve() == DASHBOARD_FILES[0].parent.resolve()
    assert {p.name for p in path.resolve().glob("*.json")} == set(generator().ALL)
    assert not provider["options"].get("foldersFromFilesStructure")
