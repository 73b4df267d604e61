"""Tenant readers (GET routes): the engine lease, a FIFO permit and a pooled connection taken
at the first query only, held until `close`, and given back whatever ended the request
(an error, a cancellation). Real SQLite tenant files and a tenant on the real PostgreSQL.
"""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import func, select

from service.articles.models import Article
from service.core.config import DatabaseSettings
from service.tenants.engines import TenantEngines, TenantsBusy
from tests.service.tenants.conftest import ProvisionFactory, SqliteTenants
from tests.service.tenants.test_engines import add_article, engines_with, tenant_session


async def test_a_reader_takes_nothing_until_its_first_query(
    sqlite_tenants: SqliteTenants,
) -> None:
    [acme] = sqlite_tenants("acme", register=False)
    engines = engines_with()
    try:
        reader = engines.reader(acme)
        taken_before_a_query = (engines.open_engines, engines.checkouts)
        rows = await reader.all(select(Article.title))
        taken_while_reading = (engines.open_engines, engines.checked_out)
        await reader.close()
        await reader.close()  # a second close gives back nothing twice
        unused = engines.reader(acme)
        await unused.close()
    finally:
        checked_out_after, checkouts = engines.checked_out, engines.checkouts
        await engines.close()

    assert rows == []
    assert taken_before_a_query == (0, 0)
    assert taken_while_reading == (1, 1)
    assert (checked_out_after, checkouts) == (0, 1)


async def test_a_reader_holds_its_permit_until_closed(sqlite_tenants: SqliteTenants) -> None:
    """One connection per tenant: while a reader holds it, another waits, then gets a 503;
    once closed, the next reader reads, and a session sees the same rows."""
    [acme] = sqlite_tenants("acme", register=False)
    engines = engines_with(
        database=DatabaseSettings(pool_timeout_seconds=0.2),
        engine_pool_size=1,
        engine_max_overflow=0,
    )
    try:
        async with tenant_session(engines, acme) as session:
            await add_article(session, "hello")
        first = engines.reader(acme)
        await first.all(select(Article.title))
        with pytest.raises(TenantsBusy):
            await engines.reader(acme).all(select(Article.title))
        await first.close()
        second = engines.reader(acme)
        titles = [row[0] for row in await second.all(select(Article.title))]
        await second.close()
    finally:
        await engines.close()

    assert titles == ["hello"]


async def test_a_reader_cancelled_mid_query_gives_back_its_permit_and_connection(
    provision: ProvisionFactory,
) -> None:
    entry = await provision("reader")
    engines = engines_with(
        database=DatabaseSettings(pool_timeout_seconds=1),
        engine_pool_size=1,
        engine_max_overflow=0,
    )
    try:
        reader = engines.reader(entry)
        query = asyncio.create_task(reader.all(select(func.pg_sleep(5))))
        await asyncio.sleep(0.3)
        query.cancel()
        with pytest.raises(asyncio.CancelledError):
            await query
        await reader.close()
        checked_out = engines.checked_out

        after = engines.reader(entry)
        rows = await asyncio.wait_for(after.all(select(func.count(Article.id))), timeout=3)
        await after.close()
    finally:
        await engines.close()

    assert checked_out == 0
    assert rows == [(0,)]


async def test_readers_and_sessions_share_the_tenant_bound(sqlite_tenants: SqliteTenants) -> None:
    """Readers lease the engine as sessions do: with one engine slot, another tenant waits
    for the open reader (then a 503), and gets the slot once it is closed."""
    acme, beta = sqlite_tenants("acme", "beta", register=False)
    engines: TenantEngines = engines_with(engine_cache_size=1, engine_wait_seconds=0.2)
    try:
        reader = engines.reader(acme)
        await reader.all(select(Article.id))
        with pytest.raises(TenantsBusy):  # no second engine while acme's reader is open
            await engines.reader(beta).all(select(Article.id))
        await reader.close()
        other = engines.reader(beta)
        await other.all(select(Article.id))
        await other.close()
        open_engines = engines.open_engines
    finally:
        await engines.close()

    assert open_engines == 1
