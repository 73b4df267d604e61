"""Per-tenant engines: a bounded LRU of small pools, so N tenants never mean N full pools.

At most `engine_cache_size` engines are open at any moment, counting those retired and still
finishing their sessions, so the connections one replica can hold to tenant databases are at
most `engine_cache_size x (engine_pool_size + engine_max_overflow)`. When the cache is full
and a new tenant needs an engine, the least recently used idle engine is disposed; when every
engine is in use, the request waits (up to `engine_wait_seconds`, then 503) rather than
opening one more pool.

Sessions and readers hold a lease on their engine. An engine that leaves the cache
(capacity, idleness, or a registry change such as a removed tenant or a rotated password) is
disposed only when its last lease ends: an in-flight session finishes on the connection it
has, and no session can open a new pool behind a disposed engine's back.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from pydantic import SecretStr
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import QueuePool

from service.core.config import DatabaseSettings, TenantSettings
from service.core.errors import DomainError
from service.core.logging import get_logger
from service.db.engine import (
    ReadConnection,
    ReadRow,
    ReadStatement,
    ServerDialects,
    SessionFactories,
    create_engine,
    create_session_factories,
)
from service.tenants.metrics import TenantMetrics
from service.tenants.registry import RegistryChanges
from service.tenants.schemas import TenantEntry, TenantLookup

log = get_logger(__name__)
RETRY_AFTER_SECONDS = 1


class TenantsBusy(DomainError):
    """Every tenant engine slot is in use and none came free in time."""

    status_code = HTTPStatus.SERVICE_UNAVAILABLE
    message = "Too many tenants are active at once; retry shortly"

    def __init__(self) -> None:
        super().__init__(headers={"Retry-After": str(RETRY_AFTER_SECONDS)})


def create_tenant_engine(
    url: str, database: DatabaseSettings, tenants: TenantSettings
) -> AsyncEngine:
    """A small pool on the tenant's own database URL: timeouts and pings as the control
    plane's, sizes from `TenantSettings`."""
    return create_engine(
        database.model_copy(
            update={
                "url": SecretStr(url),
                "pool_size": tenants.engine_pool_size,
                "max_overflow": tenants.engine_max_overflow,
            }
        )
    )


@dataclass(eq=False)
class _Slot:
    slug: str
    url: str = field(repr=False)
    engine: AsyncEngine
    sessions: SessionFactories
    last_used: float
    # One permit per pooled connection (see `lease`).
    permits: asyncio.Semaphore
    leases: int = 0
    retired_for: str | None = None  # eviction reason once out of the cache
    disposed: bool = False


@dataclass(eq=False)
class _RoomWaiter:
    slug: str
    woken: asyncio.Event = field(default_factory=asyncio.Event)


