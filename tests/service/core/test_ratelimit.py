"""Rate limits: GCRA in real Redis (one Lua call) and the in-process fallback, with the same
answers; 429 in the envelope with Retry-After and RateLimit-* headers; per account, per IP,
per principal; counters shared by app instances through Redis; client IPs behind trusted
proxies; bad limits refuse the start.

Every test that goes through the app runs against real PostgreSQL (a fresh database per
test) and, parametrized, real Redis or the memory store. Each test uses its own random
client IPs and fresh accounts, so counters left in the shared Redis never meet.
"""

from __future__ import annotations

import asyncio
import ipaddress
import secrets
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from redis.asyncio import Redis

from service.container import container_of
from service.core.config import ConfigError, Settings
from service.core.metrics import RATE_LIMIT_FALLBACKS, RATE_LIMIT_REJECTIONS, REDIS_ERRORS
from service.core.ratelimit import (
    KEY_PREFIX,
    MemoryGcra,
    Rate,
    parse_rate,
)
from service.core.store import RedisErrorKind
from service.identity.emails import email_hash
from service.main import create_app
from tests.conftest import IdentityAppFactory
from tests.service.identity.helpers import LOGIN, REFRESH, REGISTER, USERS
from tests.support import (
    KnownUser,
    TcpRelay,
    assert_envelope,
    bearer,
    create_user,
    json_lines,
    metric_value,
    redis_url_with,
    set_tenants,
)
from tests.support import tenant_entry as entry

GENEROUS = "1000/minute"
ALL_GENEROUS = {
    "login_per_account": GENEROUS,
    "login_per_ip": GENEROUS,
    "register_per_ip": GENEROUS,
    "refresh_per_ip": GENEROUS,
    "writes_per_principal": GENEROUS,
}


def random_ip() -> str:
    """An address in 10/8 of its own for each test, so shared Redis counters never meet."""
    return str(ipaddress.IPv4Address((10 << 24) | secrets.randbits(24)))


