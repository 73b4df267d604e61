"""The coherent in-process cache in front of Redis, against the real Redis server.

Two `LocallyCachedStore`s on one Redis stand for two replicas; the invalidation connection
goes through a TCP relay where a test cuts it. The data connections go straight to Redis, so
what the cache serves can be told apart from what Redis holds.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import pytest
from redis.asyncio import Redis

from service.core.config import CacheSettings, RedisSettings, Settings
from service.core.local_cache import (
    ENTRY_OVERHEAD_BYTES,
    InvalidationListener,
    LocalCache,
    LocallyCachedStore,
    locally_cached,
)
from service.core.metrics import (
    LOCAL_CACHE_BYTES,
    LOCAL_CACHE_LIVE,
    LOCAL_CACHE_MAX_BYTES,
    InvalidationReason,
    Metrics,
)
from service.core.store import MemoryStore, RedisStore, create_store
from tests.support import TcpRelay, eventually, redis_url_with

PREFIX = "berth:test-local:"
HEARTBEAT = 0.1


@dataclass
class Replica:
    store: LocallyCachedStore
    metrics: Metrics

    @property
    def cache(self) -> LocalCache:
        return self.store.cache


ReplicaFactory = Callable[..., Awaitable[Replica]]


@pytest.fixture
async def replica(redis_server: str) -> AsyncIterator[ReplicaFactory]:
    """`await replica(listen_url=..., max_bytes=...)`: a live locally cached store; its
    invalidation connection uses `listen_url` (default: Redis itself)."""
    made: list[Replica] = []

    async def factory(listen_url: str | None = None, max_bytes: int = 1 << 20) -> Replica:
        metrics = Metrics(version="test", commit="test")
        redis = create_store(RedisSettings(url=redis_server))
        assert isinstance(redis, RedisStore)
        cache = LocalCache(max_bytes, 30.0, HEARTBEAT, metrics.local_cache_metrics(max_bytes))
        listener = InvalidationListener(
            listen_url or redis_server, (PREFIX,), cache, HEARTBEAT, 1.0
        )
        store = LocallyCachedStore(redis, cache, listener)
        store.start()
        made.append(Replica(store, metrics))
        await eventually(lambda: cache.is_live)
        return made[-1]

    yield factory
    for each in made:
        await each.store.close()
        await each.store.redis.close()


@pytest.fixture
async def redis(redis_server: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_server)
    yield client
    await client.aclose()


async def heard_by(write: Awaitable[object], *nodes: Replica) -> None:
    """Make `write`, then wait until each node has processed its invalidation (a read
    started before that stores nothing, by design)."""
    counts = [invalidations(node) for node in nodes]
    await write
    for node, count in zip(nodes, counts, strict=True):
        await eventually(lambda node=node, count=count: invalidations(node) > count)  # type: ignore[misc]


def invalidations(node: Replica) -> float:
    """Keys Redis said changed, as the node processed them."""
    return float(node.store.cache.metrics.invalidations[InvalidationReason.KEY]._value.get())


def key() -> str:
    return f"{PREFIX}{uuid.uuid4().hex}"


def gauge(metrics: Metrics, name: str) -> float:
    value = metrics.registry.get_sample_value(name)
    assert value is not None
    return value


async def test_a_second_read_is_answered_from_memory(replica: ReplicaFactory, redis: Redis) -> None:
    node = await replica()
    k = key()
    await heard_by(redis.set(k, b"v1"), node)
    hits, misses = node.store.cache.metrics.hit, node.store.cache.metrics.miss

    assert await node.store.get(k) == b"v1"
    assert await node.store.get(k) == b"v1"

    assert (misses._value.get(), hits._value.get()) == (1, 1)


async def test_a_write_on_another_replica_reaches_this_one(
    replica: ReplicaFactory,
) -> None:
    a, b = await replica(), await replica()
    k = key()
    await heard_by(a.store.set(k, b"old", 60), b)
    assert await b.store.get(k) == b"old"
    assert b.cache.lookup([k]) == [b"old"]  # warm on B

    await a.store.set(k, b"new", 60)

    await eventually(lambda: b.cache.lookup([k]) is None)
    assert await b.store.get(k) == b"new"


async def test_an_absent_key_is_cached_and_its_creation_invalidates_it(
    replica: ReplicaFactory, redis: Redis
) -> None:
    """A revocation is a key appearing: "absent" must not outlive the write."""
    node = await replica()
    k = key()
    assert await node.store.get_many(k, key()) == [None, None]
    assert node.cache.lookup([k]) == [None]

    await redis.set(k, b"1")  # another replica revokes

    await eventually(lambda: node.cache.lookup([k]) is None)
    assert await node.store.get(k) == b"1"


async def test_a_write_through_this_store_forgets_at_once(replica: ReplicaFactory) -> None:
    node = await replica()
    k = key()
    await heard_by(node.store.set(k, b"old", 60), node)
    assert await node.store.get(k) == b"old"
    assert node.cache.lookup([k]) == [b"old"]

    await node.store.delete(k)

    assert node.cache.lookup([k]) is None
    assert await node.store.get(k) is None


async def test_a_read_in_flight_during_an_invalidation_stores_nothing(
    replica: ReplicaFactory,
) -> None:
    node = await replica()
    k = key()
    epoch = node.cache.epoch
    node.cache.invalidate([key()])  # any invalidation while the read was on the wire

    node.cache.store(epoch, [k], [b"read before the write"])

    assert node.cache.lookup([k]) is None


async def test_untracked_keys_are_never_cached(replica: ReplicaFactory, redis: Redis) -> None:
    node = await replica()
    other = f"berth:rl:{uuid.uuid4().hex}"
    await redis.set(other, b"1")
    assert await node.store.get(other) == b"1"
    await redis.delete(other)
    assert await node.store.get(other) is None


async def test_flushdb_empties_the_cache(replica: ReplicaFactory, redis_server: str) -> None:
    node = await replica()
    k = key()
    await heard_by(node.store.set(k, b"v", 60), node)
    assert await node.store.get(k) == b"v"
    assert node.cache.entries == 1
    flushes = node.store.cache.metrics.invalidations[InvalidationReason.FLUSH]
    before = flushes._value.get()

    async with Redis.from_url(redis_server) as client:
        await client.flushdb()

    await eventually(lambda: node.cache.entries == 0)
    assert flushes._value.get() == before + 1


async def test_the_cache_stays_within_its_byte_bound(replica: ReplicaFactory) -> None:
    bound = 20 * (len(key()) + 1000 + ENTRY_OVERHEAD_BYTES)
    node = await replica(max_bytes=bound)
    keys = [key() for _ in range(100)]
    for k in keys:
        await heard_by(node.store.set(k, b"x" * 1000, 60), node)
        await node.store.get(k)

    node.cache.refresh_metrics()
    assert 0 < node.cache.size_bytes <= bound
    assert node.cache.entries <= 20
    assert gauge(node.metrics, LOCAL_CACHE_BYTES) == node.cache.size_bytes
    assert node.cache.lookup(keys[-1:]) == [b"x" * 1000]  # the most recent is kept


async def test_a_cut_invalidation_connection_bypasses_the_cache_until_it_is_back(
    replica: ReplicaFactory, redis_server: str, redis: Redis
) -> None:
    port = int(redis_server.rsplit(":", 1)[1].split("/")[0])
    relay = TcpRelay("127.0.0.1", port)
    await relay.start()
    node = await replica(listen_url=redis_url_with(redis_server, port=relay.port))
    k = key()
    await heard_by(redis.set(k, b"before"), node)
    assert await node.store.get(k) == b"before"
    assert node.cache.lookup([k]) == [b"before"]

    await relay.stop()
    await eventually(lambda: not node.cache.is_live)
    await redis.set(k, b"written while the cache was deaf")

    assert node.cache.entries == 0
    assert node.cache.lookup([k]) is None
    assert await node.store.get(k) == b"written while the cache was deaf"
    node.cache.refresh_metrics()
    assert gauge(node.metrics, LOCAL_CACHE_LIVE) == 0

    await relay.start()
    await eventually(lambda: node.cache.is_live)
    await asyncio.sleep(HEARTBEAT)  # the write's invalidation predates the subscription
    assert await node.store.get(k) == b"written while the cache was deaf"
    assert node.cache.lookup([k]) == [b"written while the cache was deaf"]
    await relay.stop()


async def test_a_silent_invalidation_connection_is_noticed_by_the_heartbeat(
    replica: ReplicaFactory, redis_server: str
) -> None:
    """A relay that stops forwarding but closes nothing: only the missing pongs tell."""
    port = int(redis_server.rsplit(":", 1)[1].split("/")[0])
    relay = FreezableRelay("127.0.0.1", port)
    await relay.start()
    node = await replica(listen_url=redis_url_with(redis_server, port=relay.port))

    relay.frozen = True

    await eventually(lambda: not node.cache.is_live, timeout=3 * HEARTBEAT + 1)
    assert node.cache.lookup([key()]) is None
    relay.frozen = False
    await relay.stop()


class FreezableRelay(TcpRelay):
    """Drops what it would forward while `frozen` (the sockets stay open)."""

    frozen = False

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        while data := await source.read(65536):
            if not self.frozen:
                sink.write(data)
                await sink.drain()
        sink.close()


def _settings(redis_url: str | None, max_bytes: int) -> Settings:
    return Settings(
        redis=RedisSettings(url=redis_url), cache=CacheSettings(local_max_bytes=max_bytes)
    )


def test_there_is_no_local_cache_without_redis_or_with_a_zero_bound(redis_server: str) -> None:
    metrics = Metrics(version="test", commit="test")
    memory = MemoryStore(10)
    redis_store = create_store(RedisSettings(url=redis_server))
    assert locally_cached(memory, _settings(None, 1 << 20), metrics, (PREFIX,)) is None
    assert locally_cached(redis_store, _settings(redis_server, 0), metrics, (PREFIX,)) is None
    made = locally_cached(redis_store, _settings(redis_server, 1 << 20), metrics, (PREFIX,))
    assert isinstance(made, LocallyCachedStore)


def test_a_process_without_a_local_cache_exports_none_of_its_series(redis_server: str) -> None:
    """So that a dashboard or an alert never reads "bypassed" where there is no cache."""
    metrics = Metrics(version="test", commit="test")
    locally_cached(MemoryStore(10), _settings(None, 1 << 20), metrics, (PREFIX,))
    assert metrics.registry.get_sample_value(LOCAL_CACHE_LIVE) is None

    redis_store = create_store(RedisSettings(url=redis_server))
    locally_cached(redis_store, _settings(redis_server, 1 << 20), metrics, (PREFIX,))
    assert metrics.registry.get_sample_value(LOCAL_CACHE_LIVE) == 0
    assert metrics.registry.get_sample_value(LOCAL_CACHE_MAX_BYTES) == 1 << 20


class CountingRedis(RedisStore):
    """The real Redis store, counting its MGETs (and able to hold them at a gate)."""

    def __init__(self, store: RedisStore) -> None:
        super().__init__(store.client, store.timeout_seconds)
        self.reads = 0
        self.gate: asyncio.Event | None = None

    async def get_many(self, *keys: str) -> list[bytes | None]:
        self.reads += 1
        if self.gate is not None:
            await self.gate.wait()
        return await super().get_many(*keys)

    def release(self) -> None:
        assert self.gate is not None
        self.gate.set()


def counting(node: Replica) -> CountingRedis:
    counted = CountingRedis(node.store.redis)
    node.store.redis = counted
    return counted


Read = asyncio.Task[list[bytes | None]]


async def read_held_with_a_follower(node: Replica, k: str) -> tuple[Read, Read, CountingRedis]:
    """A read of `k` held at Redis (the leader) and a second read of `k` joining it."""
    redis_reads = counting(node)
    redis_reads.gate = asyncio.Event()
    leader = asyncio.create_task(node.store.get_many(k))
    await eventually(lambda: redis_reads.reads == 1)
    follower = asyncio.create_task(node.store.get_many(k))
    await asyncio.sleep(0)
    return leader, follower, redis_reads


async def test_requests_missing_the_same_keys_at_once_ask_redis_once(
    replica: ReplicaFactory, redis: Redis
) -> None:
    """When an entry expires under load every request in flight misses it together."""
    node = await replica()
    k = key()
    await heard_by(redis.set(k, b"v"), node)
    redis_reads = counting(node)

    answers = await asyncio.gather(*(node.store.get_many(k) for _ in range(50)))

    assert answers == [[b"v"]] * 50
    assert redis_reads.reads == 1


async def test_a_request_joining_a_read_that_an_invalidation_overtook_asks_again(
    replica: ReplicaFactory, redis: Redis
) -> None:
    node = await replica()
    k = key()
    await heard_by(redis.set(k, b"old"), node)
    leader, follower, redis_reads = await read_held_with_a_follower(node, k)

    await heard_by(redis.set(k, b"new"), node)  # while the leader's read is held
    redis_reads.release()

    assert await follower == [b"new"]
    assert redis_reads.reads == 2
    await leader


async def test_followers_of_a_cancelled_read_read_for_themselves(
    replica: ReplicaFactory, redis: Redis
) -> None:
    node = await replica()
    k = key()
    await heard_by(redis.set(k, b"v"), node)
    leader, follower, redis_reads = await read_held_with_a_follower(node, k)

    leader.cancel()
    redis_reads.release()

    assert await follower == [b"v"]
    assert leader.cancelled()
