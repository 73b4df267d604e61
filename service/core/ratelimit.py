"""Rate limits: GCRA in Redis (one Lua call), or in process.

GCRA (the generic cell rate algorithm) keeps one number per key, the theoretical arrival
time (TAT): a request is allowed when TAT - period + interval <= now, and then moves TAT on
by one interval. That is a smooth "count per period" with bursts up to count, atomic in one
round trip, and one small key per identity. Redis' own clock is used, so replicas with
skewed clocks share one notion of time. Without Redis (`store.backend == "memory"`, the
laptop) the same arithmetic runs in process, per application instance; and while a
configured Redis does not answer, so it does too: limits keep holding (per replica) through
an outage instead of failing open, which one log line per outage and the
`berth_rate_limit_fallbacks_total` counter report.

Limits are "<count>/<second|minute|hour>" in RateLimitSettings, parsed at application
start (ConfigError when invalid). Keys: `berth:rl:<rule>:<identity>`. Routes apply them with
the dependencies of `service/core/dependencies.py`.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass
from typing import Final

from cachetools import LRUCache
from prometheus_client import Counter
from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from starlette.requests import HTTPConnection

from service.core.config import ConfigError, RateLimitSettings, env_name
from service.core.logging import get_logger
from service.core.store import KeyValueStore, RedisStore, StoreUnavailable

log = get_logger(__name__)

KEY_PREFIX: Final = "berth:rl:"
PERIODS: Final = {"second": 1, "minute": 60, "hour": 3600}
RULES: Final = (
    "login_per_account",
    "login_per_ip",
    "register_per_ip",
    "refresh_per_ip",
    "writes_per_principal",
)
_RATE_PATTERN = re.compile(r"^\s*(\d{1,9})\s*/\s*(second|minute|hour)\s*$")
DEFAULT_MEMORY_ENTRIES = 10_000
RETRY_AFTER: Final = "Retry-After"
LIMIT: Final = "RateLimit-Limit"
REMAINING: Final = "RateLimit-Remaining"
RESET: Final = "RateLimit-Reset"

# KEYS[1]: the key. ARGV: interval (ms per request), count. Returns
# {allowed, remaining, retry_after_ms, reset_ms}. Integer milliseconds throughout, so every
# value stays exact in Lua's doubles and is written back without float formatting.
GCRA_LUA: Final = """
local interval = tonumber(ARGV[1])
local count = tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local tat = tonumber(redis.call('GET', KEYS[1]))
if not tat or tat < now then tat = now end
local new_tat = tat + interval
local allow_at = new_tat - interval * count
if allow_at > now then
  return {0, 0, allow_at - now, tat - now}
end
redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', new_tat - now)
return {1, math.floor((now - allow_at) / interval), 0, new_tat - now}
"""


@dataclass(frozen=True)
class Rate:
    count: int
    period_seconds: int

    @property
    def interval_ms(self) -> int:
        return max(1, round(self.period_seconds * 1000 / self.count))

    def __str__(self) -> str:
        unit = next(name for name, seconds in PERIODS.items() if seconds == self.period_seconds)
        return f"{self.count}/{unit}"


def parse_rate(text: str, *, setting: str = "rate limit") -> Rate:
    match = _RATE_PATTERN.match(text)
    if match is None or int(match.group(1)) < 1:
        raise ConfigError(f"{setting}: expected '<count>/<second|minute|hour>', got {text!r}")
    return Rate(count=int(match.group(1)), period_seconds=PERIODS[match.group(2)])


@dataclass(frozen=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    retry_after_ms: int
    reset_ms: int

    def headers(self) -> dict[str, str]:
        return {
            LIMIT: str(self.limit),
            REMAINING: str(max(0, self.remaining)),
            RESET: str(math.ceil(max(0, self.reset_ms) / 1000)),
        }


class MemoryGcra:
    """The Lua script's arithmetic in process, bounded like the in-process store (LRU)."""

    def __init__(self, max_entries: int = DEFAULT_MEMORY_ENTRIES) -> None:
        self.max_entries = max_entries
        self._tats: LRUCache[str, int] = LRUCache(maxsize=max_entries)

    def hit(self, key: str, rate: Rate) -> Decision:
        now = time.monotonic_ns() // 1_000_000
        interval = rate.interval_ms
        tat = max(self._tats.get(key, now), now)
        new_tat = tat + interval
        allow_at = new_tat - interval * rate.count
        if allow_at > now:
            return Decision(False, rate.count, 0, allow_at - now, tat - now)
        self._tats[key] = new_tat
        return Decision(True, rate.count, (now - allow_at) // interval, 0, new_tat - now)


class RateLimiter:
    """One per application (in the container); counts in Redis, or in process without it."""

    def __init__(
        self,
        settings: RateLimitSettings,
        store: KeyValueStore,
        memory_entries: int = DEFAULT_MEMORY_ENTRIES,
        *,
        fallbacks: Counter | None = None,
    ) -> None:
        self.enabled = settings.enabled
        self.store = store
        self.fallbacks = fallbacks
        self._store_down = False  # a fallback is under way (logged once, at its start)
        self.rates = {
            rule: parse_rate(getattr(settings, rule), setting=env_name("rate_limits", rule))
            for rule in RULES
        }
        self.memory = MemoryGcra(memory_entries)
        self._script: AsyncScript | None = None
        self._script_client: Redis | None = None

    def _gcra_script(self, client: Redis) -> AsyncScript:
        # Registered once per client; redis-py runs it by SHA and loads it again if needed.
        if self._script is None or self._script_client is not client:
            self._script = client.register_script(GCRA_LUA)
            self._script_client = client
        return self._script

    async def hit(self, rule: str, identity: str) -> Decision:
        """Count one request of `identity` against `rule`: in Redis, or in process without
        Redis and while it does not answer."""
        rate = self.rates[rule]
        key = f"{KEY_PREFIX}{rule}:{identity}"
        store = self.store
        if not isinstance(store, RedisStore):
            return self.memory.hit(key, rate)
        try:
            allowed, remaining, retry_after, reset = await store.bounded(
                self._gcra_script(store.client)(keys=[key], args=[rate.interval_ms, rate.count])
            )
        except StoreUnavailable as exc:
            self._falling_back(rule, exc)
            return self.memory.hit(key, rate)
        if self._store_down:
            self._store_down = False
            log.info("rate_limit_store_back")
        return Decision(bool(allowed), rate.count, int(remaining), int(retry_after), int(reset))

    def _falling_back(self, rule: str, exc: StoreUnavailable) -> None:
        if self.fallbacks is not None:
            self.fallbacks.labels(rule=rule).inc()
        if not self._store_down:
            self._store_down = True
            log.warning("rate_limit_store_unavailable", rule=rule,
                        error=type(exc.__cause__).__name__, fallback="in_process")  # fmt: skip

    @staticmethod
    def client_ip(request: HTTPConnection) -> str:
        """The client's address as the request gives it: behind trusted proxies, the one
        they report (service/core/proxies.py), else the socket peer."""
        return request.client.host if request.client else "unknown"
