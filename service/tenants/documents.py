"""Per-tenant MongoDB databases: a bounded LRU of clients, each bound to one tenant.

A tenant is served from its own database through its own client: the registry entry's
`mongo_url` (the operator's user for that tenant, which may read nothing else) and
`mongo_database`, or, without them, `BERTH_MONGO__URL` and `<database_prefix><slug>`.

Beanie binds document classes to one database at `init_beanie`, so features do not share
classes across tenants: each tenant's slot holds its own classes, made by a `ModelBinder`
(a fresh subclass per tenant, initialised on that tenant's database) once per slot, under a
lock so two first requests cannot initialise twice. A request reaches documents only
through the classes of the slot it leases, so no query can run on another tenant's
database; `docs/tenants.md` says more.

At most `client_cache_size` clients are open, counting those evicted and still finishing
requests; when every slot is leased, a new tenant waits (up to `wait_seconds`, then 503).
A slot whose URL or database changed in the registry (a rotated password) is replaced on the
next lease; an evicted client closes when its last lease ends.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from service.core.config import MongoSettings
from service.core.logging import get_logger
from service.documents.client import MongoDocument, MongoNotConfigured, create_client
from service.tenants.engines import TenantsBusy
from service.tenants.schemas import TenantEntry

log = get_logger(__name__)
T = TypeVar("T")
WAIT_SECONDS = 10.0


@dataclass(frozen=True)
class ModelBinder(Generic[T]):
    """How a feature makes its document classes for one tenant's database (once per slot)."""

    name: str
    bind: Callable[[AsyncDatabase[MongoDocument]], Awaitable[T]]


@dataclass(frozen=True)
class MongoTarget:
    """Where one tenant's documents live."""

    url: str = field(repr=False)
    database: str


@dataclass(eq=False)
class TenantDocumentDatabase:
    """One tenant's client and database, with the classes features bound to it."""

    slug: str
    target: MongoTarget
    client: AsyncMongoClient[MongoDocument]
    last_used: float
    leases: int = 0
    retired: bool = False
    _bound: dict[str, Any] = field(default_factory=dict)
    _binding: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def database(self) -> AsyncDatabase[MongoDocument]:
        return self.client[self.target.database]

    async def models(self, binder: ModelBinder[T]) -> T:
        """The feature's classes bound to this tenant's database (made on first use)."""
        bound = self._bound.get(binder.name)
        if bound is not None:
            return bound  # type: ignore[no-any-return]
        async with self._binding:
            if binder.name not in self._bound:
                self._bound[binder.name] = await binder.bind(self.database)
        return self._bound[binder.name]  # type: ignore[no-any-return]


def target_of(entry: TenantEntry, settings: MongoSettings) -> MongoTarget | None:
    """The tenant's own URL and database from its entry, else the shared server's."""
    database = entry.mongo_database or f"{settings.database_prefix}{entry.slug}"
    if entry.mongo_url is not None:
        return MongoTarget(entry.mongo_url.get_secret_value(), database)
    if settings.url is not None:
        return MongoTarget(settings.url.get_secret_value(), database)
    return None


class TenantDocuments:
    """The bounded client cache (in the app: `Tenancy.documents`)."""

    def __init__(
        self,
        settings: MongoSettings,
        *,
        wait_seconds: float = WAIT_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self._wait_seconds = wait_seconds
        self._clock = clock
        self._cached: OrderedDict[str, TenantDocumentDatabase] = OrderedDict()
        self._retiring: set[TenantDocumentDatabase] = set()
        self._freed = asyncio.Condition()
        self._server: AsyncMongoClient[MongoDocument] | None = None

    @property
    def open_clients(self) -> int:
        return len(self._cached) + len(self._retiring)

    async def ping(self) -> None:
        """Readiness: the configured server answers (`hello` needs no credentials)."""
        if self.settings.url is None:
            raise MongoNotConfigured
        if self._server is None:
            self._server = create_client(self.settings.url.get_secret_value(), self.settings)
        await self._server.admin.command("ping")

    def cached_slugs(self) -> list[str]:
        return list(self._cached)

    def serves(self, entry: TenantEntry) -> bool:
        """Whether `entry` has a document database (its own or the shared server's)."""
        return target_of(entry, self.settings) is not None

    @asynccontextmanager
    async def lease(self, entry: TenantEntry) -> AsyncIterator[TenantDocumentDatabase]:
        """The tenant's database for the block; its client stays open until the block ends."""
        target = target_of(entry, self.settings)
        if target is None:
            raise MongoNotConfigured
        slot = await self._acquire(entry.slug, target)
        try:
            yield slot
        finally:
            await self._release(slot)

    async def _acquire(self, slug: str, target: MongoTarget) -> TenantDocumentDatabase:
        async with self._freed:
            slot = self._cached.get(slug)
            if slot is not None and slot.target != target:
                self._retire(slot)  # rotated credentials or a moved database
                slot = None
            if slot is None:
                slot = await self._open(slug, target)
            self._cached.move_to_end(slug)
            slot.leases += 1
            slot.last_used = self._clock()
            return slot

    async def _open(self, slug: str, target: MongoTarget) -> TenantDocumentDatabase:
        try:
            await asyncio.wait_for(self._freed.wait_for(self._has_room), self._wait_seconds)
        except TimeoutError:
            raise TenantsBusy from None
        slot = TenantDocumentDatabase(
            slug=slug,
            target=target,
            client=create_client(target.url, self.settings),
            last_used=self._clock(),
        )
        self._cached[slug] = slot
        return slot

    def _has_room(self) -> bool:
        """Room for one more client, after evicting the least recently used idle ones and
        every idle one past `client_idle_seconds`."""
        now = self._clock()
        for slot in list(self._cached.values()):
            is_stale = now - slot.last_used > self.settings.client_idle_seconds
            if slot.leases == 0 and (is_stale or self.open_clients >= self._capacity):
                self._retire(slot)
        return self.open_clients < self._capacity

    @property
    def _capacity(self) -> int:
        return self.settings.client_cache_size

    def _retire(self, slot: TenantDocumentDatabase) -> None:
        if self._cached.get(slot.slug) is slot:
            del self._cached[slot.slug]
        slot.retired = True
        if slot.leases == 0:
            self._close_soon(slot)
        else:
            self._retiring.add(slot)

    def _close_soon(self, slot: TenantDocumentDatabase) -> None:
        self._retiring.discard(slot)
        task = asyncio.get_running_loop().create_task(slot.client.close())
        task.add_done_callback(_log_close_failure)

    async def _release(self, slot: TenantDocumentDatabase) -> None:
        async with self._freed:
            slot.leases -= 1
            slot.last_used = self._clock()
            if slot.retired and slot.leases == 0:
                self._close_soon(slot)
            self._freed.notify_all()

    async def close(self) -> None:
        """Close every client (the app's shutdown, after the worker has stopped)."""
        clients = [slot.client for slot in [*self._cached.values(), *self._retiring]]
        if self._server is not None:
            clients.append(self._server)
            self._server = None
        self._cached.clear()
        self._retiring.clear()
        await asyncio.gather(*(client.close() for client in clients), return_exceptions=True)


def _log_close_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("mongo_client_close_failed", error=type(task.exception()).__name__)
