#!/usr/bin/env python3
"""Write observability/grafana/dashboards/*.json from the definitions below.

`python observability/grafana/generate.py` rewrites them; `--check` exits 1 when a
committed dashboard differs (tests/observability runs it). Panels are declared once here, so
every panel gets a unit, a description and the same variables, and every row says which
question its panels answer.

Metric names and label values are imported from the modules that define them (the service's
and the operator's `metrics.py`, their enums), never retyped; recorded names are looked up in
the recording rules file, so a renamed metric or rule fails here instead of leaving a panel
empty. The few series other programs export (Prometheus's `up`, kube-state-metrics) are named
in EXTERNAL below; tests/observability/support.py lists them as known.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any

REPOSITORY = Path(__file__).resolve().parents[2]
# The metric modules are imported from the checkout (the editable install does this too).
for _path in (REPOSITORY, REPOSITORY / "operator"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import yaml  # noqa: E402
from berth_operator.metrics import (  # noqa: E402
    DRIFT_REPAIRS,
    LEASE_HELD,
    RECONCILE_DURATION,
    RECONCILES,
    REGISTRY_WRITE_CONFLICTS,
    TENANTS,
    Handler,
    Result,
)
from berth_operator.resource import Phase  # noqa: E402

from service.articles.metrics import ARTICLE_WRITES, ArticleOperation  # noqa: E402
from service.core.metrics import (  # noqa: E402
    BUILD_INFO,
    CACHE_LOOKUPS,
    DB_ERRORS,
    DB_POOL_CHECKED_OUT,
    DB_POOL_OVERFLOW,
    DB_POOL_SIZE,
    DEPENDENCY_READY,
    EVENT_LOOP_LAG,
    HTTP_REQUEST_DURATION,
    HTTP_REQUESTS_INPROGRESS,
    LOCAL_CACHE_BYTES,
    LOCAL_CACHE_INVALIDATIONS,
    LOCAL_CACHE_LIVE,
    LOCAL_CACHE_LOOKUPS,
    LOCAL_CACHE_MAX_BYTES,
    PROCESS_CPU,
    PROCESS_RESIDENT_MEMORY,
    RATE_LIMIT_FALLBACKS,
    RATE_LIMIT_REJECTIONS,
    REDIS_ERRORS,
    CacheResult,
    DbErrorKind,
    InvalidationReason,
    LocalLookupResult,
)
from service.core.ratelimit import RULES  # noqa: E402
from service.core.store import RedisErrorKind  # noqa: E402
from service.identity.metrics import (  # noqa: E402
    LOGINS,
    REFRESH_TOKEN_REUSE,
    TOKEN_REFRESHES,
    LoginOutcome,
    RefreshOutcome,
)
from service.submissions.metrics import (  # noqa: E402
    SUBMISSION_LEASE_EXPIRIES,
    SUBMISSION_PROCESSING_SECONDS,
    SUBMISSION_QUEUE_DEPTH,
    SUBMISSIONS_PROCESSED,
    SUBMISSIONS_RECEIVED,
    ContentKind,
    Outcome,
)
from service.tenants.metrics import (  # noqa: E402
    EVICTION_REASONS,
    OTHER_TENANTS,
    TENANT_CONNECTIONS_CHECKED_OUT,
    TENANT_ENGINE_EVICTIONS,
    TENANT_ENGINES_OPEN,
    TENANT_REGISTRY_ENTRIES,
    TENANT_REGISTRY_INVALID,
    TENANT_REQUESTS,
)

DASHBOARDS = Path(__file__).resolve().parent / "dashboards"
RECORDING_RULES = REPOSITORY / "observability" / "prometheus" / "rules" / "berth-recording.yaml"
SCHEMA_VERSION = 41

# The datasources, as observability/grafana/provisioning/datasources/berth.yaml provisions
# them; each dashboard asks for its own through a datasource variable defaulting to these.
PROMETHEUS_UID = "berth-prometheus"
LOKI_UID = "berth-loki"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
LOKI = {"type": "loki", "uid": "${loki}"}

# Series of other programs: Prometheus's own per-target `up`, and kube-state-metrics' pod
# series (kube-prometheus-stack installs it), which carry the pod's namespace and pod labels.
UP = "up"
KUBE_RESTARTS = "kube_pod_container_status_restarts_total"
KUBE_READY = "kube_pod_status_ready"
EXTERNAL = {UP, KUBE_RESTARTS, KUBE_READY}

# The chart's container names (charts/berth/templates/deployment.yaml and
# operator/deployment.yaml): the scrape configs and the log pipeline label series and lines
# with them, and the process and pod series of the two are told apart by them.
API_CONTAINER = "api"
OPERATOR_CONTAINER = "operator"

# The selectors the queries carry: the dashboards' variables.
SERVICE = 'namespace=~"$namespace", pod=~"$pod"'
ROUTE = f'{SERVICE}, handler=~"$route"'
RULE = 'namespace=~"$namespace", handler=~"$route"'  # recording rules keep no pod label
API = f'{SERVICE}, container="{API_CONTAINER}"'
OPERATOR = 'namespace=~"$namespace", pod=~"$pod"'
OPERATOR_PROCESS = f'{OPERATOR}, container="{OPERATOR_CONTAINER}"'
RATE = "[$__rate_interval]"

HTTP_COUNT = f"{HTTP_REQUEST_DURATION}_count"
HTTP_BUCKET = f"{HTTP_REQUEST_DURATION}_bucket"


def recorded(name: str) -> str:
    """`name` if the recording rules file records it (so a renamed rule fails here)."""
    records = {
        rule["record"]
        for group in yaml.safe_load(RECORDING_RULES.read_text())["groups"]
        for rule in group["rules"]
        if "record" in rule
    }
    if name not in records:
        raise SystemExit(f"{RECORDING_RULES} records no {name}")
    return name


HTTP_RATE = recorded("berth:http_requests:rate5m")
HTTP_ERROR_RATIO = recorded("berth:http_errors:ratio_rate5m")
HTTP_QUANTILES = {
    q: recorded(f"berth:http_request_duration_seconds:{q}_5m") for q in ("p50", "p95", "p99")
}


def listed(values: Any) -> str:
    """An enum's (or a tuple's) values for a description: `a, b, c`."""
    return ", ".join(str(value) for value in values)


def regex(values: Any) -> str:
    return "|".join(str(value) for value in values)


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str
    format: str = "time_series"


# The legend of a panel's bound (Panel.bound).
BOUND = "bound"


@dataclass(frozen=True)
class Panel:
    title: str
    description: str
    unit: str
    queries: tuple[Query, ...]
    width: int = 12
    kind: str = "timeseries"
    stacked: bool = False
    height: int = 8
    # An expression of one series, a limit berth exports: drawn as a red dashed line named
    # BOUND over the queries.
    bound: str | None = None
    datasource: dict[str, str] = field(default_factory=lambda: DATASOURCE)


@dataclass(frozen=True)
class Row:
    """A Grafana row: its title is the question its panels answer."""

    title: str
    panels: tuple[Panel, ...]


def quantiles(
    bucket: str, selector: str, by: str, legend: str, levels: tuple[float, ...] = (0.5, 0.95, 0.99)
) -> tuple[Query, ...]:
    """Quantiles (p50, p95 and p99 unless told) from a histogram's buckets, summed by `le`
    and `by`."""
    return tuple(
        Query(
            f"histogram_quantile({q}, sum by (le, {by}) (rate({bucket}{{{selector}}}{RATE})))",
            f"p{round(q * 100)} {legend}",
        )
        for q in levels
    )


def rate_by(metric: str, by: str, selector: str) -> str:
    return f"sum by ({by}) (rate({metric}{{{selector}}}{RATE}))"


# -- variables ---------------------------------------------------------------------------


def datasource_variable(name: str, label: str, kind: str, uid: str) -> dict[str, Any]:
    """Which datasource of `kind` the panels use; the provisioned one by default (Grafana
    falls back to the default datasource of that type where there is no such uid)."""
    return {
        "name": name,
        "label": label,
        "type": "datasource",
        "query": kind,
        "current": {"text": uid, "value": uid},
    }


def query_variable(name: str, label: str, query: str) -> dict[str, Any]:
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


def textbox_variable(name: str, label: str, default: str, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "label": label,
        "type": "textbox",
        "description": description,
        "query": default,
        "current": {"text": default, "value": default},
    }


PROMETHEUS_VARIABLE = datasource_variable("datasource", "Prometheus", "prometheus", PROMETHEUS_UID)


def namespace_and_pod(metric: str) -> list[dict[str, Any]]:
    """namespace and pod, from a series every pod of that program always exports."""
    return [
        query_variable("namespace", "Namespace", f"label_values({metric}, namespace)"),
        query_variable("pod", "Pod", f'label_values({metric}{{namespace=~"$namespace"}}, pod)'),
    ]


ROUTE_VARIABLE = query_variable(
    "route", "Route", f'label_values({HTTP_COUNT}{{namespace=~"$namespace"}}, handler)'
)
SERVICE_VARIABLES = [PROMETHEUS_VARIABLE, *namespace_and_pod(BUILD_INFO), ROUTE_VARIABLE]


# -- the JSON ------------------------------------------------------------------------------


def panel_json(panel: Panel, panel_id: int, x: int, y: int) -> dict[str, Any]:
    defaults: dict[str, Any] = {"unit": panel.unit}
    options: dict[str, Any]
    if panel.kind == "timeseries":
        if panel.stacked:
            defaults["custom"] = {"stacking": {"mode": "normal"}, "fillOpacity": 30}
        options = {
            "legend": {"displayMode": "table", "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "multi", "sort": "desc"},
        }
    elif panel.kind == "heatmap":
        options = {
            "calculate": False,
            "yAxis": {"unit": "s", "axisLabel": "duration"},
            "cellValues": {"unit": panel.unit},
            "color": {"mode": "scheme", "scheme": "Oranges", "steps": 64},
            "filterValues": {"le": 1e-9},
            "rowsFrame": {"layout": "auto"},
            "tooltip": {"mode": "single", "yHistogram": True},
            "legend": {"show": True},
        }
    elif panel.kind == "logs":
        options = {
            "showTime": True,
            "wrapLogMessage": True,
            "enableLogDetails": True,
            "sortOrder": "Descending",
            "dedupStrategy": "none",
        }
    else:
        raise ValueError(f"unknown panel kind {panel.kind}")
    queries = panel.queries
    overrides: list[dict[str, Any]] = []
    if panel.bound is not None:
        queries = (*queries, Query(panel.bound, BOUND))
        # Matched by its name (the schema takes no refId matcher): red, dashed, not stacked.
        overrides.append(
            {
                "matcher": {"id": "byNames", "options": {"mode": "include", "names": [BOUND]}},
                "properties": [
                    {"id": "color", "value": {"mode": "fixed", "fixedColor": "red"}},
                    {"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}},
                    {"id": "custom.stacking", "value": {"mode": "none"}},
                ],
            }
        )
    targets = []
    for i, q in enumerate(queries):
        target: dict[str, Any] = {
            "refId": chr(ord("A") + i),
            "datasource": panel.datasource,
            "expr": q.expr,
        }
        if panel.kind == "logs":
            target["queryType"] = "range"
        else:
            target["legendFormat"] = q.legend
            target["format"] = q.format
        targets.append(target)
    return {
        "id": panel_id,
        "type": panel.kind,
        "title": panel.title,
        "description": panel.description,
        "datasource": panel.datasource,
        "gridPos": {"h": panel.height, "w": panel.width, "x": x, "y": y},
        "fieldConfig": {"defaults": defaults, "overrides": overrides},
        "options": options,
        "targets": targets,
    }


def panels_json(rows: list[Row]) -> list[dict[str, Any]]:
    """Each row (expanded) and its panels below it, left to right, wrapping at 24 columns."""
    out: list[dict[str, Any]] = []
    y = 0
    for row in rows:
        out.append(
            {
                "id": len(out) + 1,
                "type": "row",
                "title": row.title,
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
                "panels": [],
            }
        )
        y += 1
        x, line_height = 0, 0
        for panel in row.panels:
            if x + panel.width > 24:
                x, y, line_height = 0, y + line_height, 0
            out.append(panel_json(panel, len(out) + 1, x, y))
            x += panel.width
            line_height = max(line_height, panel.height)
        y += line_height
    return out


def dashboard(
    uid: str, title: str, description: str, variables: list[dict[str, Any]], rows: list[Row]
) -> dict[str, Any]:
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
        "templating": {"list": variables},
        "annotations": {"list": []},
        "links": [
            {
                "title": "berth dashboards",
                "type": "dashboards",
                "tags": ["berth"],
                "icon": "external link",
                "tooltip": "The other berth dashboards, with the same variables and time",
                "url": "",
                "targetBlank": False,
                "asDropdown": True,
                "includeVars": True,
                "keepTime": True,
            }
        ],
        "panels": panels_json(rows),
    }


# -- berth / Service -----------------------------------------------------------------------

CACHE_HITS = f'{SERVICE}, result="{CacheResult.HIT}"'
LOCAL_CACHE_HITS = f'{SERVICE}, result="{LocalLookupResult.HIT}"'
# The request ids are in every line's structured metadata (observability/alloy/config.alloy);
# the stream selector uses only labels the pipeline sets.
LOGS_QUERY = (
    f'{{namespace=~"$namespace", pod=~"$pod", container="{API_CONTAINER}"}}'
    ' | request_id=~"$request_id"'
)

SERVICE_OVERVIEW = dashboard(
    "berth-service",
    "berth / Service",
    "Requests, errors and latency per route, in-flight work, the database pools and tenant"
    " engines, the event loop, the pods and their dependencies, and the logs of one request.",
    [
        PROMETHEUS_VARIABLE,
        datasource_variable("loki", "Loki", "loki", LOKI_UID),
        *SERVICE_VARIABLES[1:],
        textbox_variable(
            "request_id",
            "Request id",
            ".*",
            "A request id (the X-Request-ID header, an error's correlationId) or a regex;"
            " .* shows every line.",
        ),
    ],
    [
        Row(
            "Traffic, errors and latency: how is each route doing?",
            (
                Panel(
                    "Requests per route",
                    f"Requests per second by route template (recording rule {HTTP_RATE});"
                    " unknown paths are `none`.",
                    "reqps",
                    (Query(f"{HTTP_RATE}{{{RULE}}}", "{{handler}}"),),
                    width=8,
                ),
                Panel(
                    "5xx ratio per route",
                    f"Share of requests answered with a 5xx, by route ({HTTP_ERROR_RATIO}).",
                    "percentunit",
                    (Query(f"{HTTP_ERROR_RATIO}{{{RULE}}}", "{{handler}}"),),
                    width=8,
                ),
                Panel(
                    "Latency p50 / p95 / p99 per route",
                    "Request duration quantiles by route, recorded from the histogram's"
                    " buckets over 5 minutes.",
                    "s",
                    tuple(
                        Query(f"{name}{{{RULE}}}", f"{q} {{{{handler}}}}")
                        for q, name in HTTP_QUANTILES.items()
                    ),
                    width=8,
                ),
                Panel(
                    "Latency distribution",
                    "Requests per second in each duration bucket of the selected routes and"
                    " pods (a heatmap of the histogram's buckets): a second band is a slow"
                    " path, a drift upwards is saturation.",
                    "reqps",
                    (
                        Query(
                            rate_by(HTTP_BUCKET, "le", ROUTE),
                            "{{le}}",
                            format="heatmap",
                        ),
                    ),
                    kind="heatmap",
                ),
                Panel(
                    "Status codes",
                    "Requests per second by exact status code (not grouped into 2xx/5xx),"
                    " stacked: the mix of answers.",
                    "reqps",
                    (Query(rate_by(HTTP_COUNT, "status", ROUTE), "{{status}}"),),
                    stacked=True,
                ),
            ),
        ),
        Row(
            "Saturation: is anything running out?",
            (
                Panel(
                    "In-flight requests",
                    "Requests being served right now, per pod.",
                    "short",
                    (Query(f"sum by (pod) ({HTTP_REQUESTS_INPROGRESS}{{{SERVICE}}})", "{{pod}}"),),
                    width=8,
                ),
                Panel(
                    "Control-plane pool",
                    "Database connections checked out against the pool's size and overflow,"
                    " per pod and pool.",
                    "short",
                    (
                        Query(
                            f"sum by (pod, pool) ({DB_POOL_CHECKED_OUT}{{{SERVICE}}})",
                            "checked out {{pod}} {{pool}}",
                        ),
                        Query(
                            f"sum by (pod, pool) ({DB_POOL_SIZE}{{{SERVICE}}})",
                            "size {{pod}} {{pool}}",
                        ),
                        Query(
                            f"sum by (pod, pool) ({DB_POOL_OVERFLOW}{{{SERVICE}}})",
                            "overflow {{pod}} {{pool}}",
                        ),
                    ),
                    width=8,
                ),
                Panel(
                    "Event-loop lag",
                    "How late the event loop wakes a timer, p50 and p99 per pod: a blocked"
                    " loop (CPU-bound or sync code) shows here before it shows in latency.",
                    "s",
                    quantiles(f"{EVENT_LOOP_LAG}_bucket", SERVICE, "pod", "{{pod}}")[::2],
                    width=8,
                ),
                Panel(
                    "Tenant engines",
                    "Tenant engines open in each pod's bounded cache, and the connections"
                    " checked out across their pools.",
                    "short",
                    (
                        Query(
                            f"sum by (pod) ({TENANT_ENGINES_OPEN}{{{SERVICE}}})", "engines {{pod}}"
                        ),
                        Query(
                            f"sum by (pod) ({TENANT_CONNECTIONS_CHECKED_OUT}{{{SERVICE}}})",
                            "connections {{pod}}",
                        ),
                    ),
                ),
                Panel(
                    "Tenant engine evictions",
                    "Engines closed per second, by reason"
                    f" ({listed(EVICTION_REASONS)}): steady capacity evictions mean a cache"
                    " too small for the tenants in use.",
                    "ops",
                    (Query(rate_by(TENANT_ENGINE_EVICTIONS, "reason", SERVICE), "{{reason}}"),),
                ),
            ),
        ),
        Row(
            "Dependencies: are the database and Redis answering?",
            (
                Panel(
                    "Readiness per dependency",
                    "1 while the pod's last readiness check of the dependency passed, 0 when it"
                    " failed (the lowest across the selected pods).",
                    "bool_yes_no",
                    (
                        Query(
                            f"min by (dependency) ({DEPENDENCY_READY}{{{SERVICE}}})",
                            "{{dependency}}",
                        ),
                    ),
                    width=8,
                ),
                Panel(
                    "Database errors by kind",
                    f"Database errors that reached a request, per second ({listed(DbErrorKind)}):"
                    " connection and pool_timeout answer 503, statement 500.",
                    "ops",
                    (Query(rate_by(DB_ERRORS, "kind", SERVICE), "{{kind}}"),),
                    width=8,
                ),
                Panel(
                    "Redis errors by kind",
                    f"Redis calls that failed, per second ({listed(RedisErrorKind)}).",
                    "ops",
                    (Query(rate_by(REDIS_ERRORS, "kind", SERVICE), "{{kind}}"),),
                    width=8,
                ),
                Panel(
                    "Cache hit ratio",
                    "Share of cache reads that found their key, per cache (article,"
                    " auth_state): a drop means more database reads.",
                    "percentunit",
                    (
                        Query(
                            f"{rate_by(CACHE_LOOKUPS, 'cache', CACHE_HITS)}"
                            f" / {rate_by(CACHE_LOOKUPS, 'cache', SERVICE)}",
                            "{{cache}}",
                        ),
                    ),
                    width=8,
                ),
                Panel(
                    "Local cache hit ratio",
                    "Share of reads of Redis keys (auth state, revocations, articles) the"
                    " coherent in-process cache answered, per pod: hits over all lookups"
                    f" ({listed(LocalLookupResult)}; `{LocalLookupResult.BYPASS}`: read while"
                    " the invalidation connection was down). A drop means more Redis round"
                    " trips. Pods without a local cache have no line.",
                    "percentunit",
                    (
                        Query(
                            f"{rate_by(LOCAL_CACHE_LOOKUPS, 'pod', LOCAL_CACHE_HITS)}"
                            f" / {rate_by(LOCAL_CACHE_LOOKUPS, 'pod', SERVICE)}",
                            "{{pod}}",
                        ),
                    ),
                    width=8,
                ),
                Panel(
                    "Local cache bypassed",
                    "1 while a pod's in-process cache is bypassed: its invalidation connection"
                    " to Redis is down or silent, so the cache is empty and every read goes to"
                    " Redis (slower, not wrong); BerthLocalCacheBypassed after 5 minutes. A pod"
                    " without a local cache (no Redis URL, BERTH_CACHE__LOCAL_MAX_BYTES=0)"
                    " exports none of its series and has no line.",
                    "bool_yes_no",
                    (
                        Query(
                            f"min by (pod) ({LOCAL_CACHE_LIVE}{{{SERVICE}}}) == bool 0", "{{pod}}"
                        ),
                    ),
                    width=8,
                ),
                Panel(
                    "Local cache size",
                    "Bytes of keys and values in each pod's in-process cache. The red dashed"
                    " line is the bound they run with, as the pods export it"
                    f" ({LOCAL_CACHE_MAX_BYTES}, from BERTH_CACHE__LOCAL_MAX_BYTES): the"
                    " highest of the pods shown (they differ only during a rollout that changes"
                    " it: pick a pod). Each worker has its own cache: with several, a pod's"
                    " bytes and its bound are both summed over them. At its bound the least"
                    " recently used entries go.",
                    "bytes",
                    (Query(f"sum by (pod) ({LOCAL_CACHE_BYTES}{{{SERVICE}}})", "{{pod}}"),),
                    bound=f"max(sum by (pod) ({LOCAL_CACHE_MAX_BYTES}{{{SERVICE}}}))",
                ),
                Panel(
                    "Local cache invalidations by reason",
                    f"Invalidations of the in-process cache per second, by reason"
                    f" ({listed(InvalidationReason)}): `{InvalidationReason.KEY}` counts each"
                    " tracked key Redis said changed (a write on any replica, an expiry),"
                    f" `{InvalidationReason.FLUSH}` a flush of Redis and"
                    f" `{InvalidationReason.DISCONNECT}` a lost invalidation connection, each"
                    " of which empties the whole cache.",
                    "ops",
                    (
                        Query(
                            rate_by(LOCAL_CACHE_INVALIDATIONS, "reason", SERVICE),
                            "{{reason}}",
                        ),
                    ),
                    stacked=True,
                ),
            ),
        ),
        Row(
            "Pods: are they up, ready and within their resources?",
            (
                Panel(
                    "Pods up",
                    "Service pods Prometheus scrapes successfully (up), per namespace.",
                    "short",
                    (Query(f"sum by (namespace) ({UP}{{{API}}})", "{{namespace}}"),),
                    width=4,
                ),
                Panel(
                    "Pods ready",
                    "Of the service pods Prometheus scrapes, those Kubernetes reports Ready"
                    " (kube-state-metrics), per namespace: fewer than up means failing"
                    " readiness probes.",
                    "short",
                    (
                        Query(
                            f'sum by (namespace) ({KUBE_READY}{{{SERVICE}, condition="true"}}'
                            f" and on (namespace, pod) {UP}{{{API}}})",
                            "{{namespace}}",
                        ),
                    ),
                    width=4,
                ),
                Panel(
                    "Container restarts",
                    f"Restarts of the {API_CONTAINER} container in the hour before each point,"
                    " per pod (kube-state-metrics): crashes, OOM kills, failed liveness probes.",
                    "short",
                    (
                        Query(
                            f"sum by (pod) (increase({KUBE_RESTARTS}{{{API}}}[1h]))",
                            "{{pod}}",
                        ),
                    ),
                    width=4,
                ),
                Panel(
                    "CPU",
                    "CPU time the service process uses per second, per pod (1 = one core).",
                    "percentunit",
                    (Query(rate_by(PROCESS_CPU, "pod", API), "{{pod}}"),),
                    width=6,
                ),
                Panel(
                    "Resident memory",
                    "Resident memory of the service process, per pod.",
                    "bytes",
                    (Query(f"sum by (pod) ({PROCESS_RESIDENT_MEMORY}{{{API}}})", "{{pod}}"),),
                    width=6,
                ),
            ),
        ),
        Row(
            "Logs: what happened in this request?",
            (
                Panel(
                    "Service logs",
                    "The service's log lines (Loki), filtered by the request id variable, which"
                    " matches the request_id structured metadata the log pipeline stores with"
                    " each line; open a line for its trace_id and tenant.",
                    "none",
                    (Query(LOGS_QUERY, ""),),
                    width=24,
                    height=12,
                    kind="logs",
                    datasource=LOKI,
                ),
            ),
        ),
    ],
)


# -- berth / Tenants and security -------------------------------------------------------------

LOGIN_FAILED = f'{SERVICE}, outcome!="{LoginOutcome.SUCCESS}"'
SUBMISSION_FAILED = f'{SERVICE}, outcome="{Outcome.FAILED}"'
REFUSED = regex(
    s.value for s in (HTTPStatus.UNAUTHORIZED, HTTPStatus.FORBIDDEN, HTTPStatus.TOO_MANY_REQUESTS)
)

TENANTS_AND_SECURITY = dashboard(
    "berth-tenants-security",
    "berth / Tenants and security",
    "Logins, token refreshes and refresh-token reuse, rate limits and refused requests, the"
    " traffic of each configured tenant, the tenant registry, article writes and the"
    " submissions' processing and queue.",
    SERVICE_VARIABLES,
    [
        Row(
            "Authentication: are users getting in, and is anyone guessing?",
            (
                Panel(
                    "Logins by outcome",
                    f"Login attempts per second, by outcome ({listed(LoginOutcome)}).",
                    "ops",
                    (Query(rate_by(LOGINS, "outcome", SERVICE), "{{outcome}}"),),
                    width=8,
                    stacked=True,
                ),
                Panel(
                    "Failed login ratio",
                    "Share of login attempts that did not succeed: a rise without more traffic"
                    " is password guessing or a broken client.",
                    "percentunit",
                    (
                        Query(
                            f"sum (rate({LOGINS}{{{LOGIN_FAILED}}}{RATE}))"
                            f" / sum (rate({LOGINS}{{{SERVICE}}}{RATE}))",
                            "failed",
                        ),
                    ),
                    width=8,
                ),
                Panel(
                    "Token refreshes by outcome",
                    f"Refresh-token rotations per second, by outcome ({listed(RefreshOutcome)}).",
                    "ops",
                    (Query(rate_by(TOKEN_REFRESHES, "outcome", SERVICE), "{{outcome}}"),),
                    width=8,
                    stacked=True,
                ),
                Panel(
                    "Refresh-token reuse",
                    "Used refresh tokens presented again in the preceding rate interval: a"
                    " copied token; each one revoked its whole token family.",
                    "short",
                    (
                        Query(
                            f"sum by (pod) (increase({REFRESH_TOKEN_REUSE}{{{SERVICE}}}{RATE}))",
                            "{{pod}}",
                        ),
                    ),
                    width=24,
                ),
            ),
        ),
        Row(
            "Rate limits: who is being refused, and do the limits still hold?",
            (
                Panel(
                    "Rate-limit rejections by rule",
                    f"Requests refused with 429 per second, by rule ({listed(RULES)}).",
                    "reqps",
                    (Query(rate_by(RATE_LIMIT_REJECTIONS, "rule", SERVICE), "{{rule}}"),),
                    width=8,
                ),
                Panel(
                    "Rate-limit fallbacks by rule",
                    "Rate-limit decisions made in one pod's memory because Redis did not"
                    " answer, per second: while this is not 0, limits are per pod, not shared.",
                    "ops",
                    (Query(rate_by(RATE_LIMIT_FALLBACKS, "rule", SERVICE), "{{rule}}"),),
                    width=8,
                ),
                Panel(
                    "Refused requests by route",
                    f"Requests answered {REFUSED.replace('|', ', ')} per second, by route and"
                    " status: which endpoints are refused, and why.",
                    "reqps",
                    (
                        Query(
                            rate_by(HTTP_COUNT, "handler, status", f'{ROUTE}, status=~"{REFUSED}"'),
                            "{{status}} {{handler}}",
                        ),
                    ),
                    width=8,
                ),
            ),
        ),
        Row(
            "Tenants: who is using berth, and does every tenant's registry entry load?",
            (
                Panel(
                    "Requests per tenant",
                    "Requests served in a tenant's scope per second: the tenants named in"
                    " BERTH_OBSERVABILITY__METRICS_TENANTS by name, all others as"
                    f" `{OTHER_TENANTS}`.",
                    "reqps",
                    (Query(rate_by(TENANT_REQUESTS, "tenant", SERVICE), "{{tenant}}"),),
                    stacked=True,
                ),
                Panel(
                    "Registry entries by status",
                    "Valid tenant registry entries by status, as the pods read them (the"
                    " highest across pods).",
                    "short",
                    (
                        Query(
                            f"max by (status) ({TENANT_REGISTRY_ENTRIES}{{{SERVICE}}})",
                            "{{status}}",
                        ),
                    ),
                    width=6,
                ),
                Panel(
                    "Invalid registry entries",
                    "Registry files each pod skips as malformed: those tenants get 404 (the"
                    " tenant_entry_skipped log line names the file).",
                    "short",
                    (Query(f"max by (pod) ({TENANT_REGISTRY_INVALID}{{{SERVICE}}})", "{{pod}}"),),
                    width=6,
                ),
            ),
        ),
        Row(
            "Business: what are tenants writing?",
            (
                Panel(
                    "Article writes by operation",
                    f"Article writes committed per second, by operation"
                    f" ({listed(ArticleOperation)}); rolled-back writes are not counted.",
                    "ops",
                    (Query(rate_by(ARTICLE_WRITES, "operation", SERVICE), "{{operation}}"),),
                    width=24,
                    stacked=True,
                ),
            ),
        ),
        Row(
            "Submissions: are declarations processed, and does the queue keep up?",
            (
                Panel(
                    "Submissions received by content type",
                    "New submissions accepted (202) per second, by body format"
                    f" ({listed(ContentKind)}); replays of an idempotency key are not counted.",
                    "ops",
                    (
                        Query(
                            rate_by(SUBMISSIONS_RECEIVED, "content_type", SERVICE),
                            "{{content_type}}",
                        ),
                    ),
                    width=8,
                    stacked=True,
                ),
                Panel(
                    "Processing attempts by outcome",
                    f"Attempts the workers finished per second, by outcome ({listed(Outcome)}):"
                    f" `{Outcome.RETRIED}` will be tried again, `{Outcome.FAILED}` was the last"
                    f" attempt, `{Outcome.LOST}` lost its lease to another worker.",
                    "ops",
                    (Query(rate_by(SUBMISSIONS_PROCESSED, "outcome", SERVICE), "{{outcome}}"),),
                    width=8,
                    stacked=True,
                ),
                Panel(
                    "Failure ratio",
                    f"Share of finished attempts that ended `{Outcome.FAILED}` (given up), per"
                    " namespace; BerthSubmissionFailureRatio pages above 5% over 15 minutes.",
                    "percentunit",
                    (
                        Query(
                            f"{rate_by(SUBMISSIONS_PROCESSED, 'namespace', SUBMISSION_FAILED)}"
                            f" / {rate_by(SUBMISSIONS_PROCESSED, 'namespace', SERVICE)}",
                            "{{namespace}}",
                        ),
                    ),
                    width=8,
                ),
                Panel(
                    "Processing duration p50 / p99",
                    "Time from a claim to its result being stored, per attempt, from the"
                    " histogram's buckets.",
                    "s",
                    quantiles(
                        f"{SUBMISSION_PROCESSING_SECONDS}_bucket",
                        SERVICE,
                        "namespace",
                        "{{namespace}}",
                        levels=(0.5, 0.99),
                    ),
                    width=8,
                ),
                Panel(
                    "Queue depth by tenant",
                    "Submissions waiting (PENDING), by tenant (those in"
                    " BERTH_OBSERVABILITY__METRICS_TENANTS by name, the rest as"
                    f" `{OTHER_TENANTS}`), as the workers last counted them: each counts the whole"
                    " queue, so the highest across pods, not their sum.",
                    "short",
                    (
                        Query(
                            f"max by (tenant) ({SUBMISSION_QUEUE_DEPTH}{{{SERVICE}}})",
                            "{{tenant}}",
                        ),
                    ),
                    width=8,
                    stacked=True,
                ),
                Panel(
                    "Lease expiries",
                    "Claims whose lease ran out before a result, in the preceding rate"
                    " interval, per pod that requeued them: their worker died or hung.",
                    "short",
                    (
                        Query(
                            f"sum by (pod)"
                            f" (increase({SUBMISSION_LEASE_EXPIRIES}{{{SERVICE}}}{RATE}))",
                            "{{pod}}",
                        ),
                    ),
                    width=8,
                ),
            ),
        ),
    ],
)


# -- berth / Operator --------------------------------------------------------------------------

RECONCILE_FAILED = f'{OPERATOR}, result!="{Result.SUCCESS}"'

OPERATOR_DASHBOARD = dashboard(
    "berth-operator",
    "berth / Operator",
    "The Tenant operator: handler runs and their failures, how long they take, Tenants by"
    " phase, drift repairs, registry write conflicts, the single-instance Lease and the"
    " operator's pods.",
    [
        PROMETHEUS_VARIABLE,
        *namespace_and_pod(LEASE_HELD),
    ],
    [
        Row(
            "Reconciles: are handlers succeeding, and how fast?",
            (
                Panel(
                    "Reconciles by handler and result",
                    f"Handler runs per second, by handler ({listed(Handler)}) and result"
                    f" ({listed(Result)}).",
                    "ops",
                    (
                        Query(
                            rate_by(RECONCILES, "handler, result", OPERATOR),
                            "{{handler}} {{result}}",
                        ),
                    ),
                    width=8,
                ),
                Panel(
                    "Reconcile error ratio",
                    "Share of handler runs that ended in a temporary or permanent error, per"
                    " handler (0 while runs succeed).",
                    "percentunit",
                    (
                        Query(
                            f"({rate_by(RECONCILES, 'handler', RECONCILE_FAILED)}"
                            f" or 0 * {rate_by(RECONCILES, 'handler', OPERATOR)})"
                            f" / {rate_by(RECONCILES, 'handler', OPERATOR)}",
                            "{{handler}}",
                        ),
                    ),
                    width=8,
                ),
                Panel(
                    "Reconcile duration p50 / p95 / p99",
                    "How long a handler run takes, per handler, from the histogram's buckets.",
                    "s",
                    quantiles(f"{RECONCILE_DURATION}_bucket", OPERATOR, "handler", "{{handler}}"),
                    width=8,
                ),
            ),
        ),
        Row(
            "Tenants: are they Ready, and is anything drifting?",
            (
                Panel(
                    "Tenants by phase",
                    f"Tenants by the phase in their status ({listed(Phase)}), as the operator"
                    " last wrote it.",
                    "short",
                    (Query(f"max by (phase) ({TENANTS}{{{OPERATOR}}})", "{{phase}}"),),
                    width=8,
                    stacked=True,
                ),
                Panel(
                    "Drift repairs by kind",
                    "Things changed or dropped by hand and put back by the drift timer, in the"
                    " preceding rate interval, by kind: repeated repairs mean something keeps"
                    " undoing the operator's work.",
                    "short",
                    (
                        Query(
                            f"sum by (kind) (increase({DRIFT_REPAIRS}{{{OPERATOR}}}{RATE}))",
                            "{{kind}}",
                        ),
                    ),
                    width=8,
                ),
                Panel(
                    "Registry write conflicts",
                    "Registry Secret writes that lost a race (stale resourceVersion, Secret"
                    " gone) per second, each retried: steady conflicts mean a second writer.",
                    "ops",
                    (Query(rate_by(REGISTRY_WRITE_CONFLICTS, "pod", OPERATOR), "{{pod}}"),),
                    width=8,
                ),
            ),
        ),
        Row(
            "Operator pods: is exactly one instance working, and is it healthy?",
            (
                Panel(
                    "Lease held",
                    "1 while the pod holds the single-instance Lease: exactly one pod should.",
                    "bool_yes_no",
                    (Query(f"max by (pod) ({LEASE_HELD}{{{OPERATOR}}})", "{{pod}}"),),
                    width=6,
                ),
                Panel(
                    "Container restarts",
                    f"Restarts of the {OPERATOR_CONTAINER} container in the hour before each"
                    " point, per pod (kube-state-metrics).",
                    "short",
                    (
                        Query(
                            f"sum by (pod) (increase({KUBE_RESTARTS}{{{OPERATOR_PROCESS}}}[1h]))",
                            "{{pod}}",
                        ),
                    ),
                    width=6,
                ),
                Panel(
                    "CPU",
                    "CPU time the operator process uses per second, per pod (1 = one core).",
                    "percentunit",
                    (Query(rate_by(PROCESS_CPU, "pod", OPERATOR_PROCESS), "{{pod}}"),),
                    width=6,
                ),
                Panel(
                    "Resident memory",
                    "Resident memory of the operator process, per pod.",
                    "bytes",
                    (
                        Query(
                            f"sum by (pod) ({PROCESS_RESIDENT_MEMORY}{{{OPERATOR_PROCESS}}})",
                            "{{pod}}",
                        ),
                    ),
                    width=6,
                ),
            ),
        ),
    ],
)

ALL = {
    "berth-service.json": SERVICE_OVERVIEW,
    "berth-tenants-security.json": TENANTS_AND_SECURITY,
    "berth-operator.json": OPERATOR_DASHBOARD,
}


def rendered(board: dict[str, Any]) -> str:
    return json.dumps(board, indent=2, sort_keys=False) + "\n"


def main(argv: list[str]) -> int:
    stale = [
        name
        for name, board in ALL.items()
        if not (DASHBOARDS / name).is_file() or (DASHBOARDS / name).read_text() != rendered(board)
    ]
    extra = sorted(path.name for path in DASHBOARDS.glob("*.json") if path.name not in ALL)
    if "--check" in argv:
        for name in stale:
            print(f"observability/grafana/dashboards/{name} is out of date: run {__file__}")
        for name in extra:
            print(f"observability/grafana/dashboards/{name} is not generated: delete it")
        return 1 if stale or extra else 0
    DASHBOARDS.mkdir(exist_ok=True)
    for name, board in ALL.items():
        (DASHBOARDS / name).write_text(rendered(board))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
