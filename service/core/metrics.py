"""Prometheus metrics: HTTP (latency, in-progress), DB pools, build info.

The rule for names: each feature declares its metric names once, in its own `metrics.py`
(this module for the HTTP, pool and build metrics every app has; `service/tenants/metrics.py`
for the tenant registry and engines), registered into the app's `Metrics.registry`.
Dashboards, alert rules and tests import the names from there and never retype them.

Each app gets its own registry, so building the app twice in a process (tests) cannot raise
"Duplicated timeseries". With several workers, PROMETHEUS_MULTIPROC_DIR switches to
prometheus_client's multiprocess mode: values live in shared files and `/metrics` aggregates.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypeVar

from fastapi import FastAPI
from prometheus_client import CONTENT_TYPE_LATEST as PROMETHEUS_CONTENT_TYPE
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Metric,
    ProcessCollector,
    generate_latest,
    multiprocess,
    start_http_server,
)
from prometheus_client.registry import Collector
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import QueuePool
from starlette.types import Scope

from service.core.middleware import route_template
from service.core.ratelimit import RULES
from service.core.store import RedisErrorKind

# Names as scraped (see the rule above).
HTTP_REQUEST_DURATION = "http_request_duration_seconds"
HTTP_REQUESTS_INPROGRESS = "http_requests_inprogress"
# The handler label of a request no route matches (a 404, a scanner): never the raw path.
UNMATCHED_HANDLER = "none"
DB_POOL_SIZE = "berth_db_pool_size"
DB_POOL_CHECKED_OUT = "berth_db_pool_checked_out"
DB_POOL_OVERFLOW = "berth_db_pool_overflow"
BUILD_INFO = "berth_build_info"
# prometheus_client adds `_total` to counters; this is the name as scraped.
RATE_LIMIT_FALLBACKS = "berth_rate_limit_fallbacks_total"
RATE_LIMIT_REJECTIONS = "berth_rate_limit_rejections_total"
CACHE_LOOKUPS = "berth_cache_lookups_total"
LOCAL_CACHE_LOOKUPS = "berth_local_cache_lookups_total"
LOCAL_CACHE_ENTRIES = "berth_local_cache_entries"
LOCAL_CACHE_BYTES = "berth_local_cache_bytes"
LOCAL_CACHE_MAX_BYTES = "berth_local_cache_max_bytes"
LOCAL_CACHE_LIVE = "berth_local_cache_live"
LOCAL_CACHE_INVALIDATIONS = "berth_local_cache_invalidations_total"
REDIS_ERRORS = "berth_redis_errors_total"
DB_ERRORS = "berth_db_errors_total"
EVENT_LOOP_LAG = "berth_event_loop_lag_seconds"
DEPENDENCY_READY = "berth_dependency_ready"
# prometheus_client's process collector (Linux /proc): what the dashboards chart per pod.
PROCESS_CPU = "process_cpu_seconds_total"
PROCESS_RESIDENT_MEMORY = "process_resident_memory_bytes"
MULTIPROC_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"

# Fine enough below 100 ms for a per-route p99 of a fast service, coarse above a second.
LATENCY_BUCKETS: Sequence[float] = (
    0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.035, 0.05, 0.075,
    0.1, 0.15, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip


# How late the event loop wakes a sleeper: a blocked loop shows here before it shows in p99.
EVENT_LOOP_LAG_BUCKETS: Sequence[float] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)  # fmt: skip
# How often the lag probe wakes: cheap (two wake-ups a second), fine enough for a 5m rate.
EVENT_LOOP_PROBE_SECONDS = 0.5


class CacheResult(StrEnum):
    HIT = "hit"
    MISS = "miss"


class LocalLookupResult(StrEnum):
    """The `result` label of berth_local_cache_lookups_total."""

    HIT = "hit"
    MISS = "miss"
    BYPASS = "bypass"  # the invalidation connection was down: Redis was asked


class InvalidationReason(StrEnum):
    """The `reason` label of berth_local_cache_invalidations_total."""

    KEY = "key"  # Redis said a tracked key changed (any replica wrote or it expired)
    FLUSH = "flush"  # Redis said every key changed (FLUSHDB, FLUSHALL)
    DISCONNECT = "disconnect"  # the invalidation connection was lost: everything dropped


@dataclass(frozen=True, slots=True)
class LocalCacheMetrics:
    """The coherent in-process cache's series (service/core/local_cache.py)."""

    hit: Counter
    miss: Counter
    bypass: Counter  # looked up while the invalidation connection was down
    entries: Gauge
    size_bytes: Gauge  # what counts against BERTH_CACHE__LOCAL_MAX_BYTES
    live: Gauge  # 1 while served from, 0 while bypassed
    invalidations: dict[InvalidationReason, Counter]


