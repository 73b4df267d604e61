"""The columns that decide whether an access token is still good, cached in the key-value store.

Every authenticated request needs them. Reading them from the control plane cost a session,
a pooled connection and a query per request (docs/benchmarks.md); here they come in the same
Redis round trip as the token's revocation check. Every write to those columns (role, active,
token version) forgets the entry once its transaction has committed (`UserRepository`), so a
deactivation or a logout-all applies at once on every replica. The TTL bounds the one race
left: a read that fetched the old row just before a commit and stores it just after.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import orjson

from service.core.metrics import CacheLookups
from service.core.store import KeyValueStore
from service.identity.principal import Role

AUTH_STATE_PREFIX = "berth:auth:user:"
AUTH_STATE_CACHE = "auth_state"  # its `cache` label on berth_cache_lookups_total


@dataclass(frozen=True, slots=True)
class AuthState:
    """What a token is checked against (hot path: no ORM entity)."""

    email: str
    role: Role
    tenant_slug: str | None
    is_active: bool
    token_version: int

    def to_bytes(self) -> bytes:
        return orjson.dumps(
            [self.email, self.role.value, self.tenant_slug, self.is_active, self.token_version]
        )

    @classmethod
    def from_bytes(cls, raw: bytes) -> AuthState | None:
        """None for an entry this code cannot read (an older format): it is refetched."""
        try:
            email, role, tenant_slug, is_active, token_version = orjson.loads(raw)
            return cls(email, Role(role), tenant_slug, bool(is_active), int(token_version))
        except (orjson.JSONDecodeError, ValueError, TypeError):
            return None


def auth_state_key(user_id: uuid.UUID) -> str:
    return f"{AUTH_STATE_PREFIX}{user_id.hex}"


@dataclass(frozen=True, slots=True)
class CachedLookup:
    """One round trip's answer: was any of the other keys set (a revocation), and the
    cached state."""

    other_key_set: bool
    state: AuthState | None


class AuthStateCache:
    """`ttl_seconds == 0` turns caching off (every request reads the row)."""

    def __init__(self, store: KeyValueStore, ttl_seconds: int, lookups: CacheLookups) -> None:
        self.store = store
        self.ttl_seconds = ttl_seconds
        self.lookups = lookups

    @property
    def enabled(self) -> bool:
        return self.ttl_seconds > 0

    async def lookup(self, user_id: uuid.UUID, *other_keys: str) -> CachedLookup:
        """The cached state of `user_id` and whether any of `other_keys` exists, in one
        MGET."""
        if not self.enabled:
            others = await self.store.get_many(*other_keys)
            return CachedLookup(other_key_set=any(v is not None for v in others), state=None)
        *others, raw = await self.store.get_many(*other_keys, auth_state_key(user_id))
        state = AuthState.from_bytes(raw) if raw is not None else None
        (self.lookups.miss if state is None else self.lookups.hit).inc()
        return CachedLookup(other_key_set=any(v is not None for v in others), state=state)

    async def put(self, user_id: uuid.UUID, state: AuthState) -> None:
        if self.enabled:
            await self.store.set(auth_state_key(user_id), state.to_bytes(), self.ttl_seconds)

    async def forget(self, user_id: uuid.UUID) -> None:
        await self.store.delete(auth_state_key(user_id))
