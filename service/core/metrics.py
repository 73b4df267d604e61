"""Prometheus metrics: HTTP (prometheus-fastapi-instrumentator), DB pools, build info.

Each app gets its own registry, so building the app twice in a process (tests) cannot raise
"Duplicated timeseries". With several workers, PROMETHEUS_MULTIPROC_DIR switches to
prometheus_client's multiprocess mode: values live in shared files and `/metrics` aggregates.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
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
from starlette.types import ASGIApp

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


class InstrumentatorMiddleware(PrometheusInstrumentatorMiddleware):
    """The instrumentator's middleware, with its in-progress gauge in our registry.

    Upstream registers that gauge in the global registry, which breaks a second app in one
    process; we hand it ours instead.
    """

    def __init__(self, app: ASGIApp, *, metrics: Metrics, **options: Any) -> None:
        super().__init__(app, should_instrument_requests_inprogress=False, **options)
        self.should_instrument_requests_inprogress = True
        self.inprogress_labels = True
        self.inprogress = metrics.inprogress

    def _get_handler(self, request: Request) -> tuple[str, bool]:
        template = route_template(request.scope)
        return (template, True) if template else (request.url.path, False)


def mark_process_dead() -> None:
    """Drop this worker's live gauges from the shared files (multiprocess mode only)."""
    if is_multiprocess():
        multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]


def install_metrics_route(app: FastAPI, metrics: Metrics, path: str) -> None:
    from starlette.responses import Response

    async def prometheus_metrics() -> Response:
        return Response(metrics.exposition(), media_type=PROMETHEUS_CONTENT_TYPE)

    app.add_api_route(path, prometheus_metrics, include_in_schema=False, methods=["GET"])