class DbErrorKind(StrEnum):
    CONNECTION = "connection"  # the server refused, dropped or is not there: a 503
    POOL_TIMEOUT = "pool_timeout"  # no pooled connection came free in time: a 503
    STATEMENT = "statement"  # the server refused a statement (not a conflict): a 500


@dataclass(frozen=True, slots=True)
class CacheLookups:
    """One cache's children of berth_cache_lookups_total."""

    hit: Counter
    miss: Counter


LabelValue = TypeVar("LabelValue", bound=StrEnum)


def children_by(
    counter: Counter, label: str, values: type[LabelValue]
) -> dict[LabelValue, Counter]:
    """One child of `counter` per value of `values` under `label`, resolved once: every series
    exists from the start at 0, and counting costs no label lookup."""
    return {value: counter.labels(**{label: value.value}) for value in values}


def is_multiprocess() -> bool:
    return bool(os.environ.get(MULTIPROC_DIR_ENV))


class Metrics:
    """The app's metric objects and the registry `/metrics` exposes."""

    def __init__(self, *, version: str, commit: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._refreshers: list[Callable[[], None]] = []
        # Registered first, so that every scrape (the /metrics route or the metrics port)
        # refreshes the pool gauges before they are read.
        self.registry.register(_Refresh(self._refreshers))
        # This process's CPU and memory. With several workers the scrape reads the shared
        # files instead, which hold no process metrics: the pod's cAdvisor figures remain.
        ProcessCollector(registry=self.registry)
        self.inprogress = Gauge(
            HTTP_REQUESTS_INPROGRESS,
            "HTTP requests being served.",
            ("method", "handler"),
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        # The series prometheus-fastapi-instrumentator's `latency()` made (same name, help,
        # label order and buckets), observed here on cached children (`HttpMetrics`).
        self.latency = Histogram(
            HTTP_REQUEST_DURATION,
            "Duration of HTTP requests in seconds, by route template.",
            ("handler", "method", "status"),
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        pool_labels = ("pool",)
        self.pool_size = Gauge(
            DB_POOL_SIZE, "Configured pool size.", pool_labels,
            registry=self.registry, multiprocess_mode="livesum",
        )  # fmt: skip
        self.pool_checked_out = Gauge(
            DB_POOL_CHECKED_OUT, "Connections in use.", pool_labels,
            registry=self.registry, multiprocess_mode="livesum",
        )  # fmt: skip
        self.pool_overflow = Gauge(
            DB_POOL_OVERFLOW, "Connections open beyond pool_size.", pool_labels,
            registry=self.registry, multiprocess_mode="livesum",
        )  # fmt: skip
        build_info = Gauge(
            BUILD_INFO, "Build of the running service (always 1).", ("version", "commit"),
            registry=self.registry, multiprocess_mode="max",
        )  # fmt: skip
        build_info.labels(version=version, commit=commit).set(1)
        self.rate_limit_fallbacks = Counter(
            RATE_LIMIT_FALLBACKS.removesuffix("_total"),
            "Rate-limit decisions made in process because Redis did not answer, by rule.",
            ("rule",),
            registry=self.registry,
        )
        self.rate_limit_rejections = Counter(
            RATE_LIMIT_REJECTIONS.removesuffix("_total"),
            "Requests refused with 429 by a rate limit, by rule.",
            ("rule",),
            registry=self.registry,
        )
        self.cache_lookups = Counter(
            CACHE_LOOKUPS.removesuffix("_total"),
            "Key-value cache reads, by cache (article, auth_state) and result (hit, miss).",
            ("cache", "result"),
            registry=self.registry,
        )
        self.redis_errors = Counter(
            REDIS_ERRORS.removesuffix("_total"),
            "Redis calls that failed, by kind (timeout, connection, response).",
            ("kind",),
            registry=self.registry,
        )
        self.db_errors = Counter(
            DB_ERRORS.removesuffix("_total"),
            "Database errors that reached a request, by kind (connection, pool_timeout, "
            "statement).",
            ("kind",),
            registry=self.registry,
        )
        # Every series exists from the start, at 0: a rate over it is 0, not "no data".
        for rule in RULES:
            self.rate_limit_rejections.labels(rule=rule)
            self.rate_limit_fallbacks.labels(rule=rule)
        for kinds, counter in ((RedisErrorKind, self.redis_errors), (DbErrorKind, self.db_errors)):
            for kind in kinds:
                counter.labels(kind=kind.value)
        self.event_loop_lag = Histogram(
            EVENT_LOOP_LAG,
            "How much later than asked the event loop woke a timer, in seconds.",
            buckets=EVENT_LOOP_LAG_BUCKETS,
            registry=self.registry,
        )
        self.dependency_ready = Gauge(
            DEPENDENCY_READY,
            "1 when the dependency's last readiness check passed, 0 when it failed.",
            ("dependency",),
            registry=self.registry,
            multiprocess_mode="livemin",
        )

    def local_cache_metrics(self, max_bytes: int) -> LocalCacheMetrics:
        """The coherent in-process cache's series, registered when a cache is made (a pod
        without one exports none of them, so "bypassed" never means "absent")."""
        lookups = children_by(
            Counter(
                LOCAL_CACHE_LOOKUPS.removesuffix("_total"),
                "Reads of Redis keys answered by the coherent in-process cache, by result "
                "(hit, miss, bypass: the invalidation connection was down).",
                ("result",),
                registry=self.registry,
            ),
            "result",
            LocalLookupResult,
        )
        Gauge(
            LOCAL_CACHE_MAX_BYTES,
            "The bound of the coherent in-process cache (BERTH_CACHE__LOCAL_MAX_BYTES).",
            registry=self.registry,
            multiprocess_mode="livesum",
        ).set(max_bytes)
        return LocalCacheMetrics(
            hit=lookups[LocalLookupResult.HIT],
            miss=lookups[LocalLookupResult.MISS],
            bypass=lookups[LocalLookupResult.BYPASS],
            entries=Gauge(
                LOCAL_CACHE_ENTRIES,
                "Entries in the coherent in-process cache.",
                registry=self.registry,
                multiprocess_mode="livesum",
            ),
            size_bytes=Gauge(
                LOCAL_CACHE_BYTES,
                "Bytes of keys and values in the coherent in-process cache.",
                registry=self.registry,
                multiprocess_mode="livesum",
            ),
            live=Gauge(
                LOCAL_CACHE_LIVE,
                "1 while the in-process cache is served from, 0 while it is bypassed.",
                registry=self.registry,
                multiprocess_mode="livemin",
            ),
            invalidations=children_by(
                Counter(
                    LOCAL_CACHE_INVALIDATIONS.removesuffix("_total"),
                    "Invalidations of the in-process cache, by reason (key, flush, disconnect).",
                    ("reason",),
                    registry=self.registry,
                ),
                "reason",
                InvalidationReason,
            ),
        )

    def cache_lookups_of(self, cache: str) -> CacheLookups:
        """The hit and miss counters of one cache, resolved once (no label lookup per read)."""
        return CacheLookups(
            hit=self.cache_lookups.labels(cache=cache, result=CacheResult.HIT.value),
            miss=self.cache_lookups.labels(cache=cache, result=CacheResult.MISS.value),
        )

    async def watch_event_loop(self, interval_seconds: float = EVENT_LOOP_PROBE_SECONDS) -> None:
        """Observe how late each wake-up comes; runs until cancelled (the lifespan's task)."""
        loop = asyncio.get_running_loop()
        observe = self.event_loop_lag.observe
        while True:
            asked_at = loop.time()
            await asyncio.sleep(interval_seconds)
            observe(max(0.0, loop.time() - asked_at - interval_seconds))

    def refresh_on_scrape(self, refresh: Callable[[], None]) -> None:
        """Call `refresh` before every scrape (gauges read from a live object)."""
        self._refreshers.append(refresh)

    def track_pool(self, engine: AsyncEngine, pool_name: str) -> None:
        """Keep pool gauges current from pool events (so multiprocess mode sees them too).

        `checkin` fires before the pool takes the connection back, so checked-out connections
        are counted by increments rather than read from the pool inside the event.
        """
        pool = engine.sync_engine.pool
        if not isinstance(pool, QueuePool):
            return
        checked_out = self.pool_checked_out.labels(pool=pool_name)
        checked_out.set(pool.checkedout())

        def refresh() -> None:
            self.pool_size.labels(pool=pool_name).set(pool.size())
            self.pool_overflow.labels(pool=pool_name).set(max(0, pool.overflow()))

        def on_checkout(*_: Any) -> None:
            checked_out.inc()
            refresh()

        def on_checkin(*_: Any) -> None:
            checked_out.dec()

        event.listen(pool, "checkout", on_checkout)
        event.listen(pool, "checkin", on_checkin)
        self._refreshers.append(refresh)
        refresh()

    def scraped_registry(self) -> CollectorRegistry:
        """What a scrape reads: this app's registry, or with several workers the shared
        multiprocess files."""
        if not is_multiprocess():
            return self.registry
        return multiprocess_registry()

    def exposition(self) -> bytes:
        return generate_latest(self.scraped_registry())

    def http_metrics(self, excluded_paths: Iterable[str]) -> HttpMetrics:
        """The per-request recorder `ObservabilityMiddleware` feeds (service/core/middleware.py)."""
        return HttpMetrics(self, excluded_paths)


# Bounds on the label children remembered: handlers are route templates or "none", methods
# the few httptools parses, statuses the few the app sends, so neither is reached in
# practice; they only cap the worst case (past them a child is looked up per request).
_SERIES_CACHE_SIZE = 4096
_STATUSES_PER_SERIES = 64


class RouteSeries:
    """The children of one (method, handler): its in-progress gauge and its latency histogram
    by status, each resolved once. prometheus_client's `labels()` validates the values, takes
    a lock and looks the child up on every call; a request here makes none."""

    __slots__ = ("_by_status", "_handler", "_latency", "_method", "inprogress")

    def __init__(self, metrics: Metrics, method: str, handler: str) -> None:
        self.inprogress: Gauge = metrics.inprogress.labels(method, handler)
        self._latency = metrics.latency
        self._method = method
        self._handler = handler
        self._by_status: dict[int, Histogram] = {}

    def start(self) -> None:
        self.inprogress.inc()

    def finish(self, status: int, seconds: float) -> None:
        self.inprogress.dec()
        child = self._by_status.get(status)
        if child is None:
            child = self._latency.labels(self._handler, self._method, str(status))
            if len(self._by_status) < _STATUSES_PER_SERIES:
                self._by_status[status] = child
        child.observe(seconds)


class HttpMetrics:
    """What prometheus-fastapi-instrumentator recorded per request, as berth configured it:
    latency by route template, method and exact status, the in-progress gauge by method and
    route template, unknown paths as "none", `excluded_paths` (probes, scrapes) not at all.

    Excluded paths are exact: a matched request is excluded by its template, an unmatched
    one by its path (upstream's `^path$` patterns, without a regular expression per request).
    """

    def __init__(self, metrics: Metrics, excluded_paths: Iterable[str]) -> None:
        self._metrics = metrics
        self._excluded = frozenset(excluded_paths)
        self._series: dict[tuple[str, str], RouteSeries] = {}

    def __len__(self) -> int:
        return len(self._series)

    def series_of(self, scope: Scope) -> RouteSeries | None:
        """The request's children, or None when it is not observed."""
        template = route_template(scope)
        if (scope["path"] if template is None else template) in self._excluded:
            return None
        key = (scope["method"], UNMATCHED_HANDLER if template is None else template)
        series = self._series.get(key)
        if series is None:
            series = RouteSeries(self._metrics, *key)
            if len(self._series) < _SERIES_CACHE_SIZE:
                self._series[key] = series
        return series


class _Refresh(Collector):
    """Runs the refreshers on every collection and contributes no metric of its own."""

    def __init__(self, refreshers: list[Callable[[], None]]) -> None:
        self.refreshers = refreshers

    def collect(self) -> Iterable[Metric]:
        for refresh in self.refreshers:
            refresh()
        return []

    def describe(self) -> Iterable[Metric]:
        return []


def multiprocess_registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return registry


def serve_metrics(registry: CollectorRegistry, host: str, port: int) -> Callable[[], None]:
    """Serve `registry` on a port of its own (prometheus_client's threaded server, any path);
    returns what stops it. The API port then has no /metrics, so an Ingress in front of the
    API never exposes it."""
    server, thread = start_http_server(port, addr=host, registry=registry)

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

    return stop


def mark_process_dead() -> None:
    """Drop this worker's live gauges from the shared files (multiprocess mode only)."""
    if is_multiprocess():
        multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]


def install_metrics_route(app: FastAPI, metrics: Metrics, path: str) -> None:
    from starlette.responses import Response

    async def prometheus_metrics() -> Response:
        return Response(metrics.exposition(), media_type=PROMETHEUS_CONTENT_TYPE)

    app.add_api_route(path, prometheus_metrics, include_in_schema=False, methods=["GET"])