class TenantEngines:
    """The bounded engine cache (in the app: `Tenancy.engines`)."""

    def __init__(
        self,
        tenants: TenantSettings,
        database: DatabaseSettings,
        *,
        metrics: TenantMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = tenants
        self._database = database
        self._clock = clock
        self._cached: OrderedDict[str, _Slot] = OrderedDict()  # least recently used first
        self._retiring: set[_Slot] = set()
        self._disposals: set[asyncio.Task[None]] = set()
        # Acquirers of a new engine waiting for room, first come first served; each may have
        # one engine on its way out for it (`_make_room`).
        self._room_queue: deque[_RoomWaiter] = deque()
        self._checked_out = 0
        self._checkouts = 0
        self._closed = False
        self._metrics = metrics
        self._dialects = ServerDialects()
        self._observe()

    # -- observation -------------------------------------------------------------------

    @property
    def open_engines(self) -> int:
        """Engines holding (or able to hold) connections: cached plus retiring."""
        return len(self._cached) + len(self._retiring)

    @property
    def checked_out(self) -> int:
        return self._checked_out

    @property
    def checkouts(self) -> int:
        """Pooled connections handed out since start, sessions' and readers' alike."""
        return self._checkouts

    def cached_slugs(self) -> list[str]:
        """Tenants with a cached engine, least recently used first."""
        return list(self._cached)

    def open_connections(self) -> int:
        """Connections held by every open tenant pool, in use or idle."""
        total = 0
        for slot in [*self._cached.values(), *self._retiring]:
            pool = slot.engine.sync_engine.pool
            if isinstance(pool, QueuePool):
                total += pool.checkedin() + pool.checkedout()
        return total

    def _observe(self) -> None:
        if self._metrics is None:
            return
        self._metrics.engines_open.set(self.open_engines)
        self._metrics.connections_checked_out.set(self._checked_out)

    def _on_checkout(self, *_: Any) -> None:
        self._checked_out += 1
        self._checkouts += 1
        self._observe()

    def _on_checkin(self, *_: Any) -> None:
        # Fires on the pool the connection came from, even after that engine was disposed.
        self._checked_out -= 1
        self._observe()

    # -- leases --------------------------------------------------------------------------

    @asynccontextmanager
    async def lease(self, entry: TenantEntry) -> AsyncIterator[SessionFactories]:
        """The tenant's session factories, its engine kept open until the block ends."""
        slot = await self._acquire(entry)
        try:
            async with self._permit(slot):
                yield slot.sessions
        finally:
            self._release(slot)

    def reader(self, entry: TenantEntry) -> TenantReader:
        """Reads on the tenant's database; nothing is taken until the first query."""
        return TenantReader(self, entry)

    @asynccontextmanager
    async def _permit(self, slot: _Slot) -> AsyncIterator[None]:
        await self._take_permit(slot)
        try:
            yield
        finally:
            slot.permits.release()

    async def _take_permit(self, slot: _Slot) -> None:
        """One of the tenant's connections, waited for in arrival order.

        Requests beyond the pool queue here, first come first served, not inside
        SQLAlchemy's pool: there a returned connection goes to whichever coroutine runs
        next, often a newcomer, and early waiters starved (p99 20x the median under load,
        docs/benchmarks.md). asyncio.Semaphore is FIFO and lets no newcomer barge past.
        """
        try:
            async with asyncio.timeout(self._database.pool_timeout_seconds):
                await slot.permits.acquire()
        except TimeoutError:
            log.warning("tenant_pool_busy", tenant=slot.slug)
            raise TenantsBusy() from None

    async def _open_read(self, entry: TenantEntry) -> _ReadLease:
        """The engine lease, a permit and a pooled connection, as `lease` takes them."""
        slot = await self._acquire(entry)
        try:
            await self._take_permit(slot)
        except BaseException:
            self._release(slot)
            raise
        try:
            connection = await ReadConnection.open(slot.engine)
        except BaseException:
            slot.permits.release()
            self._release(slot)
            raise
        return _ReadLease(slot, connection)

    async def _close_read(self, lease: _ReadLease) -> None:
        try:
            await lease.connection.close()
        finally:  # also when cancelled while the connection goes back
            lease.slot.permits.release()
            self._release(lease.slot)

    async def _acquire(self, entry: TenantEntry) -> _Slot:
        """Lease the tenant's engine: the cached one at once, a new one if there is room and
        nobody queues for it, else a place in the queue for room."""
        if self._closed:
            raise RuntimeError("tenant engines are closed")
        url = entry.database_url.get_secret_value()
        slot = self._lease_cached(entry.slug, url)
        if slot is None and not self._room_queue:
            slot = self._lease_new(entry.slug, url)
        if slot is not None:
            return slot
        return await self._queue_for_room(entry.slug, url)

    def _lease_cached(self, slug: str, url: str) -> _Slot | None:
        slot = self._cached.get(slug)
        if slot is None:
            return None
        if slot.url != url:
            self._retire(slot, "registry")  # the entry changed (e.g. a rotated password)
            return None
        return self._lease(slot)

    def _lease_new(self, slug: str, url: str) -> _Slot | None:
        if self.open_engines >= self.settings.engine_cache_size:
            return None
        return self._lease(self._open(slug, url))

    def _lease(self, slot: _Slot) -> _Slot:
        slot.leases += 1
        self._cached.move_to_end(slot.slug)
        return slot

    async def _queue_for_room(self, slug: str, url: str) -> _Slot:
        """Wait for room first come first served; a tenant that another waiter's engine
        brought into the cache meanwhile is served as soon as it is there.

        A newcomer never takes room that came free while others queue: when every waiter
        was woken to race for it, newcomers won often enough that early waiters starved past
        the client's timeout under a rotation of tenants (docs/benchmarks.md, target r).
        """
        waiter = _RoomWaiter(slug)
        self._room_queue.append(waiter)
        self._make_room()
        try:
            async with asyncio.timeout(self.settings.engine_wait_seconds):
                while True:
                    await waiter.woken.wait()
                    waiter.woken.clear()
                    if self._closed:
                        raise RuntimeError("tenant engines are closed")
                    slot = self._lease_cached(slug, url)
                    if slot is None and self._room_queue[0] is waiter:
                        slot = self._lease_new(slug, url)
                    if slot is not None:
                        return slot
                    self._make_room()
        except TimeoutError:
            log.warning("tenant_engines_busy", tenant=slug, engines=self.open_engines)
            raise TenantsBusy() from None
        finally:
            self._room_queue.remove(waiter)
            self._wake()  # the next in line may have room now

    def _make_room(self) -> None:
        """Retire the least recently used idle engine, unless every waiter already has one
        on its way out for it (retiring more would over-evict).

        One retirement per waiter, not one at a time: with many tenants in rotation each new
        engine waited for the previous disposal, and turnover was serial (docs/benchmarks.md).
        """
        leaving = sum(1 for slot in self._retiring if slot.retired_for == "capacity")
        if leaving >= len(self._room_queue):
            return
        for slot in self._cached.values():
            if slot.leases == 0:
                self._retire(slot, "capacity")
                return

    def _wake(self) -> None:
        """Wake the head of the queue, and every waiter whose tenant is cached by now."""
        for position, waiter in enumerate(self._room_queue):
            if position == 0 or waiter.slug in self._cached:
                waiter.woken.set()

    def _release(self, slot: _Slot) -> None:
        # Synchronous on purpose: it runs in `finally` blocks, also of cancelled requests.
        slot.leases -= 1
        slot.last_used = self._clock()
        if slot.retired_for is not None and slot.leases == 0:
            self._schedule_dispose(slot)
        self._wake()

    # -- opening and disposing -----------------------------------------------------------

    def _open(self, slug: str, url: str) -> _Slot:
        engine = create_tenant_engine(url, self._database, self.settings)
        self._dialects.share(engine)
        pool = engine.sync_engine.pool
        event.listen(pool, "checkout", self._on_checkout)
        event.listen(pool, "checkin", self._on_checkin)
        capacity = self.settings.engine_pool_size + self.settings.engine_max_overflow
        slot = _Slot(
            slug,
            url,
            engine,
            create_session_factories(engine),
            self._clock(),
            permits=asyncio.Semaphore(capacity),
        )
        self._cached[slug] = slot
        self._observe()
        return slot

    def _retire(self, slot: _Slot, reason: str) -> None:
        """Take the engine out of the cache; dispose it now if idle, else at its last lease."""
        if self._cached.get(slot.slug) is slot:
            del self._cached[slot.slug]
        slot.retired_for = reason
        self._retiring.add(slot)
        if self._metrics is not None:
            self._metrics.evictions.labels(reason=reason).inc()
        log.info("tenant_engine_evicted", tenant=slot.slug, reason=reason, leases=slot.leases)
        if slot.leases == 0:
            self._schedule_dispose(slot)
        self._observe()

    def _schedule_dispose(self, slot: _Slot) -> None:
        task = asyncio.create_task(self._dispose(slot), name=f"dispose-tenant-engine-{slot.slug}")
        self._disposals.add(task)
        task.add_done_callback(self._disposals.discard)

    async def _dispose(self, slot: _Slot) -> None:
        try:
            if not slot.disposed:
                slot.disposed = True
                await slot.engine.dispose()
        except Exception as exc:  # a dead server must not keep the slot forever
            log.warning("tenant_engine_dispose_failed", tenant=slot.slug, error=type(exc).__name__)
        finally:
            self._retiring.discard(slot)
            self._observe()
            self._wake()

    async def wait_disposed(self) -> None:
        """Wait for the disposals under way (engines still leased are not under way yet)."""
        while self._disposals:
            await asyncio.gather(*self._disposals)

    # -- policies driven by the registry watcher -----------------------------------------

    async def reconcile(self, lookup: TenantLookup) -> None:
        """Retire engines of tenants removed, no longer served, or whose URL changed."""
        for slot in list(self._cached.values()):
            entry = lookup.get(slot.slug)
            url = None if entry is None else entry.database_url.get_secret_value()
            if entry is None or not entry.is_serving or url != slot.url:
                self._retire(slot, "registry")
        await self.wait_disposed()

    async def dispose_idle(self) -> None:
        """Retire engines nobody used for `engine_idle_seconds`."""
        cutoff = self._clock() - self.settings.engine_idle_seconds
        for slot in list(self._cached.values()):
            if slot.leases == 0 and slot.last_used <= cutoff:
                self._retire(slot, "idle")
        await self.wait_disposed()

    async def on_registry_poll(self, lookup: TenantLookup, changes: RegistryChanges) -> None:
        """The watcher's hook: follow registry changes, then sweep idle engines."""
        if changes:
            await self.reconcile(lookup)
        await self.dispose_idle()

    async def close(self) -> None:
        """Dispose every engine (shutdown: requests have drained; any straggler's connection
        is closed when it is checked back in)."""
        self._closed = True
        for waiter in self._room_queue:
            waiter.woken.set()
        slots = [*self._cached.values(), *self._retiring]
        self._cached.clear()
        await self.wait_disposed()
        for slot in slots:
            await self._dispose(slot)


@dataclass(frozen=True, slots=True)
class _ReadLease:
    slot: _Slot
    connection: ReadConnection


class TenantReader:
    """The request's tenant and reads on its database, for GET routes: no session.

    The engine lease, a FIFO permit and a pooled connection are taken at the first query
    (a request answered from a cache takes none of them) and held until `close`, which the
    request dependency runs when the route is done, on errors and cancellation too.
    """

    __slots__ = ("_engines", "_lease", "tenant")

    def __init__(self, engines: TenantEngines, tenant: TenantEntry) -> None:
        self.tenant = tenant
        self._engines = engines
        self._lease: _ReadLease | None = None

    async def all(
        self, statement: ReadStatement, params: Mapping[str, Any] | None = None
    ) -> Sequence[ReadRow]:
        """The rows of a SELECT (`ReadConnection.all`)."""
        if self._lease is None:
            self._lease = await self._engines._open_read(self.tenant)
        return await self._lease.connection.all(statement, params)

    async def close(self) -> None:
        """Give back what the first query took; nothing if there was none."""
        lease, self._lease = self._lease, None
        if lease is not None:
            await self._engines._close_read(lease)
