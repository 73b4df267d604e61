"""/metrics: templated handlers, exact status codes, probes excluded, pool and build gauges."""

from __future__ import annotations

from collections.abc import Callable

import httpx
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families

from service.core.metrics import (
    BUILD_INFO,
    DB_POOL_CHECKED_OUT,
    DB_POOL_OVERFLOW,
    DB_POOL_SIZE,
    HTTP_REQUEST_DURATION,
    HTTP_REQUESTS_INPROGRESS,
    LATENCY_BUCKETS,
)
from tests.conftest import ClientFactory
from tests.support import connection_refused, free_port


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
