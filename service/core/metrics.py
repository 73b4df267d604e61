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

import os
from collections.abc import Callable, Iterable, Sequence
from http import HTTPStatus
from timeit import default_timer
from typing import Any

from fastapi import FastAPI
from prometheus_client import CONTENT_TYPE_LATEST as PROMETHEUS_CONTENT_TYPE
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Metric,
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

# Names as scraped (see the rule above).
HTTP_REQUEST_DURATION = "http_request_duration_seconds"
HTTP_REQUESTS_INPROGRESS = "http_requests_inprogress"
DB_POOL_SIZE = "berth_db_pool_size"
DB_POOL_CHECKED_OUT = "berth_db_pool_checked_out"
DB_POOL_OVERFLOW = "berth_db_pool_overflow"
BUILD_INFO = "berth_build_info"
# prometheus_client adds `_total` to counters; this is the name as scraped.
RATE_LIMIT_FALLBACKS = "berth_rate_limit_fallbacks_total"
MULTIPROC_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"

# Fine enough below 100 ms for a per-route p99 of a fast service, coarse above a second.
LATENCY_BUCKETS: Sequence[float] = (
    0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.035, 0.05, 0.075,
    0.1, 0.15, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip


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
