"""The live stack of test_live_prometheus, one per module: a real berth on the real
PostgreSQL and Redis, a real operator on the real Kubernetes API server, and a real
Prometheus scraping both with the repository's static scrape config and rules.

Everything is a separate process started here and stopped (with what it created) at the
end: the service's control-plane database, its tenant (database and role, made by
`tenants create` as a developer does), the Redis database of the run, the operator's
namespace and its Tenant's database and role.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import httpx
import pytest
from berth_operator.app import LIVENESS_PATH
from berth_operator.config import operator_env_name
from berth_operator.kube import TenantResource, encode
from lightkube import ApiError, AsyncClient
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Namespace, Secret
from lightkube.types import PatchType

from service.identity.cli import PASSWORD_ENV
from service.tenants.postgres import tenant_names
from tests.kube import ApiServer
from tests.observability.prometheus_support import (
    STATIC_CONFIG,
    Prometheus,
    fast_rule_files,
    for_test,
    load_config,
    start_prometheus,
    wait_ready,
    with_static_targets,
    write_config,
)
from tests.operator.e2e_support import (
    SERVER_SECRET,
    Process,
    is_ready,
    operator_env,
    run_kubectl,
    tenant_manifest,
    unique,
    until,
    wait_until_operator_live,
)
from tests.support import (
    TEST_PASSWORD,
    Spawned,
    TcpRelay,
    asyncpg_dsn,
    free_port,
    process_env,
    redis_url_with,
    wait_until_live,
)

SETUP_SECONDS = 60.0
OWNER_EMAIL = "owner@live.example.com"
# Low enough that a handful of logins for one account is refused (429).
LOGIN_LIMIT = "3/minute"


@dataclass
class Berth:
    """`python -m service serve` on PostgreSQL and Redis (reached through a relay the test
    can cut), its metrics on a port of their own."""

    process: Spawned
    url: str
    metrics_port: int
    tenant: str
    redis: TcpRelay


@dataclass
class Operator:
    """`python -m berth_operator` with its metrics port, one Tenant applied and Ready."""

    process: Process
    metrics_port: int
    namespace: str
    tenant: str


async def _admin_execute(admin_url: str, statement: str) -> None:
    connection = await asyncpg.connect(asyncpg_dsn(admin_url), timeout=5)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


async def _run(command: list[str], env: Mapping[str, str], cwd: Path) -> None:
    """`python <command>` off the event loop (the Redis relay keeps relaying)."""
    done = await asyncio.to_thread(
        subprocess.run, [sys.executable, *command], env=dict(env), cwd=cwd,
        capture_output=True, text=True, timeout=SETUP_SECONDS, check=False,
    )  # fmt: skip
    assert done.returncode == 0, f"{' '.join(command)}: {done.stdout}{done.stderr}"


def _database_url(admin_url: str, database: str) -> str:
    return urlsplit(admin_url)._replace(path=f"/{database}").geturl()


def berth_env(
    *, database_url: str, redis_url: str, workdir: Path, port: int, metrics_port: int
) -> dict[str, str]:
    return process_env(
        BERTH_ENVIRONMENT="test",
        BERTH_DATABASE__URL=database_url,
        BERTH_REDIS__URL=redis_url,
        BERTH_HTTP__HOST="127.0.0.1",
        BERTH_HTTP__PORT=str(port),
        BERTH_OBSERVABILITY__METRICS_PORT=str(metrics_port),
        BERTH_OBSERVABILITY__LOG_FORMAT="json",
        BERTH_OBSERVABILITY__READINESS_CACHE_SECONDS="0",
        BERTH_TENANTS__REGISTRY_DIR=str(workdir / "registry"),
        BERTH_AUTH__ARGON2_TIME_COST="1",
        BERTH_AUTH__ARGON2_MEMORY_KIB="8",
        BERTH_AUTH__ARGON2_PARALLELISM="1",
        BERTH_RATE_LIMITS__LOGIN_PER_ACCOUNT=LOGIN_LIMIT,
    )


async def _provision(env: Mapping[str, str], admin_url: str, tenant: str, cwd: Path) -> None:
    """As in `make bench`: migrate, `tenants create --postgres-admin-url`, its owner."""
    await _run(["-m", "service", "migrate"], env, cwd)
    create = ["-m", "service", "tenants", "create", tenant]
    await _run([*create, "--postgres-admin-url", admin_url], env, cwd)
    owner = ["-m", "service", "users", "create-admin", "--email", OWNER_EMAIL]
    await _run([*owner, "--tenant", tenant], {**env, PASSWORD_ENV: TEST_PASSWORD}, cwd)


@pytest.fixture(scope="module")
async def berth(
    pg_server: str, redis_server: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Berth]:
    """A control plane and a tenant on the real PostgreSQL, the run's Redis database through
    a relay, then the server, live."""
    workdir = tmp_path_factory.mktemp("berth")
    admin_url = asyncpg_dsn(pg_server)
    control, tenant = f"berth_live_{uuid.uuid4().hex[:8]}", unique("live")
    redis = urlsplit(redis_server)
    relay = TcpRelay(redis.hostname or "127.0.0.1", redis.port or 6379)
    await relay.start()
    port, metrics_port = free_port(), free_port()
    env = berth_env(
        database_url=_database_url(pg_server, control),
        redis_url=redis_url_with(redis_server, port=relay.port),
        workdir=workdir, port=port, metrics_port=metrics_port,
    )  # fmt: skip
    await _admin_execute(pg_server, f'CREATE DATABASE "{control}"')
    try:
        await _provision(env, admin_url, tenant, workdir)
        server = Spawned([sys.executable, "-m", "service", "serve"], env=env, cwd=workdir,
                         name="serve")  # fmt: skip
        try:
            url = f"http://127.0.0.1:{port}"
            await wait_until_live(url, server, timeout=SETUP_SECONDS)
            yield Berth(server, url, metrics_port, tenant, relay)
        finally:
            server.kill()
            drop = ["-m", "service", "tenants", "delete", tenant, "--drop"]
            await _run([*drop, "--postgres-admin-url", admin_url], env, workdir)
    finally:
        await relay.stop()
        await _admin_execute(pg_server, f'DROP DATABASE IF EXISTS "{control}" WITH (FORCE)')


async def _remove_namespace(admin: AsyncClient, name: str) -> None:
    """The Tenant's finalizer would hold the namespace once the operator is gone: drop it."""
    with contextlib.suppress(ApiError):
        async for item in admin.list(TenantResource, namespace=name):
            await admin.patch(
                TenantResource, item["metadata"]["name"], {"metadata": {"finalizers": None}},
                namespace=name, patch_type=PatchType.MERGE,
            )  # fmt: skip
        await admin.delete(Namespace, name)


