"""The machinery of the end-to-end test: the real operator process under the RBAC it ships,
the real service process reading the registry Secret as a mounted volume, and a scram-sha-256
PostgreSQL holding the tenant databases, all against the real Kubernetes API server.

`running_stack` starts everything once (for a module) and stops everything it started, in
reverse order, whatever happened: the service and the operator with SIGTERM (then SIGKILL),
the volume's sync task, the namespaces (after stripping finalizers nobody handles any more),
and the PostgreSQL cluster, which takes every tenant database with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import httpx
import yaml
from berth_operator.app import LIVENESS_PATH
from berth_operator.config import POD_NAMESPACE_ENV, operator_env_name
from berth_operator.kube import TenantResource, decode, encode, get_or_none
from berth_operator.render import credentials_secret_name
from berth_operator.resource import API_VERSION, KIND, ConditionType, Phase
from lightkube import ApiError, AsyncClient
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Event, Namespace, Secret
from lightkube.types import PatchType

from service.core.http import API_PREFIX
from service.db import migrate
from service.identity.cli import PASSWORD_ENV
from service.tenants.postgres import tenant_names
from service.tenants.service import TENANT_HEADER
from tests.kube import ApiServer, SecretVolume, kubectl, service_account_kubeconfig
from tests.operator.conftest import REGISTRY_SECRET
from tests.pg_cluster import ScramCluster, scram_cluster
from tests.support import TEST_PASSWORD, Spawned, free_port, process_env, wait_until_live

T = TypeVar("T")

SERVICE_ACCOUNT = "berth-operator"
SERVER_SECRET = "postgres-admin"
PLATFORM_ADMIN_EMAIL = "platform@example.com"
STOP_SECONDS = 20.0
START_SECONDS = 60.0
# An authorisation refusal anywhere in a log line: the status code or the reason.
FORBIDDEN = re.compile(r"(?<![\w.])403(?![\w.])|forbidden", re.IGNORECASE)
# A namespace being deleted refuses new objects with a 403 that is not about RBAC.
TERMINATING = "because it is being terminated"


def unique(prefix: str) -> str:
    """Names become cluster-wide role names and namespaces: never reuse one."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def until(probe: Callable[[], Awaitable[T | None]], what: str, timeout: float = 30.0) -> T:
    """Poll `probe` until it returns something other than None (or False); fail after
    `timeout` seconds saying what was awaited and what the last probe returned."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        last = await probe()
        if last is not None and last is not False:
            return last
        if loop.time() > deadline:
            raise AssertionError(f"not within {timeout:.0f} s: {what} (last: {last!r})")
        await asyncio.sleep(0.1)


async def run_kubectl(
    server: ApiServer, *args: str, input: str | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """kubectl as the cluster admin, off the event loop (the volume keeps syncing)."""
    return await asyncio.to_thread(kubectl, server, *args, input=input, check=check)


def tenant_manifest(name: str, namespace: str, spec: Mapping[str, Any]) -> str:
    return yaml.safe_dump(
        {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "metadata": {"name": name, "namespace": namespace},
            "spec": dict(spec),
        }
    )


def is_ready(body: Mapping[str, Any]) -> bool:
    """Ready for the generation the API server has now, the Ready condition True."""
    status = body.get("status") or {}
    conditions = {c.get("type"): c.get("status") for c in status.get("conditions") or []}
    return (
        status.get("phase") == Phase.READY
        and conditions.get(ConditionType.READY) == "True"
        and status.get("observedGeneration") == body["metadata"]["generation"]
    )


@dataclass
class Process:
    """A process of ours: its output files, and a stop that always ends it."""

    spawned: Spawned
    exit_code: int | None = None

    def output(self) -> str:
        return self.spawned.stdout() + self.spawned.stderr()

    def log_events(self) -> list[dict[str, Any]]:
        """The JSON lines of stdout (anything else there is kept out, not parsed)."""
        events = []
        for line in self.spawned.stdout().splitlines():
            with contextlib.suppress(ValueError):
                parsed = json.loads(line)
                if isinstance(parsed, dict):
                    events.append(parsed)
        return events

    async def stop(self) -> None:
        """SIGTERM, as the kubelet does; SIGKILL the group if it is not gone in time."""
        if self.spawned.running():
            self.spawned.signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                await asyncio.to_thread(self.spawned.process.wait, STOP_SECONDS)
        self.exit_code = self.spawned.process.poll()
        self.spawned.kill()  # the group: whatever it started goes too


@dataclass
class ServiceApi:
    """The service's HTTP API, as a client calls it."""

    http: httpx.AsyncClient

    async def login(self, email: str, password: str, tenant: str | None = None) -> str:
        body = {"email": email, "password": password, "tenant": tenant}
        response = await self.http.post(f"{API_PREFIX}/auth/login", json=body)
        assert response.status_code == 200, response.text
        token: str = response.json()["access_token"]
        return token

    @staticmethod
    def _headers(token: str, tenant: str | None) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {token}"}
        if tenant is not None:
            headers[TENANT_HEADER] = tenant
        return headers

    async def create_article(
        self, token: str, title: str, *, tenant: str | None = None
    ) -> httpx.Response:
        return await self.http.post(
            f"{API_PREFIX}/articles", json={"title": title}, headers=self._headers(token, tenant)
        )

    async def article(self, token: str, slug: str, *, tenant: str | None = None) -> httpx.Response:
        return await self.http.get(
            f"{API_PREFIX}/articles/{slug}", headers=self._headers(token, tenant)
        )

    async def articles(self, token: str, *, tenant: str | None = None) -> httpx.Response:
        return await self.http.get(f"{API_PREFIX}/articles", headers=self._headers(token, tenant))


