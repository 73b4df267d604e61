"""The auth state cache: each authenticated request reads the token's revocation key and the
user's cached state (email, role, tenant, active, token version) in one Redis MGET; a miss
reads the control-plane row and caches it for `auth.state_cache_seconds`. Every change made
through the service (users API, logout-all) forgets the entry once committed, so it applies
on the very next request.

Real PostgreSQL (a fresh migrated database per test) and the real Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import Any

import jwt
import orjson
import pytest
from redis.asyncio import Redis
from sqlalchemy import make_url, update

from service.container import container_of
from service.identity.auth_state import AuthState, auth_state_key
from service.identity.models import User
from service.identity.principal import Role
from tests.conftest import IdentityAppFactory
from tests.service.identity.helpers import LOGOUT, LOGOUT_ALL, ME, USERS, Api, auth, execute
from tests.support import KnownUser, assert_envelope, redis_url_with, relay

CachedApi = Callable[..., Awaitable[Api]]


@pytest.fixture
async def redis(redis_server: str) -> AsyncIterator[Redis]:
    """A client of its own, to look at what the app keeps in Redis."""
    client = Redis.from_url(redis_server)
    yield client
    await client.aclose()


@pytest.fixture
def cached_api(identity_app: IdentityAppFactory, pg_database: str, redis_server: str) -> CachedApi:
    """`await cached_api(state_cache_seconds=...)`: berth on PostgreSQL with the Redis store."""

    async def factory(**auth_settings: Any) -> Api:
        app, client = await identity_app(
            pg_database, auth=auth_settings, redis={"url": redis_server}
        )
        assert container_of(app).core.store.backend == "redis"
        return Api(app, client, pg_database)

    return factory


async def cached_state(redis: Redis, user: KnownUser) -> AuthState | None:
    raw = await redis.get(auth_state_key(user.id))
    return None if raw is None else AuthState.from_bytes(raw)


def state_of(user: KnownUser, **changes: Any) -> AuthState:
    fields: dict[str, Any] = {
        "email": user.email,
        "role": Role(user.role),
        "tenant_slug": user.tenant_slug,
        "is_active": True,
        "token_version": 0,
    }
    return AuthState(**{**fields, **changes})


async def me(api: Api, headers: dict[str, str]) -> Any:
    return await api.client.get(ME, headers=headers)


@pytest.mark.parametrize("ttl", [None, 7], ids=["default-30s", "7s"])
async def test_an_authenticated_request_caches_the_users_state_for_state_cache_seconds(
    cached_api: CachedApi, redis: Redis, ttl: int | None
) -> None:
    api = await cached_api(**({} if ttl is None else {"state_cache_seconds": ttl}))
    user = await api.user(role="admin", tenant_slug="acme")
    assert await redis.exists(auth_state_key(user.id)) == 0

    response = await me(api, api.headers(user))

    assert response.status_code == 200
    assert await cached_state(redis, user) == state_of(user)
    assert 0 < await redis.ttl(auth_state_key(user.id)) <= (ttl or 30)


@contextlib.asynccontextmanager
async def redis_commands(redis_server: str, *fragments: str) -> AsyncIterator[list[list[str]]]:
    """The commands Redis runs inside the block that mention any of `fragments` (MONITOR),
    each as [NAME, arg, ...]."""
    seen: list[list[str]] = []
    client = Redis.from_url(redis_server)
    monitor = client.monitor()
    await monitor.__aenter__()

    async def collect() -> None:
        while True:
            command = (await monitor.next_command())["command"]
            if any(fragment in command for fragment in fragments):
                seen.append(command.split(" "))

    collector = asyncio.create_task(collect())
    try:
        yield seen
        await asyncio.sleep(0.2)  # MONITOR output trails the commands a little
    finally:
        collector.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await collector
        with contextlib.suppress(Exception):
            await monitor.__aexit__(None, None, None)
        await client.aclose()


async def test_each_request_checks_revocation_and_state_in_one_mget(
    cached_api: CachedApi, redis_server: str
) -> None:
    """A cold request: one MGET (the token's and its family's revocation keys, the user's
    state), then a SET of the row it read. A warm one: the MGET alone."""
    api = await cached_api()
    user = await api.user()
    headers = api.headers(user)
    claims = jwt.decode(headers["Authorization"][7:], options={"verify_signature": False})
    token_id, family = claims["jti"], claims["fam"]
    key = auth_state_key(user.id)

    async with redis_commands(redis_server, user.id.hex, token_id) as cold:
        assert (await me(api, headers)).status_code == 200
    async with redis_commands(redis_server, user.id.hex, token_id) as warm:
        assert (await me(api, headers)).status_code == 200

    mget = ["MGET", f"berth:auth:revoked:{token_id}", f"berth:auth:revoked-family:{family}", key]
    assert [command[0] for command in cold] == ["MGET", "SET"]
    assert cold[0] == mget
    assert warm == [mget]


@pytest.mark.parametrize(
    ("method", "body"),
    [("DELETE", None), ("PATCH", {"is_active": False})],
    ids=["delete", "patch-inactive"],
)
async def test_with_the_cache_warm_a_deactivated_users_token_is_refused_at_once(
    cached_api: CachedApi, redis: Redis, method: str, body: dict[str, Any] | None
) -> None:
    api = await cached_api()
    admin = await api.user(role="admin")
    target = await api.user(role="member")
    tokens = await api.login(target)
    assert await api.me_status(tokens["access_token"]) == 200
    assert await cached_state(redis, target) == state_of(target)

    changed = await api.client.request(
        method, f"{USERS}/{target.id}", json=body, headers=api.headers(admin)
    )

    assert changed.status_code == 200, changed.text
    assert await redis.exists(auth_state_key(target.id)) == 0  # forgotten on commit
    refused = await me(api, auth(tokens["access_token"]))
    assert_envelope(refused, 401, "Unauthorized", ME)
    assert await cached_state(redis, target) == state_of(target, is_active=False, token_version=1)


async def test_with_the_cache_warm_logout_all_refuses_the_old_tokens_at_once(
    cached_api: CachedApi, redis: Redis
) -> None:
    api = await cached_api()
    user = await api.user()
    sessions = [await api.login(user) for _ in range(2)]
    for session in sessions:
        assert await api.me_status(session["access_token"]) == 200

    response = await api.client.post(LOGOUT_ALL, headers=auth(sessions[0]["access_token"]))

    assert response.status_code == 200
    assert [await api.me_status(s["access_token"]) for s in sessions] == [401, 401]
    assert await cached_state(redis, user) == state_of(user, token_version=1)
    assert await api.me_status((await api.login(user))["access_token"]) == 200


async def test_with_the_cache_warm_logout_refuses_that_token_at_once(
    cached_api: CachedApi,
) -> None:
    api = await cached_api()
    user = await api.user()
    kept, ended = await api.login(user), await api.login(user)
    assert await api.me_status(ended["access_token"]) == 200

    response = await api.client.post(LOGOUT, headers=auth(ended["access_token"]))

    assert response.status_code == 200
    assert await api.me_status(ended["access_token"]) == 401
    assert await api.me_status(kept["access_token"]) == 200


async def test_with_the_cache_warm_a_role_change_applies_at_once(
    cached_api: CachedApi, redis: Redis
) -> None:
    """An admin demoted to member: the old token stops working, a token of the new version
    that still says "admin" is refused (claims must match the row), and one minted from the
    new row gets only what a member may do."""
    api = await cached_api()
    owner = await api.user(role="owner")
    target = await api.user(role="admin")
    old = api.headers(target)
    assert (await api.client.get(USERS, headers=old)).status_code == 200
    assert await cached_state(redis, target) == state_of(target)

    demoted = await api.client.patch(
        f"{USERS}/{target.id}", json={"role": "member"}, headers=api.headers(owner)
    )
    stale_claim = api.headers(target, token_version=1)  # minted with the role claim "admin"
    member = api.headers(replace(target, role="member"), token_version=1)

    assert demoted.status_code == 200, demoted.text
    assert_envelope(await api.client.get(USERS, headers=old), 401, "Unauthorized", USERS)
    assert_envelope(await api.client.get(USERS, headers=stale_claim), 401, "Unauthorized", USERS)
    assert_envelope(await api.client.get(USERS, headers=member), 403, "Forbidden", USERS)
    assert (await me(api, member)).json()["role"] == "member"
    assert await cached_state(redis, target) == state_of(target, role=Role.MEMBER, token_version=1)


async def test_a_change_made_behind_the_services_back_shows_once_the_entry_expires(
    cached_api: CachedApi,
) -> None:
    """A warm entry answers without reading the row, so a direct SQL change (no repository,
    nothing forgotten) is missed, but only for state_cache_seconds."""
    api = await cached_api(state_cache_seconds=1)
    user = await api.user()
    headers = api.headers(user)
    assert (await me(api, headers)).status_code == 200

    await execute(api.database_url, update(User).where(User.id == user.id).values(is_active=False))
    still_cached = await me(api, headers)
    await asyncio.sleep(1.1)
    expired = await me(api, headers)

    assert still_cached.status_code == 200
    assert_envelope(expired, 401, "Unauthorized", ME)


async def test_with_state_cache_seconds_zero_nothing_is_cached_and_requests_authenticate(
    cached_api: CachedApi, redis: Redis
) -> None:
    api = await cached_api(state_cache_seconds=0)
    admin = await api.user(role="admin")
    user = await api.user()
    tokens = await api.login(user)

    statuses = [await api.me_status(tokens["access_token"]) for _ in range(2)]
    listed = await api.client.get(USERS, headers=api.headers(admin))

    assert statuses == [200, 200]
    assert listed.status_code == 200
    assert await redis.exists(auth_state_key(user.id), auth_state_key(admin.id)) == 0
    deactivated = await api.client.delete(f"{USERS}/{user.id}", headers=api.headers(admin))
    assert deactivated.status_code == 200
    assert await api.me_status(tokens["access_token"]) == 401
    revoked = await api.login(admin)
    assert (await api.client.post(LOGOUT, headers=auth(revoked["access_token"]))).is_success
    assert await api.me_status(revoked["access_token"]) == 401  # revocations still apply


GARBAGE = [
    pytest.param(b"\xff\x00 not json", id="not-json"),
    pytest.param(b"null", id="null"),
    pytest.param(b'{"email": "x@example.com"}', id="an-object"),
    pytest.param(b'["x@example.com", "member", "acme"]', id="too-few-fields"),
    pytest.param(orjson.dumps(["x@example.com", "emperor", "acme", True, 0]), id="unknown-role"),
    pytest.param(orjson.dumps(["x@example.com", "member", "acme", True, "v1"]), id="bad-version"),
]


@pytest.mark.parametrize("garbage", GARBAGE)
async def test_an_unreadable_cached_entry_is_ignored_and_replaced(
    cached_api: CachedApi, redis: Redis, garbage: bytes
) -> None:
    api = await cached_api()
    user = await api.user(role="admin", tenant_slug="acme")
    await redis.set(auth_state_key(user.id), garbage, ex=30)

    response = await me(api, api.headers(user))

    assert response.status_code == 200
    assert response.json()["email"] == user.email
    assert await cached_state(redis, user) == state_of(user)


async def test_an_authenticated_request_while_redis_is_down_is_a_503_not_a_500(
    identity_app: IdentityAppFactory, pg_database: str, redis_server: str
) -> None:
    target = make_url(redis_server)
    async with relay(target.host or "127.0.0.1", target.port or 6379) as proxy:
        url = redis_url_with(redis_server, port=proxy.port)
        app, client = await identity_app(pg_database, redis={"url": url})
        api = Api(app, client, pg_database)
        user = await api.user()
        headers = api.headers(user)
        assert (await client.get(ME, headers=headers)).status_code == 200

        await proxy.stop()
        down = await client.get(ME, headers=headers)
        await proxy.start()
        back = await client.get(ME, headers=headers)

    body = assert_envelope(down, 503, "ServiceUnavailable", ME)
    assert body["message"] == "A backing service is unavailable; retry shortly"
    assert back.status_code == 200
