"""The lean read path for tenant GETs, over HTTP on the real PostgreSQL: tenants provisioned
as the operator does (own database and role), acme and beta ready, frozen suspended.

Every route under /api/v1/articles is probed for isolation and authorization (the table
below; a route missing from it fails the test), with the cache off and on. GETs take no
AsyncSession, a cache hit no pooled connection, and a GET that raised gives its permit back.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import FastAPI
from fastapi.routing import iter_route_contexts
from sqlalchemy import event, insert, select
from sqlalchemy.orm import Session

from service.articles.models import Article
from service.container import container_of
from service.core.config import Settings
from service.db.engine import ReadOnlyConnectionError
from service.main import create_app
from service.tenants.engines import TenantEngines
from service.tenants.registry import write_entry
from service.tenants.schemas import TenantEntry, TenantStatus
from tests.conftest import ClientFactory
from tests.service.articles.conftest import ARTICLES, ArticlesApi
from tests.service.conftest import ProvisionFactory
from tests.service.identity.helpers import query
from tests.support import PG_ADMIN_URL, assert_envelope, asyncpg_dsn, identity_groups

SLUG = f"{ARTICLES}/{{slug}}"


@dataclass
class World:
    """berth over three tenants, an article `a-secret` in acme by `member`, and users."""

    api: ArticlesApi
    acme: TenantEntry
    beta: TenantEntry
    member: dict[str, str]  # acme, author of a-secret
    colleague: dict[str, str]  # acme, another member
    owner: dict[str, str]  # acme
    outsider: dict[str, str]  # a member of beta
    admin: dict[str, str]  # platform admin, no tenant
    frozen: dict[str, str]  # a member of the suspended tenant

    @property
    def engines(self) -> TenantEngines:
        return container_of(self.api.app).tenancy.engines

    def naming(self, headers: dict[str, str], tenant: TenantEntry) -> dict[str, str]:
        return {**headers, "X-Tenant-ID": tenant.slug}

    async def send(
        self, method: str, path: str, headers: dict[str, str], json: Any = None
    ) -> httpx.Response:
        return await self.api.client.request(method, path, headers=headers, json=json)


WorldFactory = Callable[..., Awaitable[World]]


@pytest.fixture
def world_for(
    provision: ProvisionFactory,
    pg_database: str,
    registry_dir: Path,
    make_settings: Callable[..., Settings],
    client_for: ClientFactory,
) -> WorldFactory:
    async def factory(*, cache: bool, pool_timeout: float = 5, **tenants: Any) -> World:
        acme, beta, frozen = await provision("acme"), await provision("beta"), await provision()
        for entry in (acme, beta):
            write_entry(registry_dir, entry)
        write_entry(registry_dir, frozen.model_copy(update={"status": TenantStatus.SUSPENDED}))
        settings = make_settings(
            **identity_groups(
                pg_database,
                database={"url": pg_database, "pool_timeout_seconds": pool_timeout},
                cache={"enabled": cache},
                tenants={"registry_dir": str(registry_dir), **tenants},
            )
        )
        app = create_app(settings)
        api = ArticlesApi(app, await client_for(app))
        world = World(
            api,
            acme,
            beta,
            member=await api.user(tenant=acme.slug),
            colleague=await api.user(tenant=acme.slug),
            owner=await api.user("owner", tenant=acme.slug),
            outsider=await api.user(tenant=beta.slug),
            admin=await api.user("platform_admin", tenant=None),
            frozen=await api.user(tenant=frozen.slug),
        )
        await api.create(world.member, slug="a-secret", title="A only")
        return world

    return factory


def message_of(response: httpx.Response) -> str:
    return str(response.json()["message"])


async def probe_list(w: World) -> None:
    own = await w.send("GET", ARTICLES, w.member)
    foreign = await w.send("GET", ARTICLES, w.outsider)
    named = await w.send("GET", ARTICLES, w.naming(w.outsider, w.acme))
    unnamed = await w.send("GET", ARTICLES, w.admin)
    admin = await w.send("GET", ARTICLES, w.naming(w.admin, w.acme))

    assert [item["slug"] for item in own.json()["items"]] == ["a-secret"]
    assert foreign.json()["items"] == []
    assert message_of(named) == "Unknown tenant"
    assert_envelope(named, 404, "NotFound", ARTICLES)
    assert_envelope(unnamed, 400, "BadRequest", ARTICLES)
    assert [item["slug"] for item in admin.json()["items"]] == ["a-secret"]


async def probe_get(w: World) -> None:
    path = f"{ARTICLES}/a-secret"
    own = await w.send("GET", path, w.member)
    foreign = await w.send("GET", path, w.outsider)
    named = await w.send("GET", path, w.naming(w.outsider, w.acme))
    unnamed = await w.send("GET", path, w.admin)
    admin = await w.send("GET", path, w.naming(w.admin, w.acme))

    assert own.json()["title"] == "A only"
    assert (foreign.status_code, message_of(foreign)) == (404, "Article not found")
    assert (named.status_code, message_of(named)) == (404, "Unknown tenant")
    assert_envelope(unnamed, 400, "BadRequest", path)
    assert admin.json() == own.json()


async def probe_create(w: World) -> None:
    body = {"title": "Created"}
    named = await w.send("POST", ARTICLES, w.naming(w.outsider, w.acme), body)
    unnamed = await w.send("POST", ARTICLES, w.admin, body)
    foreign = await w.send("POST", ARTICLES, w.outsider, {"title": "B's own"})
    admin = await w.send("POST", ARTICLES, w.naming(w.admin, w.acme), {"title": "By admin"})
    own = await w.send("POST", ARTICLES, w.colleague, {"title": "Mine"})

    assert (named.status_code, message_of(named)) == (404, "Unknown tenant")
    assert_envelope(unnamed, 400, "BadRequest", ARTICLES)
    assert foreign.status_code == 201  # into beta's own database
    assert (admin.status_code, own.status_code) == (201, 201)
    assert await slugs_in(w.beta) == ["b-s-own"]
    assert await slugs_in(w.acme) == ["a-secret", "by-admin", "mine"]


async def probe_patch(w: World) -> None:
    path = f"{ARTICLES}/a-secret"
    named = await w.send("PATCH", path, w.naming(w.outsider, w.acme), {"title": "pwned"})
    foreign = await w.send("PATCH", path, w.outsider, {"title": "pwned"})
    colleague = await w.send("PATCH", path, w.colleague, {"title": "pwned"})
    author = await w.send("PATCH", path, w.member, {"body": "by the author"})
    owner = await w.send("PATCH", path, w.owner, {"body": "by the owner"})
    admin = await w.send("PATCH", path, w.naming(w.admin, w.acme), {"body": "by an admin"})
    read = await w.send("GET", path, w.member)

    assert (named.status_code, message_of(named)) == (404, "Unknown tenant")
    assert (foreign.status_code, message_of(foreign)) == (404, "Article not found")
    assert_envelope(colleague, 403, "Forbidden", path)
    assert [r.status_code for r in (author, owner, admin)] == [200, 200, 200]
    assert (read.json()["title"], read.json()["body"]) == ("A only", "by an admin")


async def probe_delete(w: World) -> None:
    path = f"{ARTICLES}/a-secret"
    named = await w.send("DELETE", path, w.naming(w.outsider, w.acme))
    foreign = await w.send("DELETE", path, w.outsider)
    colleague = await w.send("DELETE", path, w.colleague)
    owner = await w.send("DELETE", path, w.owner)
    gone = await w.send("GET", path, w.member)

    assert (named.status_code, message_of(named)) == (404, "Unknown tenant")
    assert (foreign.status_code, message_of(foreign)) == (404, "Article not found")
    assert_envelope(colleague, 403, "Forbidden", path)
    assert owner.status_code == 204
    assert gone.status_code == 404  # no stale read after the delete, cache on or off


# Every (method, path template) under the articles prefix, in the order probed (DELETE last).
PROBES: dict[tuple[str, str], Callable[[World], Awaitable[None]]] = {
    ("GET", ARTICLES): probe_list,
    ("GET", SLUG): probe_get,
    ("POST", ARTICLES): probe_create,
    ("PATCH", SLUG): probe_patch,
    ("DELETE", SLUG): probe_delete,
}
BODIES = {"POST": {"title": "t"}, "PATCH": {"title": "t"}}


def article_routes(app: FastAPI) -> set[tuple[str, str]]:
    """From the app's route table itself (routes left out of OpenAPI too), every included
    router's routes with their prefix."""
    return {
        (method, route.path)
        for route in iter_route_contexts(app.routes)
        if route.path is not None and route.path.startswith(ARTICLES)
        for method in route.methods or ()
    }


