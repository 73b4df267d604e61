"""Key-value store for cache, counters and revocations: Redis, or a bounded in-process one.

The in-process store exists for the laptop only: production refuses to start without Redis,
because several replicas must share rate limits, revocations and cache.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from enum import StrEnum
from http import HTTPStatus
from typing import Protocol, TypeVar

from cachetools import TLRUCache
from prometheus_client import Counter
from redis.asyncio import BlockingConnectionPool, Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from service.core.config import RedisSettings
from service.core.errors import DomainError

T = TypeVar("T")


class KeyValueStore(Protocol):
    """What features may rely on, whichever backend is configured."""

    backend: str

    async def get(self, key: str) -> bytes | None: ...

    async def get_many(self, *keys: str) -> list[bytes | None]:
        """The values of `keys`, in order, in one round trip."""
        ...

    async def set(self, key: str, value: bytes, ttl_seconds: int) -> None: ...

    async def delete(self, *keys: str) -> int: ...

    async def incr(self, key: str, ttl_seconds: int) -> int: ...

    async def ping(self) -> None: ...

    async def close(self) -> None: ...


class StoreUnavailable(DomainError):
    """Redis failed or did not answer in time: 503, worth a retry (never a 500)."""

    status_code = HTTPStatus.SERVICE_UNAVAILABLE
    message = "A backing service is unavailable; retry shortly"


class RedisErrorKind(StrEnum):
    """The `kind` label of berth_redis_errors_total."""

    TIMEOUT = "timeout"  # no answer within the store's bound
    CONNECTION = "connection"  # refused, reset, unreachable
    RESPONSE = "response"  # Redis answered with an error (OOM, READONLY, a script error)


def redis_error_kind(exc: BaseException) -> RedisErrorKind:
    if isinstance(exc, TimeoutError | RedisTimeoutError):
        return RedisErrorKind.TIMEOUT
    if isinstance(exc, OSError | RedisConnectionError):
        return RedisErrorKind.CONNECTION
    return RedisErrorKind.RESPONSE


class RedisStore:
    """Every call is bounded by `timeout_seconds` and fails as StoreUnavailable.

    The bound is an `asyncio.timeout` around the whole call, not redis-py's socket_timeout:
    with that set, redis-py wraps every send in `asyncio.wait_for`, which on Python 3.11
    creates a task per command (a measurable share of a cached GET, docs/benchmarks.md).
    """

    backend = "redis"

    def __init__(
        self, client: Redis, timeout_seconds: float = 1.0, *, errors: Counter | None = None
    ) -> None:
        self.client = client
        self.timeout_seconds = timeout_seconds
        self.errors = errors  # berth_redis_errors_total, by kind

    async def bounded(self, operation: Awaitable[T]) -> T:
        """Await a Redis operation within the store's timeout (also for scripts)."""
        try:
            async with asyncio.timeout(self.timeout_seconds):
                return await operation
        except (TimeoutError, RedisError, OSError) as exc:
            if self.errors is not None:
                self.errors.labels(kind=redis_error_kind(exc).value).inc()
            raise StoreUnavailable() from exc

    async def get(self, key: str) -> bytes | None:
        value: bytes | str | None = await self.bounded(self.client.get(key))
        if value is None or isinstance(value, bytes):
            return value
        return value.encode()

    async def get_many(self, *keys: str) -> list[bytes | None]:
        values: list[bytes | str | None] = await self.bounded(self.client.mget(keys))
        return [value.encode() if isinstance(value, str) else value for value in values]

    async def set(self, key: str, value: bytes, ttl_seconds: int) -> None:
        await self.bounded(self.client.set(key, value, ex=max(1, ttl_seconds)))

    async def delete(self, *keys: str) -> int:
        return int(await self.bounded(self.client.delete(*keys))) if keys else 0

    async def incr(self, key: str, ttl_seconds: int) -> int:
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.incr(key)
            pipe.expire(key, max(1, ttl_seconds), nx=True)
            count, _ = await self.bounded(pipe.execute())
        return int(count)

    async def ping(self) -> None:
        await self.bounded(self.client.ping())

    async def close(self) -> None:
        await self.client.aclose()


# An in-process entry: (monotonic expiry time, value); the expiry travels with the value so
# that `incr` keeps the window the first increment opened.
_Entry = tuple[float, bytes]


def _expires_at(_: str, entry: _Entry, __: float) -> float:
    return entry[0]


class MemoryStore:
    """Bounded LRU with per-key expiry (cachetools' TLRUCache); same interface as RedisStore."""

    backend = "memory"

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._entries: TLRUCache[str, _Entry] = TLRUCache(
            maxsize=max_entries, ttu=_expires_at, timer=time.monotonic
        )

    def _live(self, key: str) -> bytes | None:
        entry = self._entries.get(key)
        return None if entry is None else entry[1]

    def _put(self, key: str, value: bytes, ttl_seconds: int) -> None:
        self._entries[key] = (time.monotonic() + max(1, ttl_seconds), value)

    async def get(self, key: str) -> bytes | None:
        return self._live(key)

    async def get_many(self, *keys: str) -> list[bytes | None]:
        return [self._live(key) for key in keys]

    async def set(self, key: str, value: bytes, ttl_seconds: int) -> None:
        self._put(key, value, ttl_seconds)

    async def delete(self, *keys: str) -> int:
        return sum(1 for key in keys if self._entries.pop(key, None) is not None)

    async def incr(self, key: str, ttl_seconds: int) -> int:
        entry = self._entries.get(key)
        if entry is None:
            self._put(key, b"1", ttl_seconds)
            return 1
        expires_at, current = entry
        count = int(current) + 1
        self._entries[key] = (expires_at, str(count).encode())
        return count

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        self._entries.clear()


def create_redis_client(settings: RedisSettings) -> Redis:
    assert settings.url is not None
    # A blocking pool: a burst beyond `max_connections` waits for a connection (bounded by
    # the store's timeout around each call) instead of failing at once with "Too many
    # connections" (503s when a cached entry expired under 256 requests, docs/benchmarks.md).
    # socket_timeout=None (redis-py 8 defaults to 5 s): RedisStore bounds each call itself.
    pool = BlockingConnectionPool.from_url(
        settings.url.get_secret_value(),
        socket_timeout=None,
        socket_connect_timeout=settings.socket_timeout_seconds,
        max_connections=settings.max_connections,
        health_check_interval=30,
        timeout=None,
    )
    return Redis.from_pool(pool)  # the client owns the pool: aclose() closes it


def create_store(settings: RedisSettings, *, errors: Counter | None = None) -> KeyValueStore:
    """`errors` counts failed Redis calls by kind (berth_redis_errors_total)."""
    if settings.url is None:
        return MemoryStore(settings.memory_max_entries)
    return RedisStore(create_redis_client(settings), settings.socket_timeout_seconds, errors=errors)
