"""The client address: the socket peer, or behind trusted proxies the right-most untrusted
X-Forwarded-For hop; one setting (`BERTH_HTTP__TRUSTED_PROXIES`, empty by default) decides
for the access log, the rate limiter and the scheme alike."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx
import pytest

from service.core.config import ConfigError, HttpSettings, Settings
from service.core.proxies import TrustedProxies
from service.main import create_app
from tests.conftest import ServeFactory
from tests.support import FAST_ARGON2, Spawned

LOGIN = "/api/v1/auth/login"


@pytest.mark.parametrize(
    ("trusted", "peer", "forwarded", "client"),
    [
        pytest.param([], "203.0.113.9", ["198.51.100.1"], "203.0.113.9", id="no-trusted-proxy"),
        pytest.param([], "127.0.0.1", ["198.51.100.1"], "127.0.0.1", id="loopback-not-trusted"),
        pytest.param(
            ["10.0.0.0/8"], "203.0.113.9", ["198.51.100.1"], "203.0.113.9", id="untrusted-peer"
        ),
        pytest.param(
            ["10.0.0.0/8"], "10.1.2.3", ["6.6.6.6, 198.51.100.1"], "198.51.100.1", id="right-most"
        ),
        pytest.param(
            ["10.0.0.0/8", "192.0.2.7"],
            "10.1.2.3",
            ["6.6.6.6, 198.51.100.1, 192.0.2.7"],
            "198.51.100.1",
            id="chain-of-trusted-proxies",
        ),
        pytest.param(
            ["10.0.0.0/8"],
            "10.1.2.3",
            ["6.6.6.6", "198.51.100.1"],
            "198.51.100.1",
            id="repeated-headers",
        ),
        pytest.param(["10.0.0.0/8"], "10.1.2.3", ["10.9.9.9"], "10.9.9.9", id="all-trusted"),
        pytest.param(["10.0.0.0/8"], "10.1.2.3", [], "10.1.2.3", id="no-header"),
        pytest.param(["10.0.0.0/8"], "10.1.2.3", ["garbage"], "10.1.2.3", id="malformed"),
        pytest.param(
            ["2001:db8::/32"],
            "2001:db8::1",
            ["2001:db8::5, 2001:470::1"],
            "2001:470::1",
            id="ipv6",
        ),
    ],
)
def test_the_client_is_the_right_most_untrusted_hop(
    trusted: list[str], peer: str, forwarded: list[str], client: str
) -> None:
    proxies = TrustedProxies.of(HttpSettings(trusted_proxies=trusted))

    assert proxies.client_of(peer, [value.encode() for value in forwarded]) == client


def test_a_bad_proxy_entry_refuses_to_start_naming_the_variable(
    make_settings: Callable[..., Settings],
) -> None:
    with pytest.raises(ConfigError, match="BERTH_HTTP__TRUSTED_PROXIES"):
        create_app(make_settings(http={"trusted_proxies": ["10.0.0.0/33"]}))


@pytest.mark.parametrize(
    ("group", "name"),
    [("rate_limits", "trusted_proxies"), ("http", "forwarded_allow_ips")],
)
def test_the_old_proxy_settings_are_refused_with_the_new_name(group: str, name: str) -> None:
    """They used to be two lists (the limiter's, uvicorn's); a value set under an old name
    must not be dropped silently."""
    with pytest.raises(Exception, match="BERTH_HTTP__TRUSTED_PROXIES"):
        Settings(_env_file=None, **{group: {name: ["10.0.0.1"]}})


async def start(serve: ServeFactory, **env: str) -> tuple[Spawned, str]:
    served = await serve(
        BERTH_RATE_LIMITS__LOGIN_PER_IP="3/minute",
        BERTH_RATE_LIMITS__LOGIN_PER_ACCOUNT="1000/minute",
        **{f"BERTH_AUTH__{key.upper()}": str(value) for key, value in FAST_ARGON2.items()},
        **env,
    )
    return served.process, served.base_url


async def spoofed_logins(base_url: str, count: int) -> list[int]:
    """Logins from 127.0.0.1, each claiming another client in X-Forwarded-For."""
    async with httpx.AsyncClient(base_url=base_url) as client:
        return [
            (
                await client.post(
                    LOGIN,
                    json={"email": "nobody@example.com", "password": "wrong password"},
                    headers={"X-Forwarded-For": f"198.51.100.{n}"},
                )
            ).status_code
            for n in range(count)
        ]


def access_clients(server: Spawned) -> list[object]:
    return [e["client"] for e in server.events() if e.get("event") == "request"]


async def test_by_default_no_one_is_trusted_so_x_forwarded_for_sprays_nothing(
    serve: ServeFactory,
) -> None:
    """The real server on its defaults, reached from 127.0.0.1 (as from a sidecar): rotating
    the header neither escapes the per-IP limit nor changes the logged client."""
    server, base_url = await start(serve)

    statuses = await spoofed_logins(base_url, 5)
    await asyncio.sleep(0.5)  # the access log is flushed every 0.2 s

    assert statuses == [401, 401, 401, 429, 429]
    assert set(access_clients(server)) == {"127.0.0.1"}


async def test_behind_a_trusted_proxy_the_forwarded_client_counts_and_is_logged(
    serve: ServeFactory,
) -> None:
    server, base_url = await start(serve, BERTH_HTTP__TRUSTED_PROXIES="127.0.0.1")

    statuses = await spoofed_logins(base_url, 5)
    await asyncio.sleep(0.5)

    assert statuses == [401] * 5
    assert access_clients(server) == [f"198.51.100.{n}" for n in range(5)]
