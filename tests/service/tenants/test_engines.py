"""The per-tenant engine cache: bounded (engines and connections), least recently used idle
engine out first, engines in use never pulled from under a session, metrics; per-tenant
connection permits handed out first come first served, or a 503 after the pool timeout.

Real SQLite tenant files and tenants provisioned on the real PostgreSQL; nothing faked but
the clock of the idle sweep.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import pytest
from prometheus_client import CollectorRegistry
from pydantic import SecretStr
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

from service.articles.models import Article
from service.core.config import DatabaseSettings, TenantSettings
from service.db.engine import session_scope
from service.tenants.engines import TenantEngines, TenantsBusy
from service.tenants.metrics import (
    TENANT_CONNECTIONS_CHECKED_OUT,
    TENANT_ENGINE_EVICTIONS,
    TENANT_ENGINES_OPEN,
    TenantMetrics,
)
from service.tenants.schemas import TenantEntry
from tests.service.conftest import RegistryOf
from tests.service.tenants.conftest import ProvisionFactory, SqliteTenants
from tests.support import PG_ADMIN_URL, asyncpg_dsn

session_of = session_scope


def engines_with(
    clock: list[float] | None = None,
    database: DatabaseSettings | None = None,
    metrics: TenantMetrics | None = None,
    **settings: object,
) -> TenantEngines:
    tenant_settings = TenantSettings.model_validate(
        {"engine_pool_size": 1, "engine_max_overflow": 1, **settings}
    )
    database = database or DatabaseSettings()
    if clock is None:
        return TenantEngines(tenant_settings, database, metrics=metrics)
    return TenantEngines(tenant_settings, database, metrics=metrics, clock=lambda: clock[0])


@asynccontextmanager
async def tenant_session(engines: TenantEngines, entry: TenantEntry) -> AsyncIterator[AsyncSession]:
    async with engines.lease(entry) as sessions, session_of(sessions.write) as session:
        yield session


async def add_article(session: AsyncSession, title: str) -> None:
    session.add(Article(slug=f"a-{uuid.uuid4().hex}", title=title, author_id=uuid.uuid4()))
    await session.flush()


async def titles_in(entry: TenantEntry) -> list[str]:
    """Read the tenant's database directly, outside the cache."""
    engine = create_async_engine(entry.database_url.get_secret_value())
    try:
        async with engine.connect() as connection:
            rows = await connection.execute(select(Article.title).order_by(Article.title))
            return [row[0] for row in rows]
    finally:
        await engine.dispose()


async def test_fifty_sqlite_tenants_never_hold_more_than_the_cache_size_of_engines(
    sqlite_tenants: SqliteTenants,
) -> None:
    """50 tenants, cache size 4, pools of 1 + 1 overflow, 250 sessions at once: at most 4
    engines and 8 connections are ever open, and every row lands in its own tenant's file."""
    tenants = sqlite_tenants(*(f"tenant-{n:02d}" for n in range(50)), register=False)
    metrics = TenantMetrics(CollectorRegistry())
    engines = engines_with(engine_cache_size=4, metrics=metrics)
    rng = random.Random(7)
    plan = [rng.choice(tenants) for _ in range(250)]
    peaks = {"engines": 0, "connections": 0}

    def sample() -> None:
        peaks["engines"] = max(peaks["engines"], engines.open_engines)
        peaks["connections"] = max(peaks["connections"], engines.open_connections())

    async def work(index: int, entry: TenantEntry) -> None:
        async with tenant_session(engines, entry) as session:
            sample()
            await add_article(session, f"{entry.slug}/{index}")
            await asyncio.sleep(0)
            sample()

    try:
        await asyncio.gather(*(work(i, entry) for i, entry in enumerate(plan)))
    finally:
        await engines.close()

    assert peaks["engines"] == 4
    assert 4 <= peaks["connections"] <= 4 * (1 + 1)
    assert engines.open_engines == 0
    assert metrics.evictions.labels(reason="capacity")._value.get() >= 46
    for entry in rng.sample(tenants, 8):
        expected = sorted(f"{entry.slug}/{i}" for i, e in enumerate(plan) if e is entry)
        assert await titles_in(entry) == expected


async def test_the_least_recently_used_idle_engine_goes_first(
    sqlite_tenants: SqliteTenants,
) -> None:
    acme, beta, gamma = sqlite_tenants("acme", "beta", "gamma", register=False)
    engines = engines_with(engine_cache_size=2)
    try:
        for entry in (acme, beta, acme):
            async with tenant_session(engines, entry) as session:
                await session.execute(text("SELECT 1"))
        assert engines.cached_slugs() == ["beta", "acme"]

        async with tenant_session(engines, gamma) as session:
            await session.execute(text("SELECT 1"))

        assert engines.cached_slugs() == ["acme", "gamma"]
        assert engines.open_engines == 2
    finally:
        await engines.close()


