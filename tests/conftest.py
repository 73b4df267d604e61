"""Shared fixtures: real PostgreSQL and Redis, settings and app factories, an async client."""

from __future__ import annotations

import shutil
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import argon2
import asyncpg
import httpx
import pytest
from asgi_lifespan import LifespanManager
from berth_operator.crd import render_yaml
from berth_operator.resource import CRD_NAME
from fastapi import FastAPI
from lightkube import AsyncClient, KubeConfig
from pymongo import MongoClient
from redis.exceptions import RedisError
from sqlalchemy import make_url

from service.container import build_container
from service.core.config import Settings
from service.db import migrate
from service.main import create_app
from tests.kube import ApiServer, api_server, kubectl
from tests.mongo_server import MongoServer
from tests.mongo_server import mongo_server as mongo_server_at
from tests.pg_cluster import ScramCluster, scram_cluster
from tests.support import (
    PG_ADMIN_URL,
    REDIS_URL,
    KnownUser,
    Spawned,
    create_user,
    free_port,
    identity_groups,
    own_redis_database,
    process_env,
    unavailable,
    wait_until_live,
)

AppFactory = Callable[..., FastAPI]
ClientFactory = Callable[[FastAPI], Awaitable[httpx.AsyncClient]]


def _asyncpg_dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _with_database(url: str, database: str) -> str:
    return make_url(url).set(database=database).render_as_string(hide_password=False)


async def _admin_execute(sql: str) -> None:
    connection = await asyncpg.connect(_asyncpg_dsn(PG_ADMIN_URL), timeout=5)
    try:
        await connection.execute(sql)
    finally:
        await connection.close()


@pytest.fixture(scope="session")
async def pg_server() -> str:
    """The admin URL of the real PostgreSQL; fails under CI when it is not there."""
    try:
        await _admin_execute("SELECT 1")
    except (OSError, asyncpg.PostgresError) as exc:
        unavailable("PostgreSQL at BERTH_TEST_DATABASE_URL", exc)
    return PG_ADMIN_URL


@pytest.fixture(scope="session")
async def pg_template(pg_server: str) -> AsyncIterator[str]:
    """A database migrated to head once per run; tests copy it and never touch it."""
    name = f"berth_test_tpl_{uuid.uuid4().hex[:12]}"
    await _admin_execute(f'CREATE DATABASE "{name}"')
    try:
        await migrate.upgrade(_with_database(pg_server, name))
        yield name
    finally:
        await _admin_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@asynccontextmanager
async def _throwaway_database(server: str, template: str | None = None) -> AsyncIterator[str]:
    name = f"berth_test_{uuid.uuid4().hex[:12]}"
    copy_of = f' TEMPLATE "{template}"' if template else ""
    await _admin_execute(f'CREATE DATABASE "{name}"{copy_of}')
    try:
        yield _with_database(server, name)
    finally:
        await _admin_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def pg_database(pg_server: str, pg_template: str) -> AsyncIterator[str]:
    """A fresh, migrated database per test (a copy of the template), dropped afterwards."""
    async with _throwaway_database(pg_server, template=pg_template) as url:
        yield url


@pytest.fixture
async def empty_pg_database(pg_server: str) -> AsyncIterator[str]:
    """A fresh database with no schema at all, for migration tests."""
    async with _throwaway_database(pg_server) as url:
        yield url


@pytest.fixture(scope="session")
def scram_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ScramCluster]:
    """A throwaway PostgreSQL that really checks passwords (scram-sha-256): the one on
    127.0.0.1:5432 trusts local connections, so only this one proves a password refused."""
    with scram_cluster(tmp_path_factory.mktemp("scram")) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def redis_server() -> Iterator[str]:
    """The URL of a Redis database of this run's own (`own_redis_database`), flushed before
    and after the run; fails under CI when Redis is not there."""
    try:
        with own_redis_database(REDIS_URL) as url:
            yield url
    except RedisError as exc:  # raised before the yield: Redis is not there
        unavailable("Redis at BERTH_TEST_REDIS_URL", exc)


@pytest.fixture(scope="session")
def mongo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MongoServer]:
    """A real MongoDB-protocol server (secantusdb, one-node replica set, no auth), one per run;
    tests keep apart by database (`mongo_database`)."""
    with mongo_server_at(tmp_path_factory.mktemp("mongo")) as server:
        yield server


@pytest.fixture(scope="session")
def mongo_auth_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MongoServer]:
    """The same server with `--auth`: `url` is a root admin's; tenant users are real users."""
    with mongo_server_at(tmp_path_factory.mktemp("mongo-auth"), auth=True) as server:
        yield server


@pytest.fixture
def mongo_database(mongo_server: MongoServer) -> Iterator[str]:
    """A database name of this test's own on `mongo_server`, dropped afterwards."""
    name = f"berth_test_{uuid.uuid4().hex[:12]}"
    yield name
    with MongoClient(mongo_server.url) as client:
        client.drop_database(name)


@pytest.fixture
def mongo_prefix(mongo_server: MongoServer) -> Iterator[str]:
    """A database prefix of this test's own (`BERTH_MONGO__DATABASE_PREFIX`): every database
    named with it is dropped afterwards."""
    prefix = f"t{uuid.uuid4().hex[:10]}_"
    yield prefix
    with MongoClient(mongo_server.url) as client:
        for name in client.list_database_names():
            if name.startswith(prefix):
                client.drop_database(name)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'berth.db'}"


