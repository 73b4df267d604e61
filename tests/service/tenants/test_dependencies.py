"""The tenant dependencies inside berth's real app (lifespan, registry watcher, middleware,
error envelope), with a stand-in principal: test headers play the token's claims."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import httpx
import pytest
from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException
from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel
from sqlalchemy import select

from service.articles.models import Article
from service.container import container_of
from service.core.config import Settings
from service.core.errors import ERROR_RESPONSES
from service.core.logging import get_logger
from service.main import create_app
from service.tenants.dependencies import (
    CurrentTenant,
    TenantScope,
    tenant_resolver,
    tenant_scope_for,
)
from service.tenants.engines import TenantEngines
from service.tenants.metrics import TENANT_ENGINE_EVICTIONS, TENANT_REGISTRY_ENTRIES
from service.tenants.registry import remove_entry, write_entry
from service.tenants.schemas import TenantEntry, TenantStatus
from tests.conftest import ClientFactory
from tests.service.tenants.conftest import SqliteTenants
from tests.support import assert_envelope, json_lines, wait_for


@dataclass(frozen=True)
class HeaderClaim:
    """A `TenantClaim` from test headers: stands in for the authenticated principal."""

    tenant_slug: str | None
    is_platform_admin: bool


async def claim_from_test_headers(
    x_test_tenant: Annotated[str | None, Header()] = None,
    x_test_admin: Annotated[bool, Header()] = False,
) -> HeaderClaim:
    return HeaderClaim(tenant_slug=x_test_tenant, is_platform_admin=x_test_admin)


current_tenant = tenant_resolver(claim_from_test_headers)
Tenant = Annotated[TenantEntry, Depends(current_tenant)]
Scope = Annotated[TenantScope, Depends(tenant_scope_for(claim_from_test_headers), scope="function")]


class WhoAmI(BaseModel):
    slug: str


class Titles(BaseModel):
    titles: list[str]


def tenant_router() -> APIRouter:
    router = APIRouter(prefix="/api/v1/test/tenant", responses=ERROR_RESPONSES)
    log = get_logger("tests.tenant")

    @router.get("/whoami", response_model=WhoAmI)
    async def whoami(tenant: Tenant) -> WhoAmI:
        log.info("tenant_route_ran")
        return WhoAmI(slug=tenant.slug)

    @router.post("/articles", response_model=WhoAmI)
    async def add(scope: Scope, title: str, outcome: Literal["ok", "http", "crash"]) -> WhoAmI:
        session = scope.session
        session.add(Article(slug=uuid.uuid4().hex, title=title, author_id=uuid.uuid4()))
        await session.flush()
        if outcome == "http":
            raise HTTPException(status_code=409, detail="conflict after write")
        if outcome == "crash":
            raise RuntimeError("crash after write")
        return WhoAmI(slug=scope.tenant.slug)

    @router.get("/articles", response_model=Titles)
    async def titles(scope: Scope) -> Titles:
        return Titles(titles=list((await scope.session.scalars(select(Article.title))).all()))

    @router.get("/unwired", response_model=WhoAmI)
    async def unwired(tenant: CurrentTenant) -> WhoAmI:
        return WhoAmI(slug=tenant.slug)

    return router


@pytest.fixture
def tenant_app(
    make_settings: Callable[..., Settings],
    migrated_sqlite: str,
    registry_dir: Path,
    sqlite_tenants: SqliteTenants,
) -> FastAPI:
    """berth's app over a registry with acme, beta (ready) and frozen (suspended)."""
    sqlite_tenants("acme", "beta")
    [frozen] = sqlite_tenants("frozen", register=False)
    write_entry(registry_dir, frozen.model_copy(update={"status": TenantStatus.SUSPENDED}))
    settings = make_settings(
        tenants={"registry_dir": str(registry_dir), "registry_poll_seconds": 0.02}
    )
    app: FastAPI = create_app(settings)
    app.include_router(tenant_router())
    return app