@dataclass
class Stack:
    """One operator, one service, one PostgreSQL, on the session's API server."""

    server: ApiServer
    admin: AsyncClient
    postgres: ScramCluster
    workdir: Path
    operator_namespace: str
    namespace: str  # watched; its registry is what the service reads
    doomed_namespace: str  # watched too; a test deletes it
    operator: Process
    liveness_url: str
    metrics_url: str
    service: Process
    service_url: str
    service_env: dict[str, str]
    api: ServiceApi
    volume: SecretVolume
    platform_token: str
    # Every credential the run handed out or read back: none may show up in a log or Event.
    secrets: set[str] = field(default_factory=set)

    # -- Kubernetes -----------------------------------------------------------------------

    async def apply(
        self, name: str, *args: str, namespace: str | None = None, **spec: Any
    ) -> subprocess.CompletedProcess[str]:
        """`kubectl apply` a Tenant (refusals are returned, not raised)."""
        manifest = tenant_manifest(name, namespace or self.namespace, spec)
        return await run_kubectl(
            self.server, "apply", *args, "-f", "-", input=manifest, check=False
        )

    async def tenant(self, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        found = await get_or_none(
            self.admin.get(TenantResource, name, namespace=namespace or self.namespace)
        )
        return None if found is None else dict(found)

    async def ready(self, name: str, namespace: str | None = None, timeout: float = 60) -> Any:
        """Wait until the operator reports the Tenant Ready for its current generation."""

        async def probe() -> dict[str, Any] | None:
            body = await self.tenant(name, namespace)
            return body if body is not None and is_ready(body) else None

        return await until(probe, f"Tenant {name} Ready", timeout)

    async def secret_data(self, name: str, namespace: str | None = None) -> dict[str, str] | None:
        secret = await get_or_none(
            self.admin.get(Secret, name, namespace=namespace or self.namespace)
        )
        return None if secret is None else decode(secret.data)

    async def credentials(self, slug: str, namespace: str | None = None) -> dict[str, str] | None:
        """The tenant's credentials Secret; its password joins the ones that must not leak."""
        data = await self.secret_data(credentials_secret_name(slug), namespace)
        if data and data.get("password"):
            self.secrets.add(data["password"])
        return data

    async def events(self, namespace: str | None = None) -> list[Event]:
        return [e async for e in self.admin.list(Event, namespace=namespace or self.namespace)]

    async def reasons(self, name: str, namespace: str | None = None) -> set[str]:
        """Reasons of the Events on Tenant `name`."""
        return {
            e.reason or ""
            for e in await self.events(namespace)
            if e.involvedObject.kind == KIND and e.involvedObject.name == name
        }

    # -- the tenant databases -------------------------------------------------------------

    async def connect_as_tenant(self, slug: str, password: str) -> asyncpg.Connection:
        names = tenant_names(slug)
        url = self.postgres.url(names.role, password, names.database)
        return await asyncpg.connect(url, timeout=5)

    async def catalog(self, slug: str) -> tuple[bool, bool]:
        """(role exists, database exists) on the tenants' PostgreSQL."""
        names = tenant_names(slug)
        connection = await asyncpg.connect(self.postgres.admin_url, timeout=5)
        try:
            role = await connection.fetchval(
                "SELECT count(*) FROM pg_roles WHERE rolname = $1", names.role
            )
            database = await connection.fetchval(
                "SELECT count(*) FROM pg_database WHERE datname = $1", names.database
            )
        finally:
            await connection.close()
        return bool(role), bool(database)

    async def disconnect_tenant(self, slug: str) -> int:
        """End every session of the tenant's role: its next query needs a new login."""
        connection = await asyncpg.connect(self.postgres.admin_url, timeout=5)
        try:
            ended: int = await connection.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE usename = $1",
                tenant_names(slug).role,
            )
        finally:
            await connection.close()
        return ended

    # -- the service ----------------------------------------------------------------------

    async def create_owner(self, slug: str, email: str) -> subprocess.CompletedProcess[str]:
        """`python -m service users create-admin --tenant`: an owner of the tenant, as an
        operator of the platform creates one (the CLI checks the mounted registry)."""
        env = {**self.service_env, PASSWORD_ENV: TEST_PASSWORD}
        command = [sys.executable, "-m", "service", "users", "create-admin"]
        return await asyncio.to_thread(
            subprocess.run,
            [*command, "--email", email, "--tenant", slug],
            env=env,
            cwd=self.workdir,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    async def served(self, slug: str, title: str, timeout: float = 30) -> str:
        """Wait until the platform admin can create an article in the tenant; its slug."""

        async def probe() -> str | None:
            response = await self.api.create_article(self.platform_token, title, tenant=slug)
            return str(response.json()["slug"]) if response.status_code == 201 else None

        return await until(probe, f"the service serving {slug}", timeout)

    async def answers(self, slug: str, article: str, status: int, timeout: float = 30) -> Any:
        """Wait until reading `article` of tenant `slug` answers `status`; the JSON body."""

        async def probe() -> Any:
            response = await self.api.article(self.platform_token, article, tenant=slug)
            return response.json() if response.status_code == status else None

        return await until(probe, f"GET article {article} of {slug} answering {status}", timeout)

    # -- what must never happen -----------------------------------------------------------

    def forbidden_lines(self) -> list[str]:
        """Operator log lines about a refused request (403), but for a terminating namespace
        refusing new Events, which is no RBAC matter."""
        return [
            line
            for line in self.operator.output().splitlines()
            if FORBIDDEN.search(line) and TERMINATING not in line
        ]

    async def leaks(self) -> list[str]:
        """Where a known credential shows: operator and service output, Events."""
        places = {
            "operator output": self.operator.output(),
            "service output": self.service.output(),
        }
        for namespace in (self.namespace, self.doomed_namespace, self.operator_namespace):
            messages = [f"{e.reason}: {e.message}" for e in await self.events(namespace)]
            places[f"Events of {namespace}"] = "\n".join(messages)
        return [
            f"a credential ({len(secret)} chars) in {place}"
            for secret in self.secrets
            for place, text in places.items()
            if secret in text
        ]

    async def assert_clean(self) -> None:
        """No RBAC refusal in the operator's log, no credential in any log or Event."""
        assert self.operator.spawned.running(), self.operator.spawned.describe()
        assert self.forbidden_lines() == [], self.forbidden_lines()[:5]
        assert await self.leaks() == []


def operator_env(
    *,
    kubeconfig: Path,
    operator_namespace: str,
    watched: list[str],
    liveness_port: int,
    metrics_port: int,
) -> dict[str, str]:
    return process_env(
        KUBECONFIG=str(kubeconfig),
        **{
            POD_NAMESPACE_ENV: operator_namespace,
            operator_env_name("namespaces"): ",".join(watched),
            operator_env_name("default_server", "name"): SERVER_SECRET,
            operator_env_name("log", "log_format"): "json",
            operator_env_name("liveness_port"): str(liveness_port),
            operator_env_name("metrics_port"): str(metrics_port),
            operator_env_name("bind_host"): "127.0.0.1",
            operator_env_name("retry_first_seconds"): "1",
        },
    )


def service_env(
    *, database_url: str, port: int, registry_dir: Path, workdir: Path
) -> dict[str, str]:
    return process_env(
        BERTH_ENVIRONMENT="test",
        BERTH_DATABASE__URL=database_url,
        BERTH_HTTP__PORT=str(port),
        BERTH_OBSERVABILITY__LOG_FORMAT="json",
        BERTH_TENANTS__REGISTRY_DIR=str(registry_dir),
        BERTH_TENANTS__REGISTRY_POLL_SECONDS="0.2",
        BERTH_TENANTS__SQLITE_DIR=str(workdir / "tenant-dbs"),
        # Fast hashing and no rate limits: logins are a means here, not the subject.
        BERTH_AUTH__ARGON2_TIME_COST="1",
        BERTH_AUTH__ARGON2_MEMORY_KIB="8",
        BERTH_AUTH__ARGON2_PARALLELISM="1",
        BERTH_RATE_LIMITS__ENABLED="false",
    )


async def wait_until_operator_live(url: str, operator: Process) -> None:
    async def probe() -> bool:
        assert operator.spawned.running(), operator.spawned.describe()
        async with httpx.AsyncClient(timeout=1) as client:
            try:
                return (await client.get(url)).status_code == 200
            except httpx.TransportError:
                return False

    await until(probe, f"operator liveness at {url}", START_SECONDS)


async def _create_namespace(admin: AsyncClient, name: str) -> None:
    await admin.create(Namespace(metadata=ObjectMeta(name=name)))


async def _remove_namespace(admin: AsyncClient, name: str) -> None:
    """Tenants' finalizers would hold the namespace once the operator is gone: drop them."""
    try:
        async for item in admin.list(TenantResource, namespace=name):
            await admin.patch(
                TenantResource,
                item["metadata"]["name"],
                {"metadata": {"finalizers": None}},
                namespace=name,
                patch_type=PatchType.MERGE,
            )
        await admin.delete(Namespace, name)
    except ApiError as exc:
        if exc.status.code != 404:
            raise


async def _platform_admin(stack_env: dict[str, str], workdir: Path) -> None:
    env = {**stack_env, PASSWORD_ENV: TEST_PASSWORD}
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "service", "users", "create-admin", "--email", PLATFORM_ADMIN_EMAIL],
        env=env,
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr


