"""Prometheus metrics: HTTP (prometheus-fastapi-instrumentator), DB pools, build info.

Each app gets its own registry, so building the app twice in a process (tests) cannot raise
"Duplicated timeseries". With several workers, PROMETHEUS_MULTIPROC_DIR switches to
prometheus_client's multiprocess mode: values live in shared files and `/metrics` aggregates.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from http import HTTPStatus
from timeit import default_timer
from typing import Any

from fastapi import FastAPI
from prometheus_client import CONTENT_TYPE_LATEST as PROMETHEUS_CONTENT_TYPE
from prometheus_client import CollectorRegistry, Gauge, generate_latest, multiprocess
from prometheus_fastapi_instrumentator import metrics as instrumentator_metrics
from prometheus_fastapi_instrumentator.middleware import PrometheusInstrumentatorMiddleware
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import QueuePool
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.core.middleware import route_template

# Metric names: the one place the dashboards, rules and tests take them from.
HTTP_REQUEST_DURATION = "http_request_duration_seconds"
HTTP_REQUESTS_INPROGRESS = "http_requests_inprogress"
DB_POOL_SIZE = "berth_db_pool_size"
DB_POOL_CHECKED_OUT = "berth_db_pool_checked_out"
DB_POOL_OVERFLOW = "berth_db_pool_overflow"
BUILD_INFO = "berth_build_info"
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
        # Instrumentations that read only the `modified_*` fields of `Info` (not the response):
        # with only these, `InstrumentatorMiddleware` takes its fast path.
        self.request_only_instrumentations = frozenset({self.observe_latency})
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

    def exposition(self) -> bytes:
        for refresh in self._refreshers:
            refresh()
        if not is_multiprocess():
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)

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


# Bounds on what `InstrumentatorMiddleware` remembers per handler: exclusion answers and
# in-progress gauge children (handlers are route templates or "none", so few in practice).
_EXCLUSION_CACHE_SIZE = 1024
_CHILD_CACHE_SIZE = 1024


class InstrumentatorMiddleware(PrometheusInstrumentatorMiddleware):
    """The instrumentator's middleware, with its in-progress gauge in our registry, made cheap.

    Upstream registers that gauge in the global registry, which breaks a second app in one
    process; we hand it ours instead.

    Upstream's `__call__` builds a `Request`, a `Response` and `Headers` per request, matches
    the route by trying every route, tests the exclusion patterns and awaits an empty
    `asyncio.gather`. Ours records the same metrics (the instrumentator's latency histogram
    by handler/method/exact status, the in-progress gauge, excluded handlers skipped, unknown
    paths as "none") with the cached route template, a cached exclusion answer and no response
    object. Any other configuration (body handlers, async instrumentations, instrumentations
    that read the response) goes through upstream's `__call__` unchanged.
    """

    def __init__(self, app: ASGIApp, *, metrics: Metrics, **options: Any) -> None:
        super().__init__(app, should_instrument_requests_inprogress=False, **options)
        self.should_instrument_requests_inprogress = True
        self.inprogress_labels = True
        self.inprogress = self._inprogress = metrics.inprogress
        self._fast_path = (
            not self.body_handlers
            and not self.async_instrumentations
            and all(i in metrics.request_only_instrumentations for i in self.instrumentations)
        )
        self._excluded: dict[str, bool] = {}
        self._inprogress_children: dict[tuple[str, str], Any] = {}

    def _get_handler(self, request: Request) -> tuple[str, bool]:
        template = route_template(request.scope)
        return (template, True) if template else (request.url.path, False)

    def _handler_of(self, scope: Scope) -> tuple[str, bool]:
        """(handler label, excluded) as upstream derives them, cached for templated handlers."""
        template = route_template(scope)
        if template is None:
            path = Request(scope).url.path
            excluded = self._is_handler_excluded(path, False)
            return ("none" if self.should_group_untemplated else path), excluded
        cached = self._excluded.get(template)
        if cached is None:
            cached = self._is_handler_excluded(template, True)
            if len(self._excluded) < _EXCLUSION_CACHE_SIZE:
                self._excluded[template] = cached
        return template, cached

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self._fast_path:
            await super().__call__(scope, receive, send)
            return
        start_time = default_timer()
        handler, excluded = self._handler_of(scope)
        if excluded:
            await self.app(scope, receive, send)
            return
        method = scope["method"]
        inprogress = self._inprogress_children.get((method, handler))
        if inprogress is None:
            inprogress = self._inprogress.labels(method, handler)
            if len(self._inprogress_children) < _CHILD_CACHE_SIZE:
                self._inprogress_children[method, handler] = inprogress
        inprogress.inc()
        status_code: Any = HTTPStatus.INTERNAL_SERVER_ERROR.value
        response_start_time: float | None = None

        async def send_wrapper(message: Message) -> None:
            nonlocal status_code, response_start_time
            if message["type"] == "http.response.start":
                status_code = message["status"]
                response_start_time = default_timer()
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            inprogress.dec()
            self._record(scope, method, handler, status_code, start_time, response_start_time)

    def _record(
        self,
        scope: Scope,
        method: str,
        handler: str,
        status_code: Any,
        start_time: float,
        response_start_time: float | None,
    ) -> None:
        duration = max(default_timer() - start_time, 0.0)
        without_streaming = (
            max(response_start_time - start_time, 0.0) if response_start_time else 0.0
        )
        if self.should_round_latency_decimals:
            duration = round(duration, self.round_latency_decimals)
            without_streaming = round(without_streaming, self.round_latency_decimals)
        status = str(status_code.value if isinstance(status_code, HTTPStatus) else status_code)
        if self.should_group_status_codes:
            status = status[0] + "xx"
        info = instrumentator_metrics.Info(
            request=Request(scope),
            response=None,
            method=method,
            modified_handler=handler,
            modified_status=status,
            modified_duration=duration,
            modified_duration_without_streaming=without_streaming,
        )
        for instrumentation in self.instrumentations:
            instrumentation(info)


def mark_process_dead() -> None:
    """Drop this worker's live gauges from the shared files (multiprocess mode only)."""
    if is_multiprocess():
        multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]


def install_metrics_route(app: FastAPI, metrics: Metrics, path: str) -> None:
    from starlette.responses import Response

    async def prometheus_metrics() -> Response:
        return Response(metrics.exposition(), media_type=PROMETHEUS_CONTENT_TYPE)

    app.add_api_route(path, prometheus_metrics, include_in_schema=False, methods=["GET"])
