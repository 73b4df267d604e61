"""The key-value store: Redis (real server) and the in-process fallback behave alike."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest

from service.core.config import RedisSettings
from service.core.metrics import REDIS_ERRORS, Metrics
from service.core.store import KeyValueStore, MemoryStore, StoreUnavailable, create_store


@pytest.fixture(params=["redis", "memory"])
def store_settings(request: pytest.FixtureRequest) -> RedisSettings:
    if request.param == "redis":
        return RedisSettings(url=request.getfixturevalue("redis_server"))
    return RedisSettings(url=None, memory_max_entries=100)


@pytest.fixture
async def store(store_settings: RedisSettings) -> AsyncIterator[KeyValueStore]:
    kv = create_store(store_settings)
    assert kv.backend == ("memory" if store_settings.url is None else "redis")
    yield kv
    await kv.close()


def key() -> str:
    return f"berth-test:{uuid.uuid4().hex}"


async def test_set_get_delete_round_trip(store: KeyValueStore) -> None:
    k = key()
    await store.set(k, b"value", ttl_seconds=30)

    assert await store.get(k) == b"value"
    assert await store.delete(k) == 1
    assert await store.get(k) is None


async def test_values_expire_after_their_ttl(store: KeyValueStore) -> None:
    k = key()
    await store.set(k, b"short-lived", ttl_seconds=1)

    await asyncio.sleep(1.1)

    assert await store.get(k) is None


async def test_incr_counts_and_expires(store: KeyValueStore) -> None:
    k = key()

    counts = [await store.incr(k, ttl_seconds=1) for _ in range(3)]
    await asyncio.sleep(1.1)

    assert counts == [1, 2, 3]
    assert await store.incr(k, ttl_seconds=1) == 1


async def test_ping_answers(store: KeyValueStore) -> None:
    await store.ping()


async def test_memory_store_is_bounded_and_evicts_least_recently_used() -> None:
    kv = MemoryStore(max_entries=3)
    for name in ("a", "b", "c"):
        await kv.set(name, name.encode(), ttl_seconds=60)
    await kv.get("a")  # a is now the most recently used

    await kv.set("d", b"d", ttl_seconds=60)

    assert await kv.get("b") is None
    assert [await kv.get(n) for n in ("a", "c", "d")] == [b"a", b"c", b"d"]


async def test_get_many_returns_values_in_order_with_none_for_missing_keys(
    store: KeyValueStore,
) -> None:
    first, missing, second = key(), key(), key()
    await store.set(first, b"one", ttl_seconds=30)
    await store.set(second, b"two", ttl_seconds=30)

    assert await store.get_many(second, missing, first) == [b"two", None, b"one"]
    assert await store.get_many(first, first) == [b"one", b"one"]
    assert await store.get_many(missing) == [None]
    assert await store.get_many() == []


async def test_get_many_answers_none_for_an_expired_key(store: KeyValueStore) -> None:
    short, long = key(), key()
    await store.set(short, b"short-lived", ttl_seconds=1)
    await store.set(long, b"long-lived", ttl_seconds=30)

    await asyncio.sleep(1.1)

    assert await store.get_many(short, long) == [None, b"long-lived"]


@pytest.fixture
async def silent_server() -> AsyncIterator[str]:
    """A TCP server that accepts connections and never answers: a hung Redis."""
    held: list[asyncio.StreamWriter] = []

    async def accept(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    yield f"redis://127.0.0.1:{port}/0"
    for writer in held:
        writer.close()
    server.close()
    await server.wait_closed()


async def test_a_redis_that_never_answers_fails_within_the_timeout_as_unavailable(
    silent_server: str,
) -> None:
    store = create_store(RedisSettings(url=silent_server, socket_timeout_seconds=0.2))
    loop = asyncio.get_running_loop()
    try:
        started = loop.time()
        with pytest.raises(StoreUnavailable) as raised:
            await store.get(key())
        elapsed = loop.time() - started
    finally:
        await store.close()

    assert 0.2 <= elapsed < 1.5
    assert raised.value.status_code == 503


async def test_a_redis_that_never_answers_counts_as_a_timeout(silent_server: str) -> None:
    metrics = Metrics(version="test", commit="test")
    store = create_store(
        RedisSettings(url=silent_server, socket_timeout_seconds=0.1), errors=metrics.redis_errors
    )
    try:
        with pytest.raises(StoreUnavailable):
            await store.get("berth:test:silent")
    finally:
        await store.close()

    value = metrics.registry.get_sample_value(REDIS_ERRORS, {"kind": "timeout"})
    assert value == 1


async def test_an_unreachable_redis_is_unavailable_not_a_crash(unused_tcp_port: int) -> None:
    store = create_store(RedisSettings(url=f"redis://127.0.0.1:{unused_tcp_port}/0"))
    try:
        with pytest.raises(StoreUnavailable):
            await store.get_many(key(), key())
    finally:
        await store.close()


async def test_a_burst_beyond_the_redis_pool_waits_for_a_connection_instead_of_failing(
    redis_server: str,
) -> None:
    """More concurrent calls than `max_connections`: each waits for a pooled connection
    (within the store's timeout) rather than failing at once with "Too many connections"."""
    store = create_store(RedisSettings(url=redis_server, max_connections=2))
    k = key()
    try:
        await store.set(k, b"v", ttl_seconds=30)
        answers = await asyncio.gather(*(store.get(k) for _ in range(50)))
    finally:
        await store.close()
    assert answers == [b"v"] * 50