async def _drop_tenant_database(admin_url: str, slug: str) -> None:
    names = tenant_names(slug)
    await _admin_execute(admin_url, f'DROP DATABASE IF EXISTS "{names.database}" WITH (FORCE)')
    await _admin_execute(admin_url, f'DROP ROLE IF EXISTS "{names.role}"')


def _start_operator(
    server: ApiServer, namespace: str, metrics_port: int, cwd: Path
) -> tuple[Process, str]:
    """The operator as the cluster admin (RBAC is test_e2e's subject, not this module's),
    its timer every 5 s so timer runs show up too; and its liveness URL."""
    liveness_port = free_port()
    env = operator_env(
        kubeconfig=server.kubeconfig, operator_namespace=namespace, watched=[namespace],
        liveness_port=liveness_port, metrics_port=metrics_port,
    )  # fmt: skip
    env[operator_env_name("timer_seconds")] = "5"
    process = Process(Spawned([sys.executable, "-m", "berth_operator"], env=env, cwd=cwd,
                              name="operator"))  # fmt: skip
    return process, f"http://127.0.0.1:{liveness_port}{LIVENESS_PATH}"


async def _ready(admin: AsyncClient, name: str, namespace: str) -> Any:
    async def probe() -> Any:
        body = dict(await admin.get(TenantResource, name, namespace=namespace))
        return body if is_ready(body) else None

    return await until(probe, f"Tenant {name} Ready", SETUP_SECONDS)


@pytest.fixture(scope="module")
async def operator(
    kube_server: ApiServer,
    kube_admin: AsyncClient,
    pg_server: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Operator]:
    """The operator watching a namespace of its own, provisioning one Tenant on the real
    PostgreSQL (the default server's Secret holds its admin URL)."""
    workdir = tmp_path_factory.mktemp("operator")
    namespace, tenant, metrics_port = unique("live-ops"), unique("ops"), free_port()
    admin_url = asyncpg_dsn(pg_server)
    await kube_admin.create(Namespace(metadata=ObjectMeta(name=namespace)))
    secret = ObjectMeta(name=SERVER_SECRET, namespace=namespace)
    await kube_admin.create(Secret(metadata=secret, data=encode({"url": admin_url})))
    process, liveness_url = _start_operator(kube_server, namespace, metrics_port, workdir)
    try:
        await wait_until_operator_live(liveness_url, process)
        manifest = tenant_manifest(tenant, namespace, {})
        applied = await run_kubectl(kube_server, "apply", "-f", "-", input=manifest, check=False)
        assert applied.returncode == 0, applied.stderr
        await _ready(kube_admin, tenant, namespace)
        yield Operator(process, metrics_port, namespace, tenant)
    finally:
        await process.stop()
        await _remove_namespace(kube_admin, namespace)
        await _drop_tenant_database(admin_url, tenant)


def live_config(workdir: Path, berth: Berth, operator: Operator) -> Path:
    """static.yaml with the two targets on their test ports (their namespace and pod labels
    kept), scraped and evaluated every second, with the repository's rules."""
    targets = {
        "berth": f"127.0.0.1:{berth.metrics_port}",
        "berth-operator": f"127.0.0.1:{operator.metrics_port}",
    }
    config = with_static_targets(load_config(STATIC_CONFIG), targets)
    rules = fast_rule_files(workdir / "rules")
    return write_config(for_test(config, rules), workdir / "prometheus.yml")


@pytest.fixture(scope="module")
async def prometheus(
    berth: Berth, operator: Operator, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Prometheus]:
    """A real Prometheus server scraping the berth and the operator every second."""
    workdir = tmp_path_factory.mktemp("prometheus")
    server = start_prometheus(live_config(workdir, berth, operator), workdir)
    try:
        await wait_ready(server)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
async def berth_client(berth: Berth) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=berth.url, timeout=10) as client:
        yield client