@pytest.fixture
def make_settings(sqlite_url: str, tmp_path: Path) -> Callable[..., Settings]:
    """Settings from keyword groups, never from the developer's environment or .env; the
    tenant registry and tenant databases live in the test's tmp dir."""

    def factory(**groups: Any) -> Settings:
        values: dict[str, Any] = {
            "environment": "test",
            "startup_retries": 1,
            "database": {"url": sqlite_url},
            "tenants": {
                "registry_dir": str(tmp_path / "registry"),
                "sqlite_dir": str(tmp_path / "tenant-dbs"),
            },
            "observability": {"log_format": "json", "readiness_cache_seconds": 0},
        }
        for key, value in groups.items():
            if isinstance(value, dict) and isinstance(values.get(key), dict):
                values[key] = {**values[key], **value}
            else:
                values[key] = value
        return Settings(_env_file=None, **values)

    return factory


@pytest.fixture
async def migrated_sqlite(sqlite_url: str) -> str:
    await migrate.upgrade(sqlite_url)
    return sqlite_url


@pytest.fixture
async def client_for() -> AsyncIterator[ClientFactory]:
    """Start an app's lifespan and give an httpx client bound to it; all closed at the end."""
    managers: list[LifespanManager] = []
    clients: list[httpx.AsyncClient] = []

    async def factory(app: FastAPI) -> httpx.AsyncClient:
        manager = LifespanManager(app, startup_timeout=30, shutdown_timeout=30)
        await manager.__aenter__()
        managers.append(manager)
        transport = httpx.ASGITransport(app=manager.app, client=("127.0.0.1", 50000))
        client = httpx.AsyncClient(transport=transport, base_url="http://testserver")
        clients.append(client)
        return client

    yield factory
    for client in clients:
        await client.aclose()
    for manager in reversed(managers):
        await manager.__aexit__(None, None, None)


@pytest.fixture
async def client(
    make_settings: Callable[..., Settings],
    migrated_sqlite: str,
    client_for: ClientFactory,
) -> httpx.AsyncClient:
    """A client for the app on its embedded defaults (SQLite, in-process store)."""
    return await client_for(create_app(make_settings()))


SpawnFactory = Callable[..., Spawned]


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[SpawnFactory]:
    """Start real processes: `spawn("-m", "service", "migrate", env=..., name=...)`.

    Runs `sys.executable` with cwd=tmp_path (no `.env` there), in its own process group with
    stdout/stderr in tmp files; the env defaults to `process_env()` (no outside BERTH_*).
    Every group still alive at teardown is killed.
    """
    started: list[Spawned] = []

    def factory(*args: str, env: dict[str, str] | None = None, name: str = "proc") -> Spawned:
        process = Spawned(
            [sys.executable, *args],
            env=process_env() if env is None else env,
            cwd=tmp_path,
            name=f"{name}-{len(started)}",
        )
        started.append(process)
        return process

    try:
        yield factory
    finally:
        for process in started:
            process.kill()


@dataclass(frozen=True)
class Served:
    """A real `python -m service serve` process and the port it listens on."""

    process: Spawned
    port: int

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


ServeFactory = Callable[..., Awaitable[Served]]


@pytest.fixture
def serve(spawn: SpawnFactory, migrated_sqlite: str) -> ServeFactory:
    """`await serve(**env)`: the real server, as a container runs it, on a free port with a
    migrated SQLite control plane and JSON logs, live; `env` adds or replaces variables."""

    async def factory(**env: str) -> Served:
        port = free_port()
        settings = process_env(
            BERTH_ENVIRONMENT="test",
            BERTH_DATABASE__URL=migrated_sqlite,
            BERTH_HTTP__PORT=str(port),
            BERTH_OBSERVABILITY__LOG_FORMAT="json",
            **env,
        )
        process = spawn("-m", "service", "serve", env=settings, name="serve")
        served = Served(process, port)
        await wait_until_live(served.base_url, process)
        return served

    return factory


__all__ = ["AppFactory", "ClientFactory", "ServeFactory", "SpawnFactory"]


# Identity: an app with fast Argon2 on a given database, and users with known passwords.

IdentityAppFactory = Callable[..., Awaitable[tuple[FastAPI, httpx.AsyncClient]]]
UserFactory = Callable[..., Awaitable[KnownUser]]


@pytest.fixture
def identity_app(
    make_settings: Callable[..., Settings], client_for: ClientFactory
) -> IdentityAppFactory:
    """`app, client = await identity_app(pg_database, **groups)`: started, fast Argon2,
    rate limits off unless `rate_limits` is given (see tests.support.identity_groups);
    `hasher=` replaces the Argon2 hasher the settings describe."""

    async def factory(
        database_url: str, *, hasher: argon2.PasswordHasher | None = None, **groups: Any
    ) -> tuple[FastAPI, httpx.AsyncClient]:
        settings = make_settings(**identity_groups(database_url, **groups))
        app = create_app(container=build_container(settings, hasher=hasher))
        return app, await client_for(app)

    return factory


@pytest.fixture
def user_factory() -> UserFactory:
    """`await user_factory(app, role="admin", tenant_slug="acme")` -> KnownUser."""
    return create_user


@pytest.fixture(scope="session")
def kube_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    """One Kubernetes control plane for the session (the operator's, the chart's and the
    manifests' tests), the Tenant CRD installed; fails under CI if it cannot run."""
    if shutil.which("etcd") is None:
        unavailable("etcd (apt-get install etcd-server) for the Kubernetes API server", "absent")
    with api_server(tmp_path_factory.mktemp("kube")) as server:
        kubectl(server, "apply", "-f", "-", input=render_yaml())
        kubectl(server, "wait", "--for=condition=Established", f"crd/{CRD_NAME}", "--timeout=60s")
        yield server


@pytest.fixture(scope="session")
async def kube_admin(kube_server: ApiServer) -> AsyncIterator[AsyncClient]:
    client = AsyncClient(config=KubeConfig.from_file(kube_server.kubeconfig), trust_env=False)
    yield client
    await client.close()