@pytest.fixture(params=["redis", "memory"])
def backend(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Settings groups that select the store: real Redis, or none (the memory fallback)."""
    if request.param == "redis":
        return {"redis": {"url": request.getfixturevalue("redis_server")}}
    return {}


@pytest.fixture
async def peers() -> AsyncIterator[Callable[[FastAPI, str], httpx.AsyncClient]]:
    """Clients of a started app that connect from a given IP (the ASGI `client`)."""
    clients: list[httpx.AsyncClient] = []

    def factory(app: FastAPI, ip: str) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=app, client=(ip, 40000))
        client = httpx.AsyncClient(transport=transport, base_url="http://testserver")
        clients.append(client)
        return client

    yield factory
    for client in clients:
        await client.aclose()


Peers = Callable[[FastAPI, str], httpx.AsyncClient]


async def limited_app(
    identity_app: IdentityAppFactory, database_url: str, backend: dict[str, Any], **limits: Any
) -> FastAPI:
    rate_limits = {"enabled": True, **ALL_GENEROUS, **limits}
    app, _ = await identity_app(database_url, rate_limits=rate_limits, **backend)
    return app


async def login(client: httpx.AsyncClient, email: str, password: str = "wrong-password") -> Any:
    return await client.post(LOGIN, json={"email": email, "password": password})


def unknown_email() -> str:
    return f"nobody-{secrets.token_hex(5)}@example.com"


def assert_limited(response: httpx.Response, path: str, limit: int) -> None:
    body = assert_envelope(response, 429, "TooManyRequests", path)
    retry_after = int(response.headers["retry-after"])
    assert retry_after >= 1
    assert body["data"] == {"retryAfterSeconds": retry_after}
    assert response.headers["ratelimit-limit"] == str(limit)
    assert response.headers["ratelimit-remaining"] == "0"
    assert int(response.headers["ratelimit-reset"]) >= 1


# Parsing and configuration ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "rate"),
    [("5/minute", Rate(5, 60)), (" 1 / second ", Rate(1, 1)), ("120/hour", Rate(120, 3600))],
)
def test_rates_parse(text: str, rate: Rate) -> None:
    assert parse_rate(text) == rate


@pytest.mark.parametrize("text", ["5", "5/min", "0/minute", "-1/hour", "five/second", "5/day"])
def test_bad_rates_are_config_errors(text: str) -> None:
    with pytest.raises(ConfigError, match=r"expected '<count>/"):
        parse_rate(text)


@pytest.mark.parametrize(
    ("limits", "variable"),
    [
        ({"login_per_account": "lots"}, "BERTH_RATE_LIMITS__LOGIN_PER_ACCOUNT"),
        ({"writes_per_principal": "10/fortnight"}, "BERTH_RATE_LIMITS__WRITES_PER_PRINCIPAL"),
    ],
)
def test_bad_limits_refuse_to_start_naming_the_variable(
    make_settings: Callable[..., Settings], limits: dict[str, Any], variable: str
) -> None:
    with pytest.raises(ConfigError, match=variable):
        create_app(make_settings(rate_limits=limits))


def test_gcra_allows_a_burst_of_count_then_one_per_interval() -> None:
    """The in-process arithmetic (the Lua script is the same, proven over HTTP below)."""
    gcra = MemoryGcra()
    rate = Rate(3, 60)

    decisions = [gcra.hit("k", rate) for _ in range(4)]

    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert [d.remaining for d in decisions] == [2, 1, 0, 0]
    assert 19_000 < decisions[3].retry_after_ms <= 20_000
    assert 59_000 < decisions[3].reset_ms <= 60_000


def test_the_memory_fallback_is_bounded() -> None:
    gcra = MemoryGcra(max_entries=2)

    for key in ("a", "b", "c"):
        gcra.hit(key, Rate(1, 60))

    assert not gcra.hit("c", Rate(1, 60)).allowed
    assert gcra.hit("a", Rate(1, 60)).allowed  # evicted, so counted afresh


# Over HTTP, Redis and memory --------------------------------------------------------------


async def test_login_is_limited_per_account_from_any_ip(
    identity_app: IdentityAppFactory, pg_database: str, backend: dict[str, Any], peers: Peers
) -> None:
    app = await limited_app(identity_app, pg_database, backend, login_per_account="3/minute")
    user = await create_user(app)

    answers = [await login(peers(app, random_ip()), user.email) for _ in range(3)]
    # The right password, another spelling of the address, a new IP: still this account.
    blocked = await login(peers(app, random_ip()), f" {user.email.upper()}", user.password)
    other_account = await login(peers(app, random_ip()), unknown_email())

    assert [a.status_code for a in answers] == [401, 401, 401]
    assert_limited(blocked, LOGIN, limit=3)
    assert other_account.status_code == 401
    assert metric_value(app, RATE_LIMIT_REJECTIONS, rule="login_per_account") == 1


async def test_login_is_limited_per_ip_across_accounts(
    identity_app: IdentityAppFactory, pg_database: str, backend: dict[str, Any], peers: Peers
) -> None:
    app = await limited_app(identity_app, pg_database, backend, login_per_ip="3/minute")
    client = peers(app, random_ip())

    answers = [await login(client, unknown_email()) for _ in range(3)]
    blocked = await login(client, unknown_email())
    elsewhere = await login(peers(app, random_ip()), unknown_email())

    assert [a.status_code for a in answers] == [401, 401, 401]
    assert_limited(blocked, LOGIN, limit=3)
    assert elsewhere.status_code == 401
    assert metric_value(app, RATE_LIMIT_REJECTIONS, rule="login_per_ip") == 1
    assert metric_value(app, RATE_LIMIT_REJECTIONS, rule="login_per_account") == 0


async def test_allowed_responses_say_how_much_is_left(
    identity_app: IdentityAppFactory, pg_database: str, backend: dict[str, Any], peers: Peers
) -> None:
    app = await limited_app(identity_app, pg_database, backend, login_per_ip="3/minute")
    user = await create_user(app)
    client = peers(app, random_ip())

    first = await login(client, user.email, user.password)
    second = await login(client, user.email, user.password)

    assert first.status_code == second.status_code == 200
    assert first.headers["ratelimit-limit"] == "3"
    assert [first.headers["ratelimit-remaining"], second.headers["ratelimit-remaining"]] == [
        "2",
        "1",
    ]
    assert 1 <= int(second.headers["ratelimit-reset"]) <= 60


async def test_refused_answers_say_how_much_is_left_too(
    identity_app: IdentityAppFactory, pg_database: str, backend: dict[str, Any], peers: Peers
) -> None:
    """A wrong password (401) and a bad body (422) count against the per-IP limit like any
    login, and their envelopes carry the same RateLimit-* headers."""
    app = await limited_app(identity_app, pg_database, backend, login_per_ip="3/minute")
    client = peers(app, random_ip())

    wrong = await login(client, unknown_email())
    invalid = await client.post(LOGIN, json={"email": "x@example.com"})

    assert_envelope(wrong, 401, "Unauthorized", LOGIN)
    assert_envelope(invalid, 422, "ValidationError", LOGIN)
    assert [wrong.headers["ratelimit-remaining"], invalid.headers["ratelimit-remaining"]] == [
        "2",
        "1",
    ]
    assert wrong.headers["ratelimit-limit"] == invalid.headers["ratelimit-limit"] == "3"
    assert 1 <= int(invalid.headers["ratelimit-reset"]) <= 60


async def test_the_limit_recovers_after_its_interval(
    identity_app: IdentityAppFactory, pg_database: str, backend: dict[str, Any], peers: Peers
) -> None:
    app = await limited_app(identity_app, pg_database, backend, login_per_ip="2/second")
    client = peers(app, random_ip())

    burst = [(await login(client, unknown_email())).status_code for _ in range(2)]
    blocked = await login(client, unknown_email())
    await asyncio.sleep(0.6)  # one interval (500 ms) later, one more is allowed
    recovered = await login(client, unknown_email())

    assert burst == [401, 401]
    assert_limited(blocked, LOGIN, limit=2)
    assert blocked.headers["retry-after"] == "1"
    assert recovered.status_code == 401


async def test_register_and_refresh_are_limited_per_ip(
    identity_app: IdentityAppFactory, pg_database: str, backend: dict[str, Any], peers: Peers
) -> None:
    app = await limited_app(
        identity_app, pg_database, backend, register_per_ip="2/hour", refresh_per_ip="2/minute"
    )
    set_tenants(app, entry("open-co", self_signup=True))
    client = peers(app, random_ip())

    def signup() -> dict[str, str]:
        return {"tenant": "open-co", "email": unknown_email(), "password": "a fine passphrase"}

    registered = [(await client.post(REGISTER, json=signup())).status_code for _ in range(2)]
    register_blocked = await client.post(REGISTER, json=signup())
    refreshed = [
        (await client.post(REFRESH, json={"refresh_token": "x"})).status_code for _ in range(2)
    ]
    refresh_blocked = await client.post(REFRESH, json={"refresh_token": "x"})

    assert registered == [201, 201]
    assert_limited(register_blocked, REGISTER, limit=2)
    assert int(register_blocked.headers["retry-after"]) > 60  # one per 30 minutes
    assert refreshed == [401, 401]
    assert_limited(refresh_blocked, REFRESH, limit=2)


async def test_writes_are_limited_per_principal(
    identity_app: IdentityAppFactory, pg_database: str, backend: dict[str, Any], peers: Peers
) -> None:
    app = await limited_app(identity_app, pg_database, backend, writes_per_principal="2/minute")
    set_tenants(app, entry("acme"))
    client = peers(app, random_ip())
    owner, other_owner = await create_user(app, role="owner"), await create_user(app, role="owner")

    def invite() -> dict[str, str]:
        return {"email": unknown_email(), "password": "a fine passphrase"}

    async def write(actor: KnownUser) -> httpx.Response:
        return await client.post(USERS, json=invite(), headers=bearer(app, actor))

    allowed = [(await write(owner)).status_code for _ in range(2)]
    blocked = await write(owner)
    other = await write(other_owner)
    read = await client.get(USERS, headers=bearer(app, owner))

    assert allowed == [201, 201]
    assert_limited(blocked, USERS, limit=2)
    assert other.status_code == 201
    assert read.status_code == 200  # reads are not writes


# Shared through Redis ---------------------------------------------------------------------


async def test_two_app_instances_share_one_counter_through_redis(
    identity_app: IdentityAppFactory, pg_database: str, redis_server: str, peers: Peers
) -> None:
    """Two replicas, one real Redis: the fourth login is refused whichever replica gets it."""
    backend = {"redis": {"url": redis_server}}
    one = await limited_app(identity_app, pg_database, backend, login_per_account="3/minute")
    two = await limited_app(identity_app, pg_database, backend, login_per_account="3/minute")
    email = unknown_email()

    answers = [await login(peers(app, random_ip()), email) for app in (one, two, one)]  # 3 of 3
    blocked = await login(peers(two, random_ip()), email)

    assert [a.status_code for a in answers] == [401, 401, 401]
    assert_limited(blocked, LOGIN, limit=3)


async def test_without_redis_each_instance_counts_alone(
    identity_app: IdentityAppFactory, pg_database: str, peers: Peers
) -> None:
    """The laptop fallback: in-process counters (production refuses to run without Redis)."""
    one = await limited_app(identity_app, pg_database, {}, login_per_account="2/minute")
    two = await limited_app(identity_app, pg_database, {}, login_per_account="2/minute")
    email = unknown_email()

    on_one = [(await login(peers(one, random_ip()), email)).status_code for _ in range(3)]
    on_two = (await login(peers(two, random_ip()), email)).status_code

    assert on_one == [401, 401, 429]
    assert on_two == 401


async def test_redis_keys_are_prefixed_name_no_address_and_expire(
    identity_app: IdentityAppFactory, pg_database: str, redis_server: str, peers: Peers
) -> None:
    app = await limited_app(
        identity_app, pg_database, {"redis": {"url": redis_server}}, login_per_account="5/minute"
    )
    email = unknown_email()
    ip = random_ip()

    await login(peers(app, ip), email)

    redis = Redis.from_url(redis_server)
    try:
        account_key = f"{KEY_PREFIX}login_per_account:{email_hash(email)}"
        ip_key = f"{KEY_PREFIX}login_per_ip:{ip}"
        assert 0 < await redis.pttl(account_key) <= 12_000  # one interval of 5/minute
        assert 0 < await redis.pttl(ip_key) <= 60
        keys = [key async for key in redis.scan_iter(match=f"{KEY_PREFIX}*")]
        assert not any(email.encode() in key for key in keys)
    finally:
        await redis.aclose()


async def test_during_a_redis_outage_limits_hold_in_process_and_say_so(
    identity_app: IdentityAppFactory,
    pg_database: str,
    redis_server: str,
    peers: Peers,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Real Redis behind a TCP relay that is taken down: logins are answered (never a 500)
    and still limited, by the in-process limiter, which a log line and a metric report."""
    target = httpx.URL(redis_server)
    relay = TcpRelay(target.host, target.port or 6379)
    await relay.start()
    try:
        backend = {"redis": {"url": redis_url_with(redis_server, port=relay.port)}}
        app = await limited_app(identity_app, pg_database, backend, login_per_ip="2/minute")
        user = await create_user(app)
        client = peers(app, random_ip())
        await relay.stop()

        statuses = [(await login(client, user.email, user.password)).status_code for _ in range(3)]
    finally:
        await relay.stop()

    assert statuses == [200, 200, 429]
    registry = container_of(app).core.metrics.registry
    fallbacks = registry.get_sample_value(RATE_LIMIT_FALLBACKS, {"rule": "login_per_ip"})
    assert fallbacks == 3
    # Each fallback began with a Redis call that failed: counted by kind.
    assert metric_value(app, REDIS_ERRORS, kind=RedisErrorKind.CONNECTION.value) >= 3
    events = [line.get("event") for line in json_lines(capsys.readouterr().out)]
    assert events.count("rate_limit_store_unavailable") == 1  # once per outage, not per request


# Client IP behind proxies -----------------------------------------------------------------


async def test_forwarded_for_counts_only_behind_a_trusted_proxy(
    identity_app: IdentityAppFactory, pg_database: str, peers: Peers
) -> None:
    """Over HTTP: the client (peer 127.0.0.1) is a trusted proxy in one app and not in the
    other; a spoofed X-Forwarded-For only moves the counter in the first."""
    limits = {"login_per_ip": "2/minute"}
    trusting = await limited_app(
        identity_app, pg_database, {"http": {"trusted_proxies": ["127.0.0.1"]}}, **limits
    )
    plain = await limited_app(identity_app, pg_database, {}, **limits)

    async def attempts(app: FastAPI) -> list[int]:
        client = peers(app, "127.0.0.1")
        return [
            (
                await client.post(
                    LOGIN,
                    json={"email": unknown_email(), "password": "x"},
                    headers={"X-Forwarded-For": f"6.6.6.6, {random_ip()}"},
                )
            ).status_code
            for _ in range(3)
        ]

    assert await attempts(trusting) == [401, 401, 401]
    assert await attempts(plain) == [401, 401, 429]