async def test_an_engine_in_use_is_never_evicted_and_a_new_tenant_waits_for_it(
    sqlite_tenants: SqliteTenants,
) -> None:
    """Cache size 1: while acme's session is open, beta waits; acme's session commits on its
    own connection, then beta gets the slot. Never two engines open."""
    acme, beta = sqlite_tenants("acme", "beta", register=False)
    engines = engines_with(engine_cache_size=1)
    acme_inside = asyncio.Event()
    acme_may_finish = asyncio.Event()

    async def acme_work() -> None:
        async with tenant_session(engines, acme) as session:
            await add_article(session, "acme-before")
            acme_inside.set()
            await acme_may_finish.wait()
            await add_article(session, "acme-after")

    async def beta_work() -> int:
        async with tenant_session(engines, beta) as session:
            await add_article(session, "beta")
            return engines.open_engines

    try:
        acme_task = asyncio.create_task(acme_work())
        await acme_inside.wait()
        beta_task = asyncio.create_task(beta_work())
        await asyncio.sleep(0.2)
        assert not beta_task.done()  # waiting for a slot, not opening a second pool
        assert engines.cached_slugs() == ["acme"]

        acme_may_finish.set()
        await acme_task
        assert await asyncio.wait_for(beta_task, timeout=5) == 1
    finally:
        await engines.close()
    assert await titles_in(acme) == ["acme-after", "acme-before"]
    assert await titles_in(beta) == ["beta"]


async def test_when_no_slot_frees_up_in_time_the_answer_is_503_retry_after(
    sqlite_tenants: SqliteTenants,
) -> None:
    acme, beta = sqlite_tenants("acme", "beta", register=False)
    engines = engines_with(engine_cache_size=1, engine_wait_seconds=0.2)
    try:
        async with engines.lease(acme):
            with pytest.raises(TenantsBusy) as busy:
                async with engines.lease(beta):
                    pytest.fail("a second engine was opened")
    finally:
        await engines.close()

    assert busy.value.status_code == 503
    assert busy.value.headers == {"Retry-After": "1"}


async def test_a_removed_tenant_engine_is_disposed_once_its_in_flight_session_ends(
    sqlite_tenants: SqliteTenants, registry_of: RegistryOf
) -> None:
    """The registry drops acme while a session is mid-transaction: the session keeps its
    connection and commits; the engine is disposed when the session is over."""
    acme, beta = sqlite_tenants("acme", "beta", register=False)
    metrics = TenantMetrics(CollectorRegistry())
    engines = engines_with(engine_cache_size=4, metrics=metrics)
    try:
        async with tenant_session(engines, acme) as session:
            await add_article(session, "before-removal")
            await engines.reconcile(registry_of(beta))  # acme is gone from the registry

            assert engines.cached_slugs() == []
            assert engines.open_engines == 1  # retired, still finishing this session
            assert engines.checked_out == 1
            await add_article(session, "after-removal")
        await engines.wait_disposed()

        assert engines.open_engines == 0
        assert engines.checked_out == 0
        assert metrics.evictions.labels(reason="registry")._value.get() == 1
    finally:
        await engines.close()
    assert await titles_in(acme) == ["after-removal", "before-removal"]


async def test_a_rotated_database_url_gets_a_new_engine_and_the_old_one_is_disposed(
    sqlite_tenants: SqliteTenants,
) -> None:
    [acme] = sqlite_tenants("acme", register=False)
    # The same file under another URL, as after a password rotation.
    rotated_url = SecretStr(acme.database_url.get_secret_value() + "?timeout=7")
    rotated = acme.model_copy(update={"database_url": rotated_url})
    engines = engines_with(engine_cache_size=4)
    try:
        async with tenant_session(engines, acme) as old_session:
            await add_article(old_session, "old")
            async with tenant_session(engines, rotated) as new_session:
                assert engines.open_engines == 2  # the old one is retiring, still in use
                assert new_session.bind is not old_session.bind
        await engines.wait_disposed()
        assert engines.open_engines == 1
        assert engines.cached_slugs() == ["acme"]
    finally:
        await engines.close()
    assert await titles_in(acme) == ["old"]


