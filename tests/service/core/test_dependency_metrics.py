"""Dependencies seen in metrics: readiness per dependency, database and Redis errors by kind,
and how late the event loop runs. PostgreSQL and Redis are real, reached through relays the
tests cut; a Redis that never answers is a real socket that accepts and stays silent."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import httpx
import pytest
from fastapi import FastAPI

from service.core.config import Settings
from service.core.metrics import (
    DB_ERRORS,
    DEPENDENCY_READY,
    EVENT_LOOP_LAG,
    PROCESS_CPU,
    PROCESS_RESIDENT_MEMORY,
    REDIS_ERRORS,
    DbErrorKind,
    Metrics,
)
from service.core.store import RedisErrorKind
from service.main import create_app
from tests.conftest import ClientFactory
from tests.service.identity.helpers import LOGIN
from tests.support import TcpRelay, metric_value

READY = "/api/v1/health/ready"


@pytest.fixture
async def relayed_app(
    make_settings: Callable[..., Settings],
    client_for: ClientFactory,
    pg_relay: tuple[TcpRelay, str],
    redis_relay: tuple[TcpRelay, str],
) -> tuple[FastAPI, httpx.AsyncClient]:
    settings = make_settings(
        database={"url": pg_relay[1], "pool_pre_ping": True},
        redis={"url": redis_relay[1]},
        observability={"readiness_timeout_seconds": 1.0, "readiness_cache_seconds": 0},
        rate_limits={"enabled": False},
    )
    app = create_app(settings)
    return app, await client_for(app)


def ready(app: FastAPI, dependency: str) -> float | None:
    from service.container import container_of

    registry = container_of(app).core.metrics.registry
    return registry.get_sample_value(DEPENDENCY_READY, {"dependency": dependency})


async def test_readiness_is_exported_per_dependency_and_follows_each_check(
    relayed_app: tuple[FastAPI, httpx.AsyncClient], redis_relay: tuple[TcpRelay, str]
) -> None:
    app, client = relayed_app
    proxy, _ = redis_relay

    await client.get(READY)
    both_up = (ready(app, "database"), ready(app, "redis"))
    await proxy.stop()
    await client.get(READY)
    redis_down = (ready(app, "database"), ready(app, "redis"))
    await proxy.start()
    await client.get(READY)

    assert both_up == (1, 1)
    assert redis_down == (1, 0)
    assert ready(app, "redis") == 1
    assert metric_value(app, REDIS_ERRORS, kind=RedisErrorKind.CONNECTION.value) >= 1


async def test_a_database_outage_is_counted_as_a_connection_error(
    relayed_app: tuple[FastAPI, httpx.AsyncClient], pg_relay: tuple[TcpRelay, str]
) -> None:
    app, client = relayed_app
    proxy, _ = pg_relay
    await proxy.stop()

    response = await client.post(LOGIN, json={"email": "a@example.com", "password": "secret-1"})

    assert response.status_code == 503
    assert metric_value(app, DB_ERRORS, kind=DbErrorKind.CONNECTION.value) == 1
    assert metric_value(app, DB_ERRORS, kind=DbErrorKind.STATEMENT.value) == 0


async def test_every_error_kind_series_exists_from_the_start(
    relayed_app: tuple[FastAPI, httpx.AsyncClient],
) -> None:
    from service.container import container_of

    registry = container_of(relayed_app[0]).core.metrics.registry
    kinds = {(DB_ERRORS, kind.value) for kind in DbErrorKind}
    kinds |= {(REDIS_ERRORS, kind.value) for kind in RedisErrorKind}

    assert {registry.get_sample_value(name, {"kind": kind}) for name, kind in kinds} == {0.0}


async def test_a_blocked_event_loop_shows_as_lag() -> None:
    metrics = Metrics(version="test", commit="test")
    watcher = asyncio.create_task(metrics.watch_event_loop(interval_seconds=0.01))
    await asyncio.sleep(0.05)
    time.sleep(0.2)  # blocks the loop, as CPU-bound work in a handler would
    await asyncio.sleep(0.05)
    watcher.cancel()
    await asyncio.gather(watcher, return_exceptions=True)

    registry = metrics.registry
    lag_sum = registry.get_sample_value(f"{EVENT_LOOP_LAG}_sum") or 0.0
    within_100ms = registry.get_sample_value(f"{EVENT_LOOP_LAG}_bucket", {"le": "0.1"}) or 0.0
    count = registry.get_sample_value(f"{EVENT_LOOP_LAG}_count") or 0.0
    assert lag_sum >= 0.15
    assert count - within_100ms >= 1  # the blocked wake-up, in a bucket above 100 ms


def test_process_cpu_and_memory_are_exported() -> None:
    metrics = Metrics(version="test", commit="test")

    cpu = metrics.registry.get_sample_value(PROCESS_CPU) or 0.0
    memory = metrics.registry.get_sample_value(PROCESS_RESIDENT_MEMORY) or 0.0

    assert cpu > 0
    assert memory > 10_000_000
