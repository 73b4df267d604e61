#!/usr/bin/env python3
"""Write observability/grafana/dashboards/*.json from the definitions below.

`python observability/grafana/generate.py` rewrites them; `--check` exits 1 when a
committed dashboard differs (tests/observability runs it). Panels are declared once here, so
every panel gets a unit, a description and the same variables.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DASHBOARDS = Path(__file__).resolve().parent / "dashboards"
SCHEMA_VERSION = 41
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
# The selector every service query carries: the dashboard's variables.
SERVICE = 'namespace=~"$namespace", pod=~"$pod"'
ROUTE = f'{SERVICE}, handler=~"$route"'
RULE = 'namespace=~"$namespace", handler=~"$route"'  # recording rules keep no pod label
HTTP_COUNT = "http_request_duration_seconds_count"


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str


@dataclass(frozen=True)
class Panel:
    title: str
    description: str
    unit: str
    queries: tuple[Query, ...]
    width: int = 12


def variable(name: str, label: str, query: str) -> dict[str, Any]:
    """A multi-value query variable with "All" (a regex `.*`) as its default."""
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DATASOURCE,
        "query": query,
        "definition": query,
        "refresh": 2,
        "includeAll": True,
        "multi": True,
        "allValue": ".*",
        "current": {"text": "All", "value": "$__all"},
        "sort": 1,
    }


def templating() -> dict[str, Any]:
    return {
        "list": [
            {
                "name": "datasource",
                "label": "Prometheus",
                "type": "datasource",
                "query": "prometheus",
                "current": {"text": "default", "value": "default"},
            },
            variable(
                "namespace",
                "Namespace",
                "label_values(http_request_duration_seconds_count, namespace)",
            ),
            variable(
                "pod",
                "Pod",
                'label_values(http_request_duration_seconds_count{namespace=~"$namespace"}, pod)',
            ),
            variable(
                "route",
                "Route",
                f'label_values({HTTP_COUNT}{{namespace=~"$namespace"}}, handler)',
            ),
        ]
    }


def panels_json(panels: list[Panel]) -> list[dict[str, Any]]:
    out, x, y = [], 0, 0
    for index, panel in enumerate(panels, start=1):
        if x + panel.width > 24:
            x, y = 0, y + 8
        out.append(
            {
                "id": index,
                "type": "timeseries",
                "title": panel.title,
                "description": panel.description,
                "datasource": DATASOURCE,
                "gridPos": {"h": 8, "w": panel.width, "x": x, "y": y},
                "fieldConfig": {"defaults": {"unit": panel.unit}, "overrides": []},
                "options": {
                    "legend": {"displayMode": "table", "placement": "bottom", "showLegend": True},
                    "tooltip": {"mode": "multi", "sort": "desc"},
                },
                "targets": [
                    {
                        "refId": chr(ord("A") + i),
                        "datasource": DATASOURCE,
                        "expr": q.expr,
                        "legendFormat": q.legend,
                    }
                    for i, q in enumerate(panel.queries)
                ],
            }
        )
        x += panel.width
    return out


def dashboard(uid: str, title: str, description: str, panels: list[Panel]) -> dict[str, Any]:
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["berth"],
        "timezone": "browser",
        "editable": False,
        "graphTooltip": 1,
        "time": {"from": "now-1h", "to": "now"},
        "refresh": "30s",
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "templating": templating(),
        "annotations": {"list": []},
        "panels": panels_json(panels),
    }


SERVICE_OVERVIEW = dashboard(
    "berth-service",
    "berth / Service",
    "Requests, errors and latency per route, in-flight work, and the database pools of the"
    " berth service.",
    [
        Panel(
            "Requests per route",
            "Requests per second by route template (recording rule berth:http_requests:rate5m).",
            "reqps",
            (Query(f"berth:http_requests:rate5m{{{RULE}}}", "{{handler}}"),),
        ),
        Panel(
            "5xx ratio per route",
            "Share of requests answered with a 5xx, by route (berth:http_errors:ratio_rate5m).",
            "percentunit",
            (Query(f"berth:http_errors:ratio_rate5m{{{RULE}}}", "{{handler}}"),),
        ),
        Panel(
            "Latency p50 / p95 / p99",
            "Request duration quantiles by route, from the histogram's buckets.",
            "s",
            (
                Query(f"berth:http_request_duration_seconds:p50_5m{{{RULE}}}", "p50 {{handler}}"),
                Query(f"berth:http_request_duration_seconds:p95_5m{{{RULE}}}", "p95 {{handler}}"),
                Query(f"berth:http_request_duration_seconds:p99_5m{{{RULE}}}", "p99 {{handler}}"),
            ),
        ),
        Panel(
            "Status codes",
            "Requests per second by exact status code (not grouped into 2xx/5xx).",
            "reqps",
            (
                Query(
                    f"sum by (status) (rate({HTTP_COUNT}{{{ROUTE}}}[$__rate_interval]))",
                    "{{status}}",
                ),
            ),
        ),
        Panel(
            "In-flight requests",
            "Requests being served right now, per pod.",
            "short",
            (Query(f"sum by (pod) (http_requests_inprogress{{{SERVICE}}})", "{{pod}}"),),
        ),
        Panel(
            "Control-plane pool",
            "Database connections checked out against the pool's size and overflow, per pod.",
            "short",
            (
                Query(
                    f"sum by (pod) (berth_db_pool_checked_out{{{SERVICE}}})", "checked out {{pod}}"
                ),
                Query(f"sum by (pod) (berth_db_pool_size{{{SERVICE}}})", "size {{pod}}"),
                Query(f"sum by (pod) (berth_db_pool_overflow{{{SERVICE}}})", "overflow {{pod}}"),
            ),
        ),
        Panel(
            "Tenant engines",
            "Tenant engines open in each pod's bounded cache, and their connections checked out.",
            "short",
            (
                Query(f"sum by (pod) (berth_tenant_engines_open{{{SERVICE}}})", "engines {{pod}}"),
                Query(
                    f"sum by (pod) (berth_tenant_connections_checked_out{{{SERVICE}}})",
                    "connections {{pod}}",
                ),
            ),
        ),
        Panel(
            "Tenant engine evictions",
            "Engines closed to make room in the cache, per second: a cache too small for the"
            " tenants in use.",
            "ops",
            (
                Query(
                    f"sum by (pod) (rate(berth_tenant_engine_evictions_total{{{SERVICE}}}"
                    "[$__rate_interval]))",
                    "{{pod}}",
                ),
            ),
        ),
    ],
)

ALL = {"berth-service.json": SERVICE_OVERVIEW}


def rendered(board: dict[str, Any]) -> str:
    return json.dumps(board, indent=2, sort_keys=False) + "\n"


def main(argv: list[str]) -> int:
    stale = [
        name
        for name, board in ALL.items()
        if not (DASHBOARDS / name).is_file() or (DASHBOARDS / name).read_text() != rendered(board)
    ]
    if "--check" in argv:
        for name in stale:
            print(f"observability/grafana/dashboards/{name} is out of date: run {__file__}")
        return 1 if stale else 0
    DASHBOARDS.mkdir(exist_ok=True)
    for name, board in ALL.items():
        (DASHBOARDS / name).write_text(rendered(board))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