async def test_engines_idle_longer_than_engine_idle_seconds_are_disposed(
    sqlite_tenants: SqliteTenants,
) -> None:
    acme, beta = sqlite_tenants("acme", "beta", register=False)
    clock = [1000.0]
    engines = engines_with(clock, engine_cache_size=4, engine_idle_seconds=100)
    try:
        async with tenant_session(engines, acme) as session:
            await session.execute(text("SELECT 1"))
        clock[0] += 50
        async with tenant_session(engines, beta) as session:
            await session.execute(text("SELECT 1"))
        clock[0] += 60  # acme idle 110 s, beta 60 s

        await engines.dispose_idle()

        assert engines.cached_slugs() == ["beta"]
        assert engines.open_engines == 1
    finally:
        await engines.close()


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


async def test_metrics_count_open_engines_checked_out_connections_and_evictions(
    sqlite_tenants: SqliteTenants,
) -> None:
    acme, beta, gamma = sqlite_tenants("acme", "beta", "gamma", register=False)
    registry = CollectorRegistry()
    engines = engines_with(engine_cache_size=2, metrics=TenantMetrics(registry))
    try:
        async with tenant_session(engines, acme) as a, tenant_session(engines, beta) as b:
            await a.execute(text("SELECT 1"))
            await b.execute(text("SELECT 1"))
            assert sample(registry, TENANT_ENGINES_OPEN) == 2
            assert sample(registry, TENANT_CONNECTIONS_CHECKED_OUT) == 2
        assert sample(registry, TENANT_CONNECTIONS_CHECKED_OUT) == 0

        async with tenant_session(engines, gamma) as session:
            await session.execute(text("SELECT 1"))
        await engines.wait_disposed()

        assert sample(registry, TENANT_ENGINES_OPEN) == 2
        assert sample(registry, TENANT_ENGINE_EVICTIONS, reason="capacity") == 1
        assert sample(registry, TENANT_ENGINE_EVICTIONS, reason="idle") == 0
    finally:
        await engines.close()
    assert sample(registry, TENANT_ENGINES_OPEN) == 0


async def server_connections(admin: asyncpg.Connection, databases: list[str]) -> int:
    return int(
        await admin.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = ANY($1::text[])", databases
        )
    )


async def test_postgres_server_connections_stay_bounded_across_many_tenants(
    provision: ProvisionFactory,
) -> None:
    """Real PostgreSQL, 4 provisioned tenants, cache size 2 with pools of 1 + 1: whatever
    the load, pg_stat_activity never shows more than 2 x 2 connections to their databases."""
    tenants = [await provision("cap", migrate=False) for _ in range(4)]
    databases = [f"tenant_{entry.slug.replace('-', '_')}" for entry in tenants]
    engines = engines_with(engine_cache_size=2)
    admin = await asyncpg.connect(asyncpg_dsn(PG_ADMIN_URL), timeout=5)
    observed: list[int] = []
    done = asyncio.Event()

    async def watch() -> None:
        while not done.is_set():
            observed.append(await server_connections(admin, databases))
            await asyncio.sleep(0.005)

    async def work(entry: TenantEntry) -> None:
        async with tenant_session(engines, entry) as session:
            await session.execute(text("SELECT pg_sleep(0.02)"))

    watcher = asyncio.create_task(watch())
    try:
        rng = random.Random(11)
        await asyncio.gather(*(work(rng.choice(tenants)) for _ in range(120)))
    finally:
        done.set()
        await watcher
        await engines.close()
    try:
        after_close = await server_connections(admin, databases)
    finally:
        await admin.close()

    assert max(observed) <= 2 * (1 + 1)
    assert max(observed) >= 2  # there really was concurrency to bound
    assert after_close == 0


async def test_counting_helpers_read_the_real_pools(sqlite_tenants: SqliteTenants) -> None:
    [acme] = sqlite_tenants("acme", register=False)
    engines = engines_with(engine_cache_size=1)
    try:
        async with tenant_session(engines, acme) as session:
            count = await session.scalar(select(func.count()).select_from(Article))
            assert count == 0
            assert engines.open_connections() == engines.checked_out == 1
    finally:
        await engines.close()


# Permits: one of the tenant's connections per lease, handed out first come first served.


async def started(coroutine: Any) -> asyncio.Task[Any]:
    """A task for `coroutine`, run until it blocks (it is then queued where it waits)."""
    task = asyncio.create_task(coroutine)
    for _ in range(5):
        await asyncio.sleep(0)
    return task


