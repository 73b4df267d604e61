"""Readiness against the real PostgreSQL and Redis, reached through a relay we can cut."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx
import pytest
from sqlalchemy import make_url

from service.core.config import Settings
from service.core.startup import StartupError
from service.main import create_app
from tests.conftest import ClientFactory
from tests.support import TcpRelay, free_port


@pytest.fixture
async def relayed_client(
    make_settings: Callable[..., Settings],
    client_for: ClientFactory,
    pg_relay: tuple[TcpRelay, str],
    redis_relay: tuple[TcpRelay, str],
) -> Callable[..., object]:
    async def factory(*, redis_required: bool = True) -> httpx.AsyncClient:
        settings = make_settings(
            database={"url": pg_relay[1], "pool_pre_ping": True},
            redis={"url": redis_relay[1], "required": redis_required},
            observability={"readiness_timeout_seconds": 1.0},
        )
        return await client_for(create_app(settings))

    return factory


def checks_of(response: httpx.Response) -> dict[str, dict]:
    return {check["name"]: check for check in response.json()["checks"]}


async def test_ready_reports_each_check_with_latency(relayed_client) -> None:
    client = await relayed_client()

    response = await client.get("/api/v1/health/ready")

    assert response.status_code == 200
    assert response.json()["status"] == "ok"
    assert response.json()["checked_at"].endswith("Z")  # berth's one timestamp format
    checks = checks_of(response)
    assert set(checks) == {"database", "redis", "mongo"}
    assert all(checks[name]["status"] == "ok" and checks[name]["latency_ms"] >= 0
               for name in ("database", "redis"))  # fmt: skip
    # No BERTH_MONGO__URL here: reported, not failed.
    assert (checks["mongo"]["status"], checks["mongo"]["required"]) == ("not_configured", False)


async def test_ready_is_503_while_postgres_is_unreachable_and_recovers(
    relayed_client, pg_relay: tuple[TcpRelay, str]
) -> None:
    client = await relayed_client()
    proxy, _ = pg_relay

    await proxy.stop()
    down = await client.get("/api/v1/health/ready")
    await proxy.start()
    back = await client.get("/api/v1/health/ready")

    assert down.status_code == 503
    assert down.json()["status"] == "down"
    assert checks_of(down)["database"]["status"] == "down"
    assert checks_of(down)["redis"]["status"] == "ok"
    assert back.status_code == 200
    assert back.json()["status"] == "ok"


async def test_ready_is_503_while_required_redis_is_unreachable_and_recovers(
    relayed_client, redis_relay: tuple[TcpRelay, str]
) -> None:
    client = await relayed_client()
    proxy, _ = redis_relay

    await proxy.stop()
    down = await client.get("/api/v1/health/ready")
    await proxy.start()
    back = await client.get("/api/v1/health/ready")

    assert down.status_code == 503
    assert checks_of(down)["redis"]["status"] == "down"
    assert checks_of(down)["database"]["status"] == "ok"
    assert back.status_code == 200


async def test_ready_is_degraded_not_down_when_optional_redis_is_unreachable(
    relayed_client, redis_relay: tuple[TcpRelay, str]
) -> None:
    client = await relayed_client(redis_required=False)
    proxy, _ = redis_relay

    await proxy.stop()
    response = await client.get("/api/v1/health/ready")

    assert response.status_code == 200
    assert response.json()["status"] == "degraded"
    assert checks_of(response)["redis"] == {
        **checks_of(response)["redis"],
        "status": "down",
        "required": False,
    }


async def test_liveness_does_no_io_and_stays_up_when_dependencies_are_down(
    relayed_client, pg_relay: tuple[TcpRelay, str], redis_relay: tuple[TcpRelay, str]
) -> None:
    client = await relayed_client()
    await pg_relay[0].stop()
    await redis_relay[0].stop()

    response = await client.get("/api/v1/health/live")

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_start_up_fails_with_a_clear_message_when_the_database_never_answers(
    make_settings: Callable[..., Settings], client_for: ClientFactory
) -> None:
    closed = free_port()
    settings = make_settings(
        startup_retries=2,
        database={"url": f"postgresql+asyncpg://berth:hunter2@127.0.0.1:{closed}/berth"},
    )

    with pytest.raises(StartupError) as failed:
        await client_for(create_app(settings))

    message = str(failed.value)
    assert message.startswith(f"database postgresql+asyncpg://berth:***@127.0.0.1:{closed}/berth")
    assert "after 2 attempts" in message
    assert "hunter2" not in message


async def test_start_up_waits_for_a_database_that_comes_up_during_the_retries(
    make_settings: Callable[..., Settings], client_for: ClientFactory, pg_database: str
) -> None:
    url = make_url(pg_database)
    proxy = TcpRelay(url.host or "127.0.0.1", url.port or 5432)
    settings = make_settings(
        startup_retries=30,
        startup_retry_max_wait_seconds=0.1,
        database={"url": url.set(host="127.0.0.1", port=proxy.port).render_as_string(False)},
    )

    async def open_later() -> None:
        await asyncio.sleep(0.5)
        await proxy.start()

    opener = asyncio.create_task(open_later())
    try:
        client = await client_for(create_app(settings))
        assert (await client.get("/api/v1/health/ready")).status_code == 200
    finally:
        await opener
        await proxy.stop()