@contextlib.asynccontextmanager
async def running_stack(
    server: ApiServer, admin: AsyncClient, workdir: Path
) -> AsyncIterator[Stack]:
    """Everything up and live; everything stopped and removed afterwards."""
    operator_namespace, namespace, doomed = unique("berth-system"), unique("e2e"), unique("doomed")
    async with contextlib.AsyncExitStack() as stack:
        postgres = stack.enter_context(scram_cluster(workdir / "postgres"))
        for name in (operator_namespace, namespace, doomed):
            await _create_namespace(admin, name)
            stack.push_async_callback(_remove_namespace, admin, name)
        await admin.create(
            Secret(
                metadata=ObjectMeta(name=SERVER_SECRET, namespace=operator_namespace),
                data=encode({"url": postgres.admin_url}),
            )
        )

        # Exactly the RBAC the operator ships, applied as the admin; the operator logs in as
        # the ServiceAccount it is bound to, so RBAC decides every request it makes.
        rbac = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "berth_operator", "rbac", "--namespace", operator_namespace,
             "--service-account", SERVICE_ACCOUNT, "--watch", f"{namespace},{doomed}"],
            env=process_env(),
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )  # fmt: skip
        await run_kubectl(server, "apply", "-f", "-", input=rbac.stdout)
        kubeconfig = service_account_kubeconfig(
            server, operator_namespace, SERVICE_ACCOUNT, workdir / "operator.kubeconfig"
        )
        token = json.loads(kubeconfig.read_text())["users"][0]["user"]["token"]

        liveness_port, metrics_port = free_port(), free_port()
        operator = Process(
            Spawned(
                [sys.executable, "-m", "berth_operator"],
                env=operator_env(
                    kubeconfig=kubeconfig,
                    operator_namespace=operator_namespace,
                    watched=[namespace, doomed],
                    liveness_port=liveness_port,
                    metrics_port=metrics_port,
                ),
                cwd=workdir,
                name="operator",
            )
        )
        stack.push_async_callback(operator.stop)
        liveness_url = f"http://127.0.0.1:{liveness_port}{LIVENESS_PATH}"

        # The kubelet's part: the registry Secret of `namespace`, mounted as a directory.
        registry_dir = workdir / "registry"
        volume = SecretVolume(server.kubeconfig, namespace, REGISTRY_SECRET, registry_dir)
        await stack.enter_async_context(volume.running(interval=0.2))

        database_url = f"sqlite+aiosqlite:///{workdir / 'control-plane.db'}"
        await migrate.upgrade(database_url)
        port = free_port()
        env = service_env(
            database_url=database_url, port=port, registry_dir=registry_dir, workdir=workdir
        )
        await _platform_admin(env, workdir)
        service = Process(
            Spawned([sys.executable, "-m", "service", "serve"], env=env, cwd=workdir, name="serve")
        )
        stack.push_async_callback(service.stop)
        service_url = f"http://127.0.0.1:{port}"
        http = await stack.enter_async_context(httpx.AsyncClient(base_url=service_url, timeout=10))
        api = ServiceApi(http)

        await wait_until_live(service_url, service.spawned, timeout=START_SECONDS)
        await wait_until_operator_live(liveness_url, operator)
        yield Stack(
            server=server,
            admin=admin,
            postgres=postgres,
            workdir=workdir,
            operator_namespace=operator_namespace,
            namespace=namespace,
            doomed_namespace=doomed,
            operator=operator,
            liveness_url=liveness_url,
            metrics_url=f"http://127.0.0.1:{metrics_port}/metrics",
            service=service,
            service_url=service_url,
            service_env=env,
            api=api,
            volume=volume,
            platform_token=await api.login(PLATFORM_ADMIN_EMAIL, TEST_PASSWORD),
            secrets={postgres.superuser_password, token},
        )


__all__ = ["Stack", "running_stack", "unique", "until"]
