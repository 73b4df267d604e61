"""A coherent in-process cache in front of Redis (server-assisted client-side caching).

One connection per process asks Redis for `CLIENT TRACKING ON REDIRECT <itself> BCAST PREFIX
...` and subscribes to `__redis__:invalidate`: from then on Redis tells it of every write,
expiry and eviction of a key under the tracked prefixes, whichever replica made it. Reads of
those keys (the principal's auth state and revocation checks, rendered articles and list
pages) are answered from process memory while that connection is known to be live, and go to
Redis otherwise:

- Live means subscribed and heard from within two heartbeats: the connection is pinged every
  `local_heartbeat_seconds`, so even a cut that closes no socket is noticed. When it is lost,
  everything cached is dropped and the cache is bypassed until it is back (subscribed again,
  then emptied once more), so a lost invalidation can never serve a revoked token or a stale
  article. The TTL of every entry (`local_ttl_seconds`) is the backstop.
- A read that was in flight while any invalidation arrived stores nothing: every
  invalidation (and every write through this process) moves `epoch` on, and a value is kept
  only if `epoch` is where it was when its read started. Absent keys are cached too (a
  revocation is a key appearing).
- Bounded by the bytes of its keys and values (`local_max_bytes`), least recently used out.

Redis delivers an invalidation when the write executes, before the writer's reply is sent, so
a request that follows a write's response finds its invalidation already on the socket; the
listener processes it at the next turn of the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from cachetools import TTLCache
from redis.asyncio.connection import Connection, ConnectionPool
from redis.exceptions import RedisError

from service.core.config import Settings
from service.core.logging import get_logger
from service.core.metrics import InvalidationReason, LocalCacheMetrics, Metrics
from service.core.store import KeyValueStore, RedisStore

log = get_logger(__name__)
INVALIDATION_CHANNEL = b"__redis__:invalidate"
# Per entry beyond its key and value: the cache's own bookkeeping (measured order of size).
ENTRY_OVERHEAD_BYTES = 200
RECONNECT_BACKOFF_SECONDS = (0.1, 0.25, 0.5, 1.0, 2.0)
_ABSENT = b""  # stands for "no such key" in the map (a stored empty value is not cached)


def _size_of(entry: tuple[str, bytes]) -> int:
    key, value = entry
    return len(key) + len(value) + ENTRY_OVERHEAD_BYTES


class LocalCache:
    """The bounded map, its epoch and whether it may be served from (see the module)."""

    def __init__(
        self,
        max_bytes: int,
        ttl_seconds: float,
        heartbeat_seconds: float,
        metrics: LocalCacheMetrics,
        *,
        clock: Any = time.monotonic,
    ) -> None:
        # Values are (key, value) so the size function sees the key too.
        self._entries: TTLCache[str, tuple[str, bytes]] = TTLCache(
            maxsize=max_bytes, ttl=ttl_seconds, timer=clock, getsizeof=_size_of
        )
        self.max_bytes = max_bytes
        self._stale_after = 2 * heartbeat_seconds
        self._clock = clock
        self.metrics = metrics
        self.epoch = 0
        self._subscribed = False
        self._last_heard = float("-inf")
        self.refresh_metrics()

    @property
    def is_live(self) -> bool:
        """Subscribed, and the invalidation connection answered within two heartbeats."""
        return self._subscribed and self._clock() - self._last_heard <= self._stale_after

    @property
    def entries(self) -> int:
        return len(self._entries)

    @property
    def size_bytes(self) -> int:
        return int(self._entries.currsize)

    def lookup(self, keys: Iterable[str]) -> list[bytes | None] | None:
        """The cached values of all `keys` (None for a key known absent), or None when any
        is not cached or the cache may not be served from."""
        if not self.is_live:
            self.metrics.bypass.inc()
            return None
        values: list[bytes | None] = []
        for key in keys:
            entry = self._entries.get(key)
            if entry is None:
                self.metrics.miss.inc()
                return None
            values.append(entry[1] or None)
        self.metrics.hit.inc()
        return values

    def store(self, epoch: int, keys: Iterable[str], values: Iterable[bytes | None]) -> None:
        """Keep what Redis answered to a read that started at `epoch`, unless anything was
        invalidated since (or the cache is not live)."""
        if epoch != self.epoch or not self.is_live:
            return
        for key, value in zip(keys, values, strict=True):
            if value == _ABSENT:
                continue  # an empty value would read back as "absent"
            with contextlib.suppress(ValueError):  # larger than the whole bound: not kept
                self._entries[key] = (key, _ABSENT if value is None else value)

    def invalidate(self, keys: Iterable[str]) -> None:
        """Forget `keys` (a write here, or Redis said they changed)."""
        self.epoch += 1
        for key in keys:
            self._entries.pop(key, None)

    def clear(self, reason: InvalidationReason) -> None:
        self.epoch += 1
        self._entries.clear()
        self.metrics.invalidations[reason].inc()

    def heard(self) -> None:
        """The invalidation connection answered (a pong or a message)."""
        self._last_heard = self._clock()

    def went_live(self) -> None:
        """Subscribed (again): whatever was written meanwhile is unknown, so start empty
        (counted when the connection went down)."""
        self.epoch += 1
        self._entries.clear()
        self._subscribed = True
        self.heard()

    def went_down(self) -> None:
        if self._subscribed:
            self._subscribed = False
            self.clear(InvalidationReason.DISCONNECT)

    def refresh_metrics(self) -> None:
        """Set the gauges (at start and before each scrape)."""
        self.metrics.entries.set(self.entries)
        self.metrics.size_bytes.set(self.size_bytes)
        self.metrics.live.set(1 if self.is_live else 0)


class InvalidationListener:
    """The tracking connection: subscribes, pings, feeds `LocalCache`, reconnects."""

    def __init__(
        self,
        url: str,
        prefixes: tuple[str, ...],
        cache: LocalCache,
        heartbeat_seconds: float,
        connect_timeout_seconds: float,
    ) -> None:
        # RESP2 on purpose: redirected invalidations arrive as ordinary pub/sub messages.
        self._pool = ConnectionPool.from_url(
            url,
            protocol=2,
            max_connections=1,
            socket_timeout=None,
            socket_connect_timeout=connect_timeout_seconds,
        )
        self.prefixes = prefixes
        self.cache = cache
        self.heartbeat_seconds = heartbeat_seconds
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="redis-invalidations")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.cache.went_down()
        await self._pool.aclose()

    async def _run(self) -> None:
        failures = 0
        while True:
            connection: Connection = self._pool.make_connection()  # type: ignore[no-untyped-call]
            try:
                await self._subscribe(connection)
                failures = 0
                self.cache.went_live()
                log.info("local_cache_live", prefixes=list(self.prefixes))
                await self._listen(connection)
            except (RedisError, OSError, TimeoutError) as exc:
                if self.cache.is_live or failures == 0:
                    log.warning("local_cache_bypassed", error=type(exc).__name__)
            finally:
                self.cache.went_down()
                await connection.disconnect(nowait=True)
            delay = RECONNECT_BACKOFF_SECONDS[min(failures, len(RECONNECT_BACKOFF_SECONDS) - 1)]
            failures += 1
            await asyncio.sleep(delay)

    async def _subscribe(self, connection: Connection) -> None:
        async with asyncio.timeout(self.heartbeat_seconds * 4):
            await connection.connect()  # type: ignore[no-untyped-call]
            client_id = await self._command(connection, "CLIENT", "ID")
            prefixes = [part for prefix in self.prefixes for part in ("PREFIX", prefix)]
            await self._command(
                connection, "CLIENT", "TRACKING", "ON", "REDIRECT", client_id, "BCAST", *prefixes
            )
            reply = await self._command(connection, "SUBSCRIBE", INVALIDATION_CHANNEL)
            if not (isinstance(reply, list) and reply[0] == b"subscribe"):
                raise RedisError(f"unexpected SUBSCRIBE reply {reply!r}")

    @staticmethod
    async def _command(connection: Connection, *args: object) -> Any:
        await connection.send_command(*args)
        return await connection.read_response()

    async def _listen(self, connection: Connection) -> None:
        """Until the connection fails or stays silent for two heartbeats."""
        loop = asyncio.get_running_loop()
        while True:
            await connection.send_command("PING")
            deadline = loop.time() + self.heartbeat_seconds
            while (remaining := deadline - loop.time()) > 0:
                message = await connection.read_response(timeout=remaining)
                if message is not None:
                    self._on_message(message)
            if not self.cache.is_live:
                raise TimeoutError("no answer from Redis on the invalidation connection")

    def _on_message(self, message: Any) -> None:
        self.cache.heard()
        if not isinstance(message, list) or message[0] != b"message":
            return  # a pong
        keys = message[2]
        if keys is None:  # FLUSHDB / FLUSHALL
            self.cache.clear(InvalidationReason.FLUSH)
            return
        self.cache.invalidate(key.decode() for key in keys)
        self.cache.metrics.invalidations[InvalidationReason.KEY].inc(len(keys))


@dataclass(frozen=True, slots=True)
class _Flight:
    """A Redis read under way for a tuple of keys: the epoch it started at, its answer."""

    epoch: int
    values: asyncio.Future[list[bytes | None] | None]


class LocallyCachedStore:
    """A `KeyValueStore` whose reads of tracked keys are answered by `LocalCache` when it
    can; every other key, and every write, goes to Redis (writes also forget locally)."""

    backend = "redis"

    def __init__(
        self, redis: RedisStore, cache: LocalCache, listener: InvalidationListener
    ) -> None:
        self.redis = redis
        self.cache = cache
        self.listener = listener
        self._prefixes = listener.prefixes
        self._flights: dict[tuple[str, ...], _Flight] = {}

    def _tracked(self, keys: tuple[str, ...]) -> bool:
        return all(key.startswith(self._prefixes) for key in keys)

    async def get(self, key: str) -> bytes | None:
        return (await self.get_many(key))[0]

    async def get_many(self, *keys: str) -> list[bytes | None]:
        if not self._tracked(keys):
            return await self.redis.get_many(*keys)
        cached = self.cache.lookup(keys)
        if cached is not None:
            return cached
        flight = self._flights.get(keys)
        if flight is None:
            return await self._fly(keys)
        values = await asyncio.shield(flight.values)
        # The leader's answer is good for this request only if nothing was invalidated since
        # it asked (the same rule as keeping it in the cache); else ask Redis again.
        if values is None or self.cache.epoch != flight.epoch:
            return await self.redis.get_many(*keys)
        return list(values)

    async def _fly(self, keys: tuple[str, ...]) -> list[bytes | None]:
        """Read `keys` from Redis for every request that misses them meanwhile: when an
        entry expires, the requests in flight ask once, not each (they were 64-256 at once,
        beyond the Redis pool: tails and 503s, docs/benchmarks.md)."""
        flight = _Flight(self.cache.epoch, asyncio.get_running_loop().create_future())
        self._flights[keys] = flight
        try:
            values = await self.redis.get_many(*keys)
            self.cache.store(flight.epoch, keys, values)
            flight.values.set_result(values)
            return values
        finally:
            del self._flights[keys]
            if not flight.values.done():  # failed or cancelled: followers read themselves
                flight.values.set_result(None)

    async def set(self, key: str, value: bytes, ttl_seconds: int) -> None:
        try:
            await self.redis.set(key, value, ttl_seconds)
        finally:
            self.cache.invalidate((key,))

    async def delete(self, *keys: str) -> int:
        try:
            return await self.redis.delete(*keys)
        finally:
            self.cache.invalidate(keys)

    async def incr(self, key: str, ttl_seconds: int) -> int:
        try:
            return await self.redis.incr(key, ttl_seconds)
        finally:
            self.cache.invalidate((key,))

    async def ping(self) -> None:
        await self.redis.ping()

    def start(self) -> None:
        """Open the invalidation connection (the cache is bypassed until it is live)."""
        self.listener.start()

    async def close(self) -> None:
        await self.listener.stop()


def locally_cached(
    store: KeyValueStore, settings: Settings, metrics: Metrics, prefixes: tuple[str, ...]
) -> LocallyCachedStore | None:
    """The coherent cache in front of `store` for keys under `prefixes`; None without Redis
    (the in-process store is local already) or with `local_max_bytes` 0."""
    cache_settings, redis_url = settings.cache, settings.redis.url
    if not isinstance(store, RedisStore) or redis_url is None or not prefixes:
        return None
    if cache_settings.local_max_bytes == 0:
        return None
    cache = LocalCache(
        cache_settings.local_max_bytes,
        cache_settings.local_ttl_seconds,
        cache_settings.local_heartbeat_seconds,
        metrics.local_cache_metrics(cache_settings.local_max_bytes),
    )
    metrics.refresh_on_scrape(cache.refresh_metrics)
    listener = InvalidationListener(
        redis_url.get_secret_value(),
        prefixes,
        cache,
        cache_settings.local_heartbeat_seconds,
        settings.redis.socket_timeout_seconds,
    )
    return LocallyCachedStore(store, cache, listener)
