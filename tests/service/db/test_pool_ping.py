"""Pooled PostgreSQL connections are pinged at checkout only after sitting idle.

Real PostgreSQL, reached directly or through a TcpRelay that can cut every connection.
Pings are counted by wrapping the dialect's `do_ping` (monkeypatch), the one place each
ping goes through; the wrapper still pings for real.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from service.core.config import DatabaseSettings
from service.db.engine import create_engine
from tests.support import TcpRelay

IDLE = 0.05


def engine_for(url: str, **database: Any) -> AsyncEngine:
    return create_engine(
        DatabaseSettings.model_validate({"url": url, "pool_size": 1, "max_overflow": 0, **database})
    )


def count_pings(engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """One entry per ping of `engine`'s connections: True if it answered."""
    dialect = engine.sync_engine.dialect
    real_ping = dialect.do_ping
    pings: list[bool] = []

    def counting_ping(dbapi_connection: Any) -> bool:
        try:
            answer = real_ping(dbapi_connection)
        except Exception:
            pings.append(False)
            raise
        pings.append(bool(answer))
        return answer

    monkeypatch.setattr(dialect, "do_ping", counting_ping)
    return pings


async def backend_pid(engine: AsyncEngine) -> int:
    async with engine.connect() as connection:
        return int((await connection.execute(text("SELECT pg_backend_pid()"))).scalar_one())


async def test_a_connection_reused_within_idle_seconds_is_not_pinged(
    pg_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = engine_for(pg_database, pool_ping_idle_seconds=60)
    pings = count_pings(engine, monkeypatch)
    try:
        pids = {await backend_pid(engine) for _ in range(5)}
    finally:
        await engine.dispose()

    assert len(pids) == 1  # one pooled connection, checked out five times
    assert pings == []


async def test_a_connection_idle_for_idle_seconds_is_pinged_once_at_checkout(
    pg_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = engine_for(pg_database, pool_ping_idle_seconds=IDLE)
    pings = count_pings(engine, monkeypatch)
    try:
        first = await backend_pid(engine)  # a new connection: proven by connecting
        assert pings == []
        await asyncio.sleep(IDLE * 2)
        after_idle = await backend_pid(engine)
        right_after = await backend_pid(engine)
    finally:
        await engine.dispose()

    assert first == after_idle == right_after
    assert pings == [True]


async def test_an_idle_connection_that_broke_is_replaced_transparently(
    pg_relay: tuple[TcpRelay, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy, url = pg_relay
    engine = engine_for(url, pool_ping_idle_seconds=IDLE)
    pings = count_pings(engine, monkeypatch)
    try:
        before = await backend_pid(engine)
        await proxy.stop()  # cuts the pooled connection
        await proxy.start()
        await asyncio.sleep(IDLE * 2)

        after = await backend_pid(engine)
    finally:
        await engine.dispose()

    assert after != before  # a fresh server connection
    assert pings == [False]  # the broken one failed its ping; the new one needed none


async def test_idle_seconds_zero_pings_on_every_checkout(
    pg_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLAlchemy's own pre-ping: every checkout of a pooled connection."""
    engine = engine_for(pg_database, pool_ping_idle_seconds=0)
    try:
        await backend_pid(engine)  # opens the pooled connection
        pings = count_pings(engine, monkeypatch)
        for _ in range(3):
            await backend_pid(engine)
    finally:
        await engine.dispose()

    assert pings == [True, True, True]


async def test_without_pool_pre_ping_an_idle_connection_is_not_pinged(
    pg_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = engine_for(pg_database, pool_pre_ping=False, pool_ping_idle_seconds=IDLE)
    pings = count_pings(engine, monkeypatch)
    try:
        await backend_pid(engine)
        await asyncio.sleep(IDLE * 2)
        await backend_pid(engine)
    finally:
        await engine.dispose()

    assert pings == []
