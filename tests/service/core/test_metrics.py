"""/metrics: templated handlers, exact status codes, probes excluded, pool and build gauges."""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_fastapi_instrumentator import metrics as instrumentator_metrics
from starlette.middleware import Middleware

from service.container import container_of
from service.core import metrics as metrics_module
from service.core.metrics import (
    BUILD_INFO,
    DB_POOL_CHECKED_OUT,
    DB_POOL_OVERFLOW,
    DB_POOL_SIZE,
    HTTP_REQUEST_DURATION,
    HTTP_REQUESTS_INPROGRESS,
    LATENCY_BUCKETS,
    Metrics,
)
from service.core.middleware import ObservabilityMiddleware
from tests.conftest import ClientFactory
from tests.support import connection_refused, free_port, json_lines


async def scrape(client: httpx.AsyncClient) -> dict[str, list]:
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples: dict[str, list] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample)
    return samples


def counts_by_handler(samples: dict[str, list]) -> dict[tuple[str, str, str], float]:
    return {
        (s.labels["handler"], s.labels["method"], s.labels["status"]): s.value
        for s in samples.get(f"{HTTP_REQUEST_DURATION}_count", [])
    }


async def test_requests_are_counted_by_route_template_and_exact_status(
    probe_client: httpx.AsyncClient,
) -> None:
    await probe_client.get("/api/v1/info")
    await probe_client.get("/api/v1/info")
    await probe_client.get("/api/v1/test/boom")
    await probe_client.get("/api/v1/no/such/path/123")

    counts = counts_by_handler(await scrape(probe_client))

    assert counts[("/api/v1/info", "GET", "200")] == 2
    assert counts[("/api/v1/test/boom", "GET", "500")] == 1
    assert counts[("none", "GET", "404")] == 1  # unknown paths never become labels
    assert not any("123" in handler for handler, _, _ in counts)


async def test_health_and_metrics_are_not_instrumented(probe_client: httpx.AsyncClient) -> None:
    await probe_client.get("/api/v1/health/live")
    await probe_client.get("/api/v1/health/ready")
    await scrape(probe_client)

    handlers = {handler for handler, _, _ in counts_by_handler(await scrape(probe_client))}

    assert not handlers & {"/api/v1/health/live", "/api/v1/health/ready", "/metrics"}


async def test_latency_buckets_are_fine_below_100ms(probe_client: httpx.AsyncClient) -> None:
    await probe_client.get("/api/v1/info")

    samples = await scrape(probe_client)

    bounds = {
        float(s.labels["le"])
        for s in samples[f"{HTTP_REQUEST_DURATION}_bucket"]
        if s.labels["handler"] == "/api/v1/info"
    }
    assert bounds == {*LATENCY_BUCKETS, float("inf")}
    assert len([b for b in bounds if b <= 0.1]) >= 10


async def test_in_progress_gauge_pool_gauges_and_build_info_are_exported(
    probe_client: httpx.AsyncClient,
) -> None:
    await probe_client.get("/api/v1/info")

    samples = await scrape(probe_client)

    assert any(s.labels["handler"] == "/api/v1/info" for s in samples[HTTP_REQUESTS_INPROGRESS])
    [build] = samples[BUILD_INFO]
    assert build.value == 1
    assert set(build.labels) == {"version", "commit"}
    for name in (DB_POOL_SIZE, DB_POOL_CHECKED_OUT, DB_POOL_OVERFLOW):
        assert [s.labels["pool"] for s in samples[name]] == ["control"]


async def test_pool_gauges_follow_the_real_postgres_pool(
    probe_app: Callable[..., FastAPI], client_for: ClientFactory, pg_database: str
) -> None:
    client = await client_for(probe_app(database={"url": pg_database, "pool_size": 3}))
    await client.get("/api/v1/health/ready")

    samples = await scrape(client)

    assert samples[DB_POOL_SIZE][0].value == 3
    assert samples[DB_POOL_CHECKED_OUT][0].value == 0  # returned after the check


async def test_two_apps_in_one_process_keep_separate_registries(
    probe_app: Callable[..., FastAPI], migrated_sqlite: str, client_for: ClientFactory
) -> None:
    first = await client_for(probe_app())
    second = await client_for(probe_app())

    await first.get("/api/v1/info")

    assert counts_by_handler(await scrape(first))[("/api/v1/info", "GET", "200")] == 1
    assert ("/api/v1/info", "GET", "200") not in counts_by_handler(await scrape(second))


async def test_with_a_metrics_port_metrics_leave_the_api_port(
    probe_app: Callable[..., FastAPI], migrated_sqlite: str, client_for: ClientFactory
) -> None:
    """BERTH_OBSERVABILITY__METRICS_PORT: a listener of its own serves the same registry
    (pool gauges refreshed on each scrape), and the API answers 404 for /metrics."""
    port = free_port()
    client = await client_for(probe_app(observability={"metrics_port": port}))
    await client.post("/api/v1/test/items", json={"name": "x", "quantity": 1})

    on_api = await client.get("/metrics")
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as scraper:
        samples = await scrape(scraper)

    assert on_api.status_code == 404
    assert counts_by_handler(samples)[("/api/v1/test/items", "POST", "200")] == 1
    assert any(s.labels == {"pool": "control"} for s in samples[DB_POOL_SIZE])
    assert BUILD_INFO in samples