@pytest.fixture
async def tenant_client(tenant_app: FastAPI, client_for: ClientFactory) -> httpx.AsyncClient:
    return await client_for(tenant_app)


def as_member(tenant: str, **headers: str) -> dict[str, str]:
    return {"x-test-tenant": tenant, **headers}


def engines_of(app: FastAPI) -> TenantEngines:
    return container_of(app).tenancy.engines


async def test_a_member_acts_on_the_token_tenant(tenant_client: httpx.AsyncClient) -> None:
    response = await tenant_client.get("/api/v1/test/tenant/whoami", headers=as_member("acme"))

    assert response.status_code == 200
    assert response.json() == {"slug": "acme"}


@pytest.mark.parametrize(
    ("outcome", "status", "kept"), [("ok", 200, True), ("http", 409, False), ("crash", 500, False)]
)
async def test_the_tenant_session_commits_only_when_the_route_succeeds(
    tenant_client: httpx.AsyncClient, outcome: str, status: int, kept: bool
) -> None:
    write = await tenant_client.post(
        "/api/v1/test/tenant/articles",
        params={"title": "hello", "outcome": outcome},
        headers=as_member("acme"),
    )
    acme = await tenant_client.get("/api/v1/test/tenant/articles", headers=as_member("acme"))
    beta = await tenant_client.get("/api/v1/test/tenant/articles", headers=as_member("beta"))

    assert write.status_code == status
    assert acme.json() == {"titles": ["hello"] if kept else []}
    assert beta.json() == {"titles": []}  # another tenant's database


async def test_the_header_may_only_narrow_and_never_reveals_another_tenant(
    tenant_client: httpx.AsyncClient,
) -> None:
    path = "/api/v1/test/tenant/whoami"
    same = await tenant_client.get(path, headers=as_member("acme", **{"X-Tenant-ID": "acme"}))
    other = await tenant_client.get(path, headers=as_member("acme", **{"X-Tenant-ID": "beta"}))
    missing = await tenant_client.get(path, headers=as_member("acme", **{"X-Tenant-ID": "zed"}))

    assert same.json() == {"slug": "acme"}
    bodies = [assert_envelope(r, 404, "NotFound", path) for r in (other, missing)]
    assert [(b["message"], b["data"]) for b in bodies] == [("Unknown tenant", None)] * 2


async def test_a_platform_admin_must_name_a_tenant_and_may_name_any(
    tenant_client: httpx.AsyncClient,
) -> None:
    path = "/api/v1/test/tenant/whoami"
    admin = {"x-test-admin": "true"}

    unnamed = await tenant_client.get(path, headers=admin)
    named = await tenant_client.get(path, headers={**admin, "X-Tenant-ID": "beta"})

    body = assert_envelope(unnamed, 400, "BadRequest", path)
    assert "X-Tenant-ID" in body["message"]
    assert named.json() == {"slug": "beta"}


async def test_a_suspended_tenant_is_403_with_a_clear_message(
    tenant_client: httpx.AsyncClient,
) -> None:
    path = "/api/v1/test/tenant/whoami"
    response = await tenant_client.get(path, headers=as_member("frozen"))

    body = assert_envelope(response, 403, "Forbidden", path)
    assert body["message"] == "This tenant is suspended"


async def test_a_removed_tenant_is_404_and_its_engine_disposed_without_a_restart(
    tenant_app: FastAPI, tenant_client: httpx.AsyncClient, registry_dir: Path
) -> None:
    path = "/api/v1/test/tenant/articles"
    assert (await tenant_client.get(path, headers=as_member("beta"))).status_code == 200
    engines = engines_of(tenant_app)
    assert container_of(tenant_app).tenancy.registry.get("beta") is not None
    assert "beta" in engines.cached_slugs()

    remove_entry(registry_dir, "beta")
    await wait_for(lambda: "beta" not in engines.cached_slugs())
    response = await tenant_client.get(path, headers=as_member("beta"))

    body = assert_envelope(response, 404, "NotFound", path)
    assert body["message"] == "Unknown tenant"
    await engines.wait_disposed()
    assert engines.open_engines == len(engines.cached_slugs())  # nothing left retiring
    samples = await scrape(tenant_client)
    assert samples[(TENANT_ENGINE_EVICTIONS, (("reason", "registry"),))] == 1
    assert (await tenant_client.get(path, headers=as_member("acme"))).status_code == 200


