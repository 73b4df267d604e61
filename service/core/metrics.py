"""Prometheus metrics: HTTP (prometheus-fastapi-instrumentator), DB pools, build info.

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
from http import HTTPStatus
from timeit import default_timer
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
from prometheus_fastapi_instrumentator import metrics as instrumentator_metrics
from prometheus_fastapi_instrumentator.middleware import PrometheusInstrumentatorMiddleware
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import QueuePool
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.core.middleware import route_template
from service.core.ratelimit import RULES
from service.core.store import RedisErrorKind

# Names as scraped (see the rule above).
HTTP_REQUEST_DURATION = "http_request_duration_seconds"
HTTP_REQUESTS_INPROGRESS = "http_requests_inprogress"
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
        self.observe_latency = instrumentator_metrics.latency(
            metric_name=HTTP_REQUEST_DURATION,
            metric_doc="Duration of HTTP requests in seconds, by route template.",
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

        local_lookups = Counter(
            LOCAL_CACHE_LOOKUPS.removesuffix("_total"),
            "Reads of Redis keys answered by the coherent in-process cache, by result (hit, "
            "miss, bypass: the invalidation connection was down).",
            ("result",),
            registry=self.registry,
        )
        self.local_cache = LocalCacheMetrics(
            hit=local_lookups.labels(result="hit"),
            miss=local_lookups.labels(result="miss"),
            bypass=local_lookups.labels(result="bypass"),
            entries=Gauge(
                LOCAL_CACHE_ENTRIES,
                "Entries in the coherent in-process cache.",
                registry=self.registry,
                multiprocess_mode="livesum",
            ),
            size_bytes=Gauge(
                LOCAL_CACHE_BYTES,
                "Bytes of keys and values in the coherent in-process cache (its bound).",
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

    def middleware_options(self, excluded_paths: Sequence[str]) -> dict[str, Any]:
        """Options for `InstrumentatorMiddleware`: exact status codes, templated handlers."""
        return {
            "metrics": self,
            "should_group_status_codes": False,
            "should_group_untemplated": True,
            "excluded_handlers": [f"^{path}$" for path in excluded_paths],
            "instrumentations": [self.observe_latency],
            "registry": self.registry,
        }


# Bound on the label children remembered per middleware: handlers are route templates or
# "none" and statuses few, so this is never reached in practice; it only caps the worst case.
_CHILD_CACHE_SIZE = 4096


class InstrumentatorMiddleware(PrometheusInstrumentatorMiddleware):
    """prometheus-fastapi-instrumentator's middleware with its per-request work cut down.

    It runs the configured instrumentations (the instrumentator's latency histogram, by
    handler/method/exact status) and the in-progress gauge, skips excluded handlers and names
    unknown paths "none", as upstream does; but upstream's `__call__` builds a Request, a
    Response and Headers per request, tries every route and awaits an empty `gather`, while
    this one reuses the request's cached route template and cached gauge children. Upstream
    also registers the in-progress gauge in the global registry, which breaks a second app in
    one process. Instrumentations here read only the `modified_*` fields of `Info`.
    """

    def __init__(self, app: ASGIApp, *, metrics: Metrics, **options: Any) -> None:
        super().__init__(app, should_instrument_requests_inprogress=False, **options)
        self.metrics = metrics
        self._excluded: dict[str, bool] = {}
        self._inprogress: dict[tuple[str, str], Any] = {}

    def _inprogress_child(self, method: str, handler: str) -> Any:
        child = self._inprogress.get((method, handler))
        if child is None:
            child = self.metrics.inprogress.labels(method, handler)
            if len(self._inprogress) < _CHILD_CACHE_SIZE:
                self._inprogress[method, handler] = child
        return child

    def _handler_of(self, scope: Scope) -> tuple[str, bool]:
        """(handler label, excluded?) as upstream derives them."""
        template = route_template(scope)
        if template is None:
            return "none", self._is_handler_excluded(scope["path"], False)
        excluded = self._excluded.get(template)
        if excluded is None:
            excluded = self._excluded[template] = self._is_handler_excluded(template, True)
        return template, excluded

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = default_timer()
        handler, excluded = self._handler_of(scope)
        if excluded:
            await self.app(scope, receive, send)
            return
        method = scope["method"]
        inprogress = self._inprogress_child(method, handler)
        inprogress.inc()
        status = HTTPStatus.INTERNAL_SERVER_ERROR.value

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            inprogress.dec()
            duration = max(default_timer() - started, 0.0)
            info = instrumentator_metrics.Info(
                request=Request(scope),
                response=None,
                method=method,
                modified_handler=handler,
                modified_status=str(status),
                modified_duration=duration,
                modified_duration_without_streaming=duration,
            )
            for instrumentation in self.instrumentations:
                instrumentation(info)


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