async def test_each_lease_holds_one_of_the_tenants_permits(
    sqlite_tenants: SqliteTenants,
) -> None:
    """Defaults: pools of 5 and no overflow, so 5 leases at once; the sixth waits for one of
    them to end, even though none of them holds a connection."""
    [acme] = sqlite_tenants("acme", register=False)
    engines = TenantEngines(TenantSettings(), DatabaseSettings())
    assert (engines.settings.engine_pool_size, engines.settings.engine_max_overflow) == (5, 0)
    sixth_inside = asyncio.Event()

    async def sixth() -> None:
        async with engines.lease(acme):
            sixth_inside.set()

    try:
        async with contextlib.AsyncExitStack() as held:
            for _ in range(5):
                await held.enter_async_context(engines.lease(acme))
            waiter = await started(sixth())
            await asyncio.sleep(0.1)
            assert not sixth_inside.is_set()
        await asyncio.wait_for(waiter, timeout=5)
    finally:
        await engines.close()

    assert sixth_inside.is_set()


async def test_a_permit_counts_overflow_connections_too(sqlite_tenants: SqliteTenants) -> None:
    [acme] = sqlite_tenants("acme", register=False)
    database = DatabaseSettings(pool_timeout_seconds=0.1)
    engines = engines_with(database=database, engine_pool_size=2, engine_max_overflow=1)
    try:
        async with contextlib.AsyncExitStack() as held:
            for _ in range(3):
                await held.enter_async_context(engines.lease(acme))
            with pytest.raises(TenantsBusy):
                async with engines.lease(acme):
                    pytest.fail("a fourth lease got a permit")
    finally:
        await engines.close()


async def test_waiters_get_permits_first_come_first_served(
    sqlite_tenants: SqliteTenants,
) -> None:
    [acme] = sqlite_tenants("acme", register=False)
    engines = engines_with(engine_pool_size=1, engine_max_overflow=0)
    served: list[int] = []

    async def waiter(number: int) -> None:
        async with tenant_session(engines, acme) as session:
            served.append(number)
            await session.execute(text("SELECT 1"))
            await asyncio.sleep(0.01)

    try:
        async with engines.lease(acme):
            waiters = [await started(waiter(number)) for number in range(6)]
            assert served == []
        await asyncio.wait_for(asyncio.gather(*waiters), timeout=10)
    finally:
        await engines.close()

    assert served == list(range(6))


async def test_a_lease_returned_and_asked_again_at_once_does_not_jump_the_queue(
    sqlite_tenants: SqliteTenants,
) -> None:
    """The holder leaves and asks again without yielding to the loop: the permit it gave back
    already belongs to the waiter that queued first."""
    [acme] = sqlite_tenants("acme", register=False)
    engines = engines_with(engine_pool_size=1, engine_max_overflow=0)
    served: list[str] = []

    async def waiter() -> None:
        async with engines.lease(acme):
            served.append("waiter")

    try:
        async with engines.lease(acme):
            queued = await started(waiter())
        async with engines.lease(acme):
            served.append("holder again")
        await asyncio.wait_for(queued, timeout=5)
    finally:
        await engines.close()

    assert served == ["waiter", "holder again"]


async def test_a_waiter_gives_up_after_pool_timeout_with_a_503(
    sqlite_tenants: SqliteTenants, registry_of: RegistryOf
) -> None:
    [acme] = sqlite_tenants("acme", register=False)
    database = DatabaseSettings(pool_timeout_seconds=0.2)
    engines = engines_with(database=database, engine_pool_size=1, engine_max_overflow=0)
    loop = asyncio.get_running_loop()
    try:
        async with engines.lease(acme):
            started_at = loop.time()
            with pytest.raises(TenantsBusy) as busy:
                async with engines.lease(acme):
                    pytest.fail("a second lease got the only permit")
            waited = loop.time() - started_at
        async with tenant_session(engines, acme) as session:  # the permit is free again
            await session.execute(text("SELECT 1"))
        await engines.reconcile(registry_of())  # no lease left behind: disposed at once
        assert engines.open_engines == 0
    finally:
        await engines.close()

    assert 0.2 <= waited < 2
    assert busy.value.status_code == 503
    assert busy.value.headers == {"Retry-After": "1"}


async def test_a_cancelled_waiter_leaves_the_queue_without_taking_a_permit(
    sqlite_tenants: SqliteTenants, registry_of: RegistryOf
) -> None:
    """A request cancelled while queued (client gone) gives up its place; the next waiter
    gets the permit and the engine keeps no lease for it."""
    [acme] = sqlite_tenants("acme", register=False)
    engines = engines_with(engine_pool_size=1, engine_max_overflow=0)
    served: list[str] = []

    async def waiter(name: str) -> None:
        async with engines.lease(acme):
            served.append(name)

    try:
        async with engines.lease(acme):
            cancelled = await started(waiter("cancelled"))
            patient = await started(waiter("patient"))
            cancelled.cancel()
            await asyncio.sleep(0)
        await asyncio.wait_for(patient, timeout=5)
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        await engines.reconcile(registry_of())
        assert engines.open_engines == 0
    finally:
        await engines.close()

    assert served == ["patient"]