async def test_the_metrics_port_closes_with_the_app(
    probe_app: Callable[..., FastAPI], migrated_sqlite: str
) -> None:
    port = free_port()
    app = probe_app(observability={"metrics_port": port})

    async with LifespanManager(app):
        assert not await connection_refused(port)
    assert await connection_refused(port)


def _counting(monkeypatch: pytest.MonkeyPatch, metric: object) -> list[tuple[object, ...]]:
    """Record every `labels()` call on `metric` (the real object, still working)."""
    calls: list[tuple[object, ...]] = []
    labels = metric.labels  # type: ignore[attr-defined]

    def counted(*values: object, **named: object) -> object:
        calls.append((*values, *named.values()))
        return labels(*values, **named)

    monkeypatch.setattr(metric, "labels", counted)
    return calls


async def test_a_warm_request_looks_up_no_label_child(
    probe_app: Callable[..., FastAPI],
    migrated_sqlite: str,
    client_for: ClientFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app = probe_app()
    client = await client_for(app)
    metrics = container_of(app).core.metrics
    await client.get("/api/v1/info")  # warm-up: the children are resolved here, once
    latency_calls = _counting(monkeypatch, metrics.latency)
    inprogress_calls = _counting(monkeypatch, metrics.inprogress)

    for _ in range(5):
        assert (await client.get("/api/v1/info")).status_code == 200
    await client.get("/api/v1/test/boom")  # a new route and status: resolved once
    await client.get("/api/v1/test/boom")

    assert inprogress_calls == [("GET", "/api/v1/test/boom")]
    assert latency_calls == [("/api/v1/test/boom", "GET", "500")]
    counts = counts_by_handler(await scrape(client))
    assert counts[("/api/v1/info", "GET", "200")] == 6
    assert counts[("/api/v1/test/boom", "GET", "500")] == 2


def _observability(app: FastAPI) -> Middleware:
    [layer] = [m for m in app.user_middleware if m.cls is ObservabilityMiddleware]
    return layer


async def test_unknown_paths_share_one_cached_series(probe_client: httpx.AsyncClient) -> None:
    for n in range(50):
        await probe_client.get(f"/scanner/{n}")

    counts = counts_by_handler(await scrape(probe_client))

    assert counts[("none", "GET", "404")] == 50
    assert not any(handler.startswith("/scanner") for handler, _, _ in counts)


def test_the_series_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics_module, "_SERIES_CACHE_SIZE", 3)
    metrics = Metrics(version="test", commit="test")
    http = metrics.http_metrics(())
    app = FastAPI()

    @app.get("/items/{item_id}")
    async def item(item_id: int) -> int:
        return item_id

    for method in ("GET", "HEAD", "PUT", "POST", "PATCH", "DELETE"):
        series = http.series_of({"type": "http", "method": method, "path": "/items/1",
                                 "root_path": "", "headers": [], "app": app})  # fmt: skip
        assert series is not None
        series.start()
        series.finish(200, 0.01)

    assert len(http) == 3
    labels = {"handler": "/items/{item_id}", "method": "DELETE", "status": "200"}
    assert metrics.registry.get_sample_value(f"{HTTP_REQUEST_DURATION}_count", labels) == 1


def test_the_latency_series_is_the_instrumentators_own() -> None:
    """Same name, help, label order and buckets as prometheus-fastapi-instrumentator's
    `latency()` as berth configured it: dashboards and alert rules query those."""
    ours = Metrics(version="test", commit="test")
    series = ours.http_metrics(()).series_of(
        {"type": "http", "method": "GET", "path": "/nowhere", "headers": [], "app": FastAPI()}
    )
    assert series is not None
    series.start()
    series.finish(404, 0.02)
    registry = CollectorRegistry()
    upstream = instrumentator_metrics.latency(
        metric_name=HTTP_REQUEST_DURATION,
        metric_doc="Duration of HTTP requests in seconds, by route template.",
        buckets=LATENCY_BUCKETS,
        registry=registry,
    )
    upstream(SimpleNamespace(modified_handler="none", method="GET", modified_status="404",
                             modified_duration=0.02))  # fmt: skip

    def family(text: bytes) -> list[str]:
        return [line for line in text.decode().splitlines()
                if HTTP_REQUEST_DURATION in line and "_created" not in line]  # fmt: skip

    assert family(generate_latest(ours.registry)) == family(generate_latest(registry))


async def test_without_metrics_requests_are_still_logged_and_identified(
    probe_app: Callable[..., FastAPI],
    migrated_sqlite: str,
    client_for: ClientFactory,
    capsys: pytest.CaptureFixture[str],
) -> None:
    app = probe_app(observability={"metrics_enabled": False})
    client = await client_for(app)
    capsys.readouterr()

    response = await client.get("/api/v1/info", headers={"X-Request-ID": "no-metrics"})

    assert response.headers["x-request-id"] == "no-metrics"
    assert _observability(app).kwargs["http_metrics"] is None
    assert (await client.get("/metrics")).status_code == 404
    [line] = [line for line in json_lines(capsys.readouterr().out) if line["event"] == "request"]
    assert line["request_id"] == "no-metrics"