async def slugs_in(entry: TenantEntry) -> list[str]:
    url = entry.database_url.get_secret_value()
    return sorted(row[0] for row in await query(url, select(Article.slug)))


@pytest.mark.parametrize("cache", [False, True], ids=["cache-off", "cache-on"])
async def test_every_articles_route_keeps_isolation_and_roles(
    world_for: WorldFactory, cache: bool
) -> None:
    w = await world_for(cache=cache)
    assert article_routes(w.api.app) == set(PROBES), "a new route needs a probe above"

    for (method, template), probe in PROBES.items():
        path = template.format(slug="a-secret")
        suspended = await w.send(method, path, w.frozen, BODIES.get(method))
        assert_envelope(suspended, 403, "Forbidden", path)
        assert message_of(suspended) == "This tenant is suspended"
        await probe(w)

    assert await slugs_in(w.acme) == ["by-admin", "mine"]  # a-secret deleted last


@pytest.fixture
def tenant_sessions() -> Iterator[list[str]]:
    """The database of every ORM session that begins on a tenant database (not the
    control plane, whose sessions authentication may open)."""
    seen: list[str] = []

    def began(session: Session, transaction: Any, connection: Any) -> None:
        database = str(connection.engine.url.database)
        if not database.startswith("berth_test_"):
            seen.append(database)

    event.listen(Session, "after_begin", began)
    yield seen
    event.remove(Session, "after_begin", began)


