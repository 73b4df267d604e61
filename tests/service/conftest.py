"""An app with extra routes that raise each kind of error, over the real middleware stack."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Literal

import httpx
import pytest
from fastapi import APIRouter, FastAPI, HTTPException, Request
from pydantic import BaseModel, Field
from sqlalchemy import make_url

from service.core.config import Settings
from service.core.dependencies import RequireJson
from service.core.errors import ERROR_RESPONSES, NotFound, RateLimited
from service.core.logging import get_logger
from service.db.dependencies import DbSession
from service.identity.models import User
from service.main import create_app
from service.tenants import postgres, provisioning
from service.tenants.migrate import upgrade_tenant
from service.tenants.registry import TenantRegistry, write_entry
from service.tenants.schemas import TenantEntry, TenantStatus
from tests.conftest import ClientFactory
from tests.support import TcpRelay, redis_url_with, relay

MAX_BODY_BYTES = 1024
SECRET_IN_CRASH = "hunter2-internal-detail"


class Item(BaseModel):
    name: str = Field(max_length=20)
    quantity: int = Field(ge=1)


class Created(BaseModel):
    id: str


def probe_router() -> APIRouter:
    router = APIRouter(prefix="/api/v1/test", responses=ERROR_RESPONSES)
    log = get_logger("tests.probe")

    @router.post("/items", response_model=Item, dependencies=[RequireJson])
    async def create_item(item: Item) -> Item:
        return item

    @router.get("/boom", response_model=Item)
    async def boom() -> Item:
        log.info("about_to_fail", password="pw-should-not-appear", token="tok-should-not-appear")
        raise RuntimeError(f"database password is {SECRET_IN_CRASH}")

    @router.get("/limited", response_model=Item)
    async def limited() -> Item:
        raise RateLimited(7)

    @router.post("/stream", response_model=Created)
    async def stream(request: Request) -> Created:
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
        return Created(id=str(size))

    @router.post("/users", response_model=Created)
    async def create_user(
        session: DbSession, email: str, outcome: Literal["ok", "http", "domain", "crash"]
    ) -> Created:
        user = User(email=email, password_hash="x", role="member", tenant_slug="demo")
        session.add(user)
        await session.flush()
        if outcome == "http":
            raise HTTPException(status_code=409, detail="conflict after write")
        if outcome == "domain":
            raise NotFound("gone after write")
        if outcome == "crash":
            raise RuntimeError("crash after write")
        return Created(id=str(user.id))

    return router


@pytest.fixture
async def pg_relay(pg_database: str) -> AsyncIterator[tuple[TcpRelay, str]]:
    """`(relay, url)`: the test database reached through a TcpRelay that can be cut."""
    url = make_url(pg_database)
    async with relay(url.host or "127.0.0.1", url.port or 5432) as proxy:
        relayed = url.set(host="127.0.0.1", port=proxy.port)
        yield proxy, relayed.render_as_string(hide_password=False)


@pytest.fixture
async def redis_relay(redis_server: str) -> AsyncIterator[tuple[TcpRelay, str]]:
    """`(relay, url)`: the test Redis reached through a TcpRelay that can be cut."""
    url = make_url(redis_server)
    async with relay(url.host or "127.0.0.1", url.port or 6379) as proxy:
        yield proxy, redis_url_with(redis_server, port=proxy.port)


@pytest.fixture
def probe_app(make_settings: Callable[..., Settings]) -> Callable[..., FastAPI]:
    """berth's app plus the probe routes; keyword groups override settings."""

    def factory(**groups: object) -> FastAPI:
        groups.setdefault("http", {"max_body_bytes": MAX_BODY_BYTES})
        app = create_app(make_settings(**groups))
        app.include_router(probe_router())
        return app

    return factory


@pytest.fixture
async def probe_client(
    probe_app: Callable[..., FastAPI], migrated_sqlite: str, client_for: ClientFactory
) -> httpx.AsyncClient:
    return await client_for(probe_app())


def unique_email() -> str:
    return f"user-{uuid.uuid4().hex[:10]}@example.com"


# Tenants: registry directories, SQLite tenant databases at head, and tenants provisioned on
# the real PostgreSQL with the provisioning code (dropped afterwards).


def unique_slug(prefix: str = "t") -> str:
    """Role and database names are cluster-wide: never reuse one across runs."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def sqlite_entry(
    path: Path, slug: str, status: TenantStatus = TenantStatus.READY, **fields: object
) -> TenantEntry:
    return TenantEntry.model_validate(
        {"slug": slug, "status": status, "database_url": f"sqlite+aiosqlite:///{path}", **fields}
    )


@pytest.fixture
def registry_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "registry"
    directory.mkdir()
    return directory


RegistryOf = Callable[..., TenantRegistry]


@pytest.fixture
def registry_of(tmp_path: Path) -> RegistryOf:
    """`registry_of(*entries)`: a real registry directory holding exactly `entries`, read
    once (a new directory on each call)."""
    made: list[Path] = []

    def factory(*entries: TenantEntry) -> TenantRegistry:
        directory = tmp_path / f"registry-{len(made)}"
        made.append(directory)
        directory.mkdir()
        for entry in entries:
            write_entry(directory, entry)
        return TenantRegistry.read(directory)

    return factory


@pytest.fixture(scope="session")
async def tenant_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One SQLite tenant database at head; tests copy it (migrating each costs ~0.1 s)."""
    path = tmp_path_factory.mktemp("tenant-template") / "template.db"
    await upgrade_tenant(sqlite_entry(path, "template"))
    return path


SqliteTenants = Callable[..., list[TenantEntry]]


@pytest.fixture
def sqlite_tenants(tmp_path: Path, registry_dir: Path, tenant_template: Path) -> SqliteTenants:
    """`sqlite_tenants("acme", "beta")`: migrated SQLite tenants, registered in registry_dir."""

    def factory(*slugs: str, register: bool = True) -> list[TenantEntry]:
        entries = []
        for slug in slugs:
            path = tmp_path / "tenant-dbs" / f"{slug}.db"
            path.parent.mkdir(exist_ok=True)
            shutil.copyfile(tenant_template, path)
            entry = sqlite_entry(path, slug)
            if register:
                write_entry(registry_dir, entry)
            entries.append(entry)
        return entries

    return factory


ProvisionFactory = Callable[..., Awaitable[TenantEntry]]


@pytest.fixture
async def provision(pg_server: str) -> AsyncIterator[ProvisionFactory]:
    """Provision PostgreSQL tenants the way the operator does (admin: `pg_server`); each one
    is dropped at teardown (database WITH (FORCE), then role)."""
    created: list[str] = []

    async def factory(prefix: str = "t", *, migrate: bool = True) -> TenantEntry:
        slug = unique_slug(prefix)
        created.append(slug)
        url = await provisioning.provision_postgres(pg_server, slug)
        entry = TenantEntry.model_validate({"slug": slug, "database_url": url})
        if migrate:
            await upgrade_tenant(entry)
        return entry

    yield factory
    for slug in created:
        await postgres.drop_postgres(pg_server, slug)