async def test_several_tenants_waiting_for_room_each_get_an_engine_retired_at_once(
    sqlite_tenants: SqliteTenants,
) -> None:
    """Two idle engines, two new tenants at once: both old engines leave together (turnover
    is not serial), and never more than the cache size are open."""
    acme, beta, gamma, delta = sqlite_tenants("acme", "beta", "gamma", "delta", register=False)
    engines = engines_with(engine_cache_size=2)
    try:
        for entry in (acme, beta):
            async with tenant_session(engines, entry) as session:
                await session.execute(text("SELECT 1"))

        retired: list[str] = []
        already_leaving: list[int] = []
        retire = engines._retire

        def counting_retire(slot: Any, reason: str) -> None:
            retired.append(f"{slot.slug}:{reason}")
            already_leaving.append(len(engines._retiring))
            retire(slot, reason)

        engines._retire = counting_retire  # type: ignore[method-assign]

        async def use(entry: TenantEntry) -> int:
            async with tenant_session(engines, entry) as session:
                await session.execute(text("SELECT 1"))
                return engines.open_engines

        opened = await asyncio.wait_for(asyncio.gather(use(gamma), use(delta)), timeout=5)

        assert sorted(retired) == ["acme:capacity", "beta:capacity"]
        assert already_leaving == [0, 1]  # the second left before the first was disposed
        assert max(opened) <= 2
        assert sorted(engines.cached_slugs()) == ["delta", "gamma"]
    finally:
        await engines.close()


async def test_a_tenant_arriving_as_room_frees_up_queues_behind_the_tenant_already_waiting(
    sqlite_tenants: SqliteTenants,
) -> None:
    """Cache size 1: beta waits for acme's engine to go. gamma's request arrives in the very
    turn the engine is gone, before beta is woken. beta, which waited first, still gets the
    room (newcomers that took it left early waiters to time out under a rotation of
    tenants: docs/benchmarks.md, target r). The disposal is wrapped to start gamma's request
    at that moment; it still disposes for real."""
    acme, beta, gamma = sqlite_tenants("acme", "beta", "gamma", register=False)
    engines = engines_with(engine_cache_size=1)
    served: list[str] = []
    newcomers: list[asyncio.Task[None]] = []
    dispose = engines._dispose

    async def use(entry: TenantEntry) -> None:
        async with tenant_session(engines, entry) as session:
            served.append(entry.slug)
            await session.execute(text("SELECT 1"))

    async def dispose_as_gamma_arrives(slot: Any) -> None:
        if slot.slug == "acme":
            await slot.engine.dispose()
            slot.disposed = True
            newcomers.append(asyncio.create_task(use(gamma)))
        await dispose(slot)  # what is left: the room is free, waiters are woken

    engines._dispose = dispose_as_gamma_arrives  # type: ignore[method-assign]
    try:
        async with engines.lease(acme):
            queued = await started(use(beta))
        await asyncio.wait_for(queued, timeout=5)
        await asyncio.wait_for(asyncio.gather(*newcomers), timeout=5)
    finally:
        await engines.close()

    assert served == ["beta", "gamma"]


async def test_tenants_waiting_for_room_get_engines_in_arrival_order(
    sqlite_tenants: SqliteTenants,
) -> None:
    """Cache size 2, both engines leased; six more tenants queue. They get engines in the
    order they asked, and a tenant already cached is served without queueing."""
    acme, beta, *queued_tenants = sqlite_tenants(*(f"tenant-{n}" for n in range(8)), register=False)
    engines = engines_with(engine_cache_size=2)
    served: list[str] = []

    async def use(entry: TenantEntry) -> None:
        async with tenant_session(engines, entry) as session:
            served.append(entry.slug)
            await session.execute(text("SELECT 1"))
            await asyncio.sleep(0.01)

    try:
        async with contextlib.AsyncExitStack() as held:
            await held.enter_async_context(engines.lease(acme))
            await held.enter_async_context(engines.lease(beta))
            waiters = [await started(use(entry)) for entry in queued_tenants]
            await asyncio.wait_for(use(acme), timeout=5)  # cached: no queue
            assert served == ["tenant-0"]
        await asyncio.wait_for(asyncio.gather(*waiters), timeout=10)
    finally:
        await engines.close()

    assert served == ["tenant-0", *(entry.slug for entry in queued_tenants)]