async def test_a_new_tenant_is_served_without_a_restart(
    tenant_client: httpx.AsyncClient, sqlite_tenants: SqliteTenants
) -> None:
    path = "/api/v1/test/tenant/whoami"
    assert (await tenant_client.get(path, headers=as_member("gamma"))).status_code == 404

    sqlite_tenants("gamma")
    await wait_for_status(tenant_client, path, as_member("gamma"), 200)


async def test_the_tenant_is_on_the_request_log_lines(
    tenant_client: httpx.AsyncClient, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    await tenant_client.get("/api/v1/test/tenant/whoami", headers=as_member("acme"))

    lines = json_lines(capsys.readouterr().out)
    [route_line] = [line for line in lines if line["event"] == "tenant_route_ran"]
    assert route_line["tenant"] == "acme"


async def test_the_default_tenant_dependency_needs_an_authenticated_principal(
    tenant_client: httpx.AsyncClient,
) -> None:
    path = "/api/v1/test/tenant/unwired"
    response = await tenant_client.get(path, headers=as_member("acme"))

    assert_envelope(response, 401, "Unauthorized", path)


async def test_registry_and_engine_metrics_are_exposed(tenant_client: httpx.AsyncClient) -> None:
    await tenant_client.get("/api/v1/test/tenant/articles", headers=as_member("acme"))

    samples = await scrape(tenant_client)

    assert samples[(TENANT_REGISTRY_ENTRIES, (("status", "ready"),))] == 2
    assert samples[(TENANT_REGISTRY_ENTRIES, (("status", "suspended"),))] == 1
    assert samples[("berth_tenant_engines_open", ())] == 1
    assert samples[("berth_tenant_connections_checked_out", ())] == 0
    assert samples[("berth_tenant_registry_invalid_entries", ())] == 0


async def scrape(client: httpx.AsyncClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = await client.get("/metrics")
    assert response.status_code == 200
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


async def wait_for_status(
    client: httpx.AsyncClient, path: str, headers: dict[str, str], status: int
) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while (await client.get(path, headers=headers)).status_code != status:
        if loop.time() > deadline:
            pytest.fail(f"{path} never answered {status}", pytrace=False)
        await asyncio.sleep(0.02)


async def test_a_request_finding_every_tenant_connection_taken_is_a_503_retry_after(
    make_settings: Callable[..., Settings],
    migrated_sqlite: str,
    registry_dir: Path,
    sqlite_tenants: SqliteTenants,
    client_for: ClientFactory,
) -> None:
    """Pools of one connection and a 0.2 s pool timeout: while a lease holds acme's only
    permit, a request on acme queues, then gives up; beta is not affected."""
    [acme, _] = sqlite_tenants("acme", "beta")
    settings = make_settings(
        database={"url": migrated_sqlite, "pool_timeout_seconds": 0.2},
        tenants={"registry_dir": str(registry_dir), "engine_pool_size": 1},
    )
    app = create_app(settings)
    app.include_router(tenant_router())
    client = await client_for(app)
    path = "/api/v1/test/tenant/articles"

    async with engines_of(app).lease(acme):
        busy = await client.get(path, headers=as_member("acme"))
        other = await client.get(path, headers=as_member("beta"))
    freed = await client.get(path, headers=as_member("acme"))

    assert_envelope(busy, 503, "ServiceUnavailable", path)
    assert busy.headers["retry-after"] == "1"
    assert other.status_code == 200
    assert freed.status_code == 200