async def test_a_get_reads_the_tenant_database_without_a_session(
    world_for: WorldFactory, tenant_sessions: list[str]
) -> None:
    w = await world_for(cache=False)
    tenant_sessions.clear()
    checkouts = w.engines.checkouts

    listed = await w.send("GET", ARTICLES, w.member)
    read = await w.send("GET", f"{ARTICLES}/a-secret", w.member)
    sessions_of_reads, checkouts_of_reads = list(tenant_sessions), w.engines.checkouts - checkouts
    created = await w.send("POST", ARTICLES, w.member, {"title": "New"})

    assert (listed.status_code, read.status_code, created.status_code) == (200, 200, 201)
    assert checkouts_of_reads == 2  # both read the database: one pooled connection each
    assert sessions_of_reads == []
    assert tenant_sessions != []  # the write did open one: the probe sees sessions
    assert w.engines.checked_out == 0


# A cached path, and one whose answer is not cached yet.
MISSES = {f"{ARTICLES}/a-secret": f"{ARTICLES}/a-secret-2", ARTICLES: f"{ARTICLES}?limit=3"}


async def test_a_cache_hit_takes_no_permit_and_no_pooled_connection(
    world_for: WorldFactory,
) -> None:
    """One connection for acme, held by a reader: a hit is still served at once, a miss
    waits for the connection and gets a 503."""
    w = await world_for(cache=True, pool_timeout=0.3, engine_pool_size=1, engine_max_overflow=0)
    for path, uncached_path in MISSES.items():
        checkouts = w.engines.checkouts
        miss = await w.send("GET", path, w.member)
        after_miss = w.engines.checkouts
        holder = w.engines.reader(w.acme)
        await holder.all(select(Article.id))
        try:
            hit = await w.send("GET", path, w.member)
            uncached = await w.send("GET", uncached_path, w.member)
        finally:
            await holder.close()

        assert miss.status_code == hit.status_code == 200
        assert hit.content == miss.content
        assert after_miss - checkouts == 1  # the miss read the database
        assert w.engines.checkouts - after_miss == 1  # only the holder's connection
        assert_envelope(uncached, 503, "ServiceUnavailable", uncached.url.path)


async def rename_table(entry: TenantEntry, old: str, new: str) -> None:
    database = entry.database_url.get_secret_value().rsplit("/", 1)[-1]
    admin = await asyncpg.connect(asyncpg_dsn(PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{database}"))
    try:
        await admin.execute(f'ALTER TABLE "{old}" RENAME TO "{new}"')
    finally:
        await admin.close()


async def test_a_get_that_raised_gives_its_permit_and_connection_back(
    world_for: WorldFactory,
) -> None:
    """One connection per tenant and a short pool timeout: a leaked permit would turn the
    next GET into a 503 (TenantsBusy)."""
    w = await world_for(cache=False, pool_timeout=0.3, engine_pool_size=1, engine_max_overflow=0)
    path = f"{ARTICLES}/a-secret"
    await rename_table(w.acme, "article_tags", "article_tags_away")
    try:
        failed = [await w.send("GET", path, w.member) for _ in range(3)]
        checked_out_after_failures = w.engines.checked_out
    finally:
        await rename_table(w.acme, "article_tags_away", "article_tags")
    served = await w.send("GET", path, w.member)

    assert [r.status_code for r in failed] == [500, 500, 500]
    assert checked_out_after_failures == 0
    assert served.status_code == 200


async def test_the_read_connection_of_a_tenant_refuses_a_write(world_for: WorldFactory) -> None:
    w = await world_for(cache=False)
    reader = w.engines.reader(w.acme)
    statement = insert(Article).values(slug="sneaky", title="x", author_id=uuid.uuid4())
    try:
        with pytest.raises(ReadOnlyConnectionError):
            await reader.all(statement)  # type: ignore[arg-type]
    finally:
        await reader.close()

    assert await slugs_in(w.acme) == ["a-secret"]


def test_the_article_reads_skip_fastapis_generic_solver() -> None:
    """Both GETs have plain graphs (service/core/routing.py): a change that makes one of
    them not plain (a generator dependency, a Response parameter) puts it back on FastAPI's
    solver, ~50 µs a request (docs/benchmarks.md)."""
    lean = {
        (method, route.path): getattr(route.original_route, "is_lean", False)
        for route in iter_route_contexts(create_app(Settings()).routes)
        if route.path is not None and route.path.startswith(ARTICLES)
        for method in route.methods or ()
    }

    assert lean[("GET", ARTICLES)]
    assert lean[("GET", f"{ARTICLES}/{{slug}}")]
