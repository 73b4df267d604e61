"""The test suite's own footing: each run works in a Redis database of its own."""

from __future__ import annotations

from urllib.parse import urlsplit

from redis.asyncio import Redis

from tests.support import REDIS_CLAIM_PREFIX, redis_url_with


async def test_the_run_holds_a_redis_database_of_its_own(redis_server: str) -> None:
    number = int(urlsplit(redis_server).path.lstrip("/"))
    shared = Redis.from_url(redis_url_with(redis_server, database=0))
    try:
        claim = await shared.get(f"{REDIS_CLAIM_PREFIX}{number}")
        ttl = await shared.ttl(f"{REDIS_CLAIM_PREFIX}{number}")
    finally:
        await shared.aclose()

    assert number != 0
    assert claim is not None  # held by this run until its end (then deleted)
    assert ttl > 0  # and let go by itself should a run be killed


def test_a_relayed_url_keeps_the_database_number() -> None:
    relayed = redis_url_with("redis://:pw@10.0.0.5:6379/7", port=4242)
    assert relayed == "redis://:pw@127.0.0.1:4242/7"
    assert redis_url_with("redis://127.0.0.1:6379/0", database=3) == "redis://127.0.0.1:6379/3"
