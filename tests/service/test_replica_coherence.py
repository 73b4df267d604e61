"""Two replicas (`python -m service serve` processes) sharing one Redis and one control plane:
what replica A changes is in force on replica B's next request, although B answers the
principal's checks and cached articles from its coherent in-process cache
(service/core/local_cache.py). Each test warms B's cache first and checks B served from it.

A third replica reaches Redis through a TCP relay the test cuts: while its invalidation
connection is down it must not answer from its local cache, and after it is back it must
not answer what was true before the cut.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from service.core.metrics import LOCAL_CACHE_LIVE, LOCAL_CACHE_LOOKUPS
from tests.support import (
    FAST_ARGON2,
    Spawned,
    TcpRelay,
    eventually,
    free_port,
    process_env,
    redis_url_with,
    run_service_cli,
    scrape_metrics,
    wait_until_live,
)

TENANT = "coherent"
OWNER_EMAIL = "owner@coherent.example.com"
PASSWORD = "coherence passphrase 42"
API = "/api/v1"


@dataclass
class Deployment:
    """A control plane with one tenant and its owner, and a way to start replicas on it."""

    env: dict[str, str]
    workdir: Path
    started: list[Spawned]

    async def replica(self, **env: str) -> str:
        """Start a replica (extra `env` on top); its base URL once it is live."""
        port = free_port()
        process = Spawned(
            [sys.executable, "-m", "service", "serve"],
            env={**self.env, "BERTH_HTTP__PORT": str(port), **env},
            cwd=self.workdir,
            name=f"replica-{len(self.started)}",
        )
        self.started.append(process)
        base_url = f"http://127.0.0.1:{port}"
        await wait_until_live(base_url, process)
        await eventually(lambda: _local_cache_live(base_url), timeout=10)
        return base_url


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory, redis_server: str) -> Iterator[Deployment]:
    workdir = tmp_path_factory.mktemp("coherence")
    env = process_env(
        BERTH_ENVIRONMENT="test",
        BERTH_REDIS__URL=redis_server,
        BERTH_OBSERVABILITY__LOG_FORMAT="json",
        BERTH_RATE_LIMITS__ENABLED="false",
        BERTH_ADMIN_PASSWORD=PASSWORD,
        # Long backstops, so only invalidations can explain what the tests see.
        BERTH_CACHE__LOCAL_TTL_SECONDS="120",
        BERTH_CACHE__ARTICLE_TTL_SECONDS="600",
        BERTH_AUTH__STATE_CACHE_SECONDS="300",
        **{f"BERTH_AUTH__{key.upper()}": str(value) for key, value in FAST_ARGON2.items()},
    )
    run_service_cli(["migrate"], env, workdir)
    run_service_cli(["tenants", "create", TENANT], env, workdir)
    run_service_cli(
        ["users", "create-admin", "--email", OWNER_EMAIL, "--tenant", TENANT], env, workdir
    )
    made = Deployment(env, workdir, [])
    yield made
    for process in made.started:
        process.kill()


@dataclass(frozen=True)
class Replicas:
    a: httpx.AsyncClient
    b: httpx.AsyncClient
    owner: dict[str, str]


@pytest.fixture(scope="module")
async def replicas(deployment: Deployment) -> AsyncIterator[Replicas]:
    a_url, b_url = await deployment.replica(), await deployment.replica()
    async with (
        httpx.AsyncClient(base_url=a_url, timeout=10) as a,
        httpx.AsyncClient(base_url=b_url, timeout=10) as b,
    ):
        yield Replicas(a, b, (await log_in(a, OWNER_EMAIL)).headers)


@dataclass(frozen=True)
class Session:
    user_id: str
    headers: dict[str, str]
    refresh_token: str


async def log_in(client: httpx.AsyncClient, email: str) -> Session:
    response = await client.post(f"{API}/auth/login", json={"email": email, "password": PASSWORD})
    assert response.status_code == 200, response.text
    tokens = response.json()
    me = await client.get(
        f"{API}/auth/me", headers={"Authorization": f"Bearer {tokens['access_token']}"}
    )
    return Session(
        me.json()["id"],
        {"Authorization": f"Bearer {tokens['access_token']}"},
        tokens["refresh_token"],
    )


async def new_user(replicas: Replicas, role: str = "member") -> Session:
    """A user of the tenant, created and logged in through replica A."""
    email = f"{role}-{uuid.uuid4().hex[:8]}@coherent.example.com"
    created = await replicas.a.post(
        f"{API}/users",
        json={"email": email, "password": PASSWORD, "role": role},
        headers=replicas.owner,
    )
    assert created.status_code == 201, created.text
    return await log_in(replicas.a, email)


async def local_hits(client: httpx.AsyncClient) -> float:
    samples = await scrape_metrics(str(client.base_url))
    return samples.get((LOCAL_CACHE_LOOKUPS, (("result", "hit"),)), 0.0)


async def _local_cache_live(base_url: str) -> bool:
    samples = await scrape_metrics(base_url)
    return samples.get((LOCAL_CACHE_LIVE, ()), 0.0) == 1.0


async def warm(client: httpx.AsyncClient, path: str, headers: dict[str, str]) -> None:
    """Answer `path` on `client` until a request is served from its local cache."""
    before = await local_hits(client)
    for _ in range(3):
        response = await client.get(path, headers=headers)
        assert response.status_code == 200, response.text
    assert await local_hits(client) > before, "the replica never answered from its cache"


ME = f"{API}/auth/me"
ARTICLES = f"{API}/articles"


async def test_a_logout_on_a_ends_the_token_on_b(replicas: Replicas) -> None:
    user = await new_user(replicas)
    await warm(replicas.b, ARTICLES, user.headers)

    logout = await replicas.a.post(f"{API}/auth/logout", headers=user.headers)
    assert logout.status_code == 200, logout.text

    assert (await replicas.b.get(ARTICLES, headers=user.headers)).status_code == 401


async def test_a_logout_all_on_a_ends_every_token_on_b(replicas: Replicas) -> None:
    user = await new_user(replicas)
    second = await log_in(
        replicas.a, (await replicas.a.get(ME, headers=user.headers)).json()["email"]
    )
    await warm(replicas.b, ARTICLES, user.headers)
    await warm(replicas.b, ARTICLES, second.headers)

    ended = await replicas.a.post(f"{API}/auth/logout-all", headers=user.headers)
    assert ended.status_code == 200, ended.text

    assert (await replicas.b.get(ARTICLES, headers=user.headers)).status_code == 401
    assert (await replicas.b.get(ARTICLES, headers=second.headers)).status_code == 401


async def test_a_role_change_on_a_applies_on_b(replicas: Replicas) -> None:
    admin = await new_user(replicas, role="admin")
    await warm(replicas.b, f"{API}/users", admin.headers)  # an admin's route

    demoted = await replicas.a.patch(
        f"{API}/users/{admin.user_id}", json={"role": "member"}, headers=replicas.owner
    )
    assert demoted.status_code == 200, demoted.text

    # The token says admin, the row says member: no longer good (401), and never an admin's 200.
    assert (await replicas.b.get(f"{API}/users", headers=admin.headers)).status_code == 401


async def test_a_deactivation_on_a_applies_on_b(replicas: Replicas) -> None:
    user = await new_user(replicas)
    await warm(replicas.b, ARTICLES, user.headers)

    gone = await replicas.a.delete(f"{API}/users/{user.user_id}", headers=replicas.owner)
    assert gone.status_code == 200, gone.text

    assert (await replicas.b.get(ARTICLES, headers=user.headers)).status_code == 401


async def test_an_article_update_on_a_is_what_b_serves_next(replicas: Replicas) -> None:
    slug = f"coherent-{uuid.uuid4().hex[:8]}"
    created = await replicas.a.post(
        ARTICLES, json={"title": "Before", "slug": slug}, headers=replicas.owner
    )
    assert created.status_code == 201, created.text
    await warm(replicas.b, f"{ARTICLES}/{slug}", replicas.owner)
    await warm(replicas.b, ARTICLES, replicas.owner)

    changed = await replicas.a.patch(
        f"{ARTICLES}/{slug}", json={"title": "After"}, headers=replicas.owner
    )
    assert changed.status_code == 200, changed.text

    article = await replicas.b.get(f"{ARTICLES}/{slug}", headers=replicas.owner)
    assert article.json()["title"] == "After"
    assert article.headers["ETag"] == changed.headers["ETag"]
    page = await replicas.b.get(ARTICLES, headers=replicas.owner)
    assert {item["slug"]: item["title"] for item in page.json()["items"]}[slug] == "After"


async def test_a_replica_cut_from_its_invalidations_never_serves_what_it_cached(
    deployment: Deployment, redis_server: str, replicas: Replicas
) -> None:
    redis_port = int(redis_server.rsplit(":", 1)[1].split("/")[0])
    relay = TcpRelay("127.0.0.1", redis_port)
    await relay.start()
    c_url = await deployment.replica(
        BERTH_REDIS__URL=redis_url_with(redis_server, port=relay.port),
    )
    user = await new_user(replicas)
    async with httpx.AsyncClient(base_url=c_url, timeout=10) as c:
        await warm(c, ARTICLES, user.headers)

        await relay.stop()  # C hears nothing more from Redis
        await eventually(lambda: _not(_local_cache_live(c_url)), timeout=5)
        logout = await replicas.a.post(f"{API}/auth/logout", headers=user.headers)
        assert logout.status_code == 200, logout.text

        # Without its invalidations C must not vouch for the token from memory: it asks
        # Redis, which it cannot reach (503), instead of a cached 200.
        assert (await c.get(ARTICLES, headers=user.headers)).status_code == 503

        await relay.start()
        await eventually(lambda: _local_cache_live(c_url), timeout=10)
        assert (await c.get(ARTICLES, headers=user.headers)).status_code == 401
    await relay.stop()


async def _not(probe: object) -> bool:
    return not await probe  # type: ignore[misc]
