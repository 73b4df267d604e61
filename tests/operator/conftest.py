"""Fixtures for the operator: a namespace of its own on the session's real Kubernetes API
server (tests/conftest.py: `kube_server`, CRD installed), the real PostgreSQL, the session's
MongoDB-protocol server with authentication on (`mongo_admin`), and a reconciler wired as the
operator wires it, acting as the cluster admin (the end-to-end test binds the chart's RBAC)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import pytest
from berth_operator.config import OperatorSettings, ServerSecret
from berth_operator.kube import Kube, TenantResource, decode, encode, retry_rule_faults
from berth_operator.metrics import OperatorMetrics
from berth_operator.reconciler import Reconciler, StepHook
from berth_operator.registry import Registries
from berth_operator.resource import API_VERSION, KIND, Tenant
from lightkube import ApiError, AsyncClient
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Event, Namespace, Secret
from lightkube.types import PatchType
from pymongo import MongoClient

from service.tenants.postgres import tenant_names
from tests.mongo_server import MongoServer
from tests.support import PG_ADMIN_URL, asyncpg_dsn

SERVER_SECRET = "pg"
MONGO_SECRET = "mongo"
REGISTRY_SECRET = "berth-tenant-registry"


async def drop_tenant_objects(slug: str) -> None:
    """Whatever a test left of a tenant on the real PostgreSQL, whoever's mark it carries."""
    names = tenant_names(slug)
    connection = await asyncpg.connect(asyncpg_dsn(PG_ADMIN_URL), timeout=5)
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{names.database}" WITH (FORCE)')
        await connection.execute(f'DROP ROLE IF EXISTS "{names.role}"')
    finally:
        await connection.close()


def unique_name(prefix: str) -> str:
    """Tenant slugs become cluster-wide role names: never reuse one across runs."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@dataclass
class Cluster:
    """One test's namespace on the real API server, and what the test made there."""

    client: AsyncClient
    namespace: str
    slugs: list[str] = field(default_factory=list)

    async def put_secret(
        self, name: str, data: dict[str, str], namespace: str | None = None
    ) -> None:
        metadata = ObjectMeta(name=name, namespace=namespace or self.namespace)
        secret = Secret(metadata=metadata, data=encode(data))
        try:
            await self.client.create(secret)
        except ApiError as exc:
            if exc.status.code != 409:
                raise
            await self.client.replace(secret)

    async def secret_data(self, name: str) -> dict[str, str] | None:
        try:
            secret = await self.client.get(Secret, name, namespace=self.namespace)
        except ApiError as exc:
            if exc.status.code == 404:
                return None
            raise
        return decode(secret.data)

    async def resource_version(self, name: str) -> str | None:
        secret = await self.client.get(Secret, name, namespace=self.namespace)
        return secret.metadata.resourceVersion if secret.metadata else None

    async def create_tenant(self, name: str | None = None, **spec: Any) -> Tenant:
        slug = name or unique_name("t")
        self.slugs.append(slug)
        body = {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "metadata": {"name": slug, "namespace": self.namespace},
            "spec": spec,
        }
        created = await retry_rule_faults(
            lambda: self.client.create(TenantResource(body))  # type: ignore[arg-type]
        )
        return Tenant.from_body(dict(created))

    async def tenant(self, name: str) -> Tenant:
        """The Tenant as the API server has it now (status included)."""
        body = await self.client.get(TenantResource, name, namespace=self.namespace)
        return Tenant.from_body(dict(body))

    async def patch_tenant(self, name: str, patch: dict[str, Any]) -> Tenant:
        await retry_rule_faults(
            lambda: self.client.patch(
                TenantResource, name, patch, namespace=self.namespace, patch_type=PatchType.MERGE
            )
        )
        return await self.tenant(name)

    async def events(self, name: str) -> list[tuple[str, str, str]]:
        """(type, reason, message) of the Events on a Tenant, oldest first."""
        found = [
            event
            async for event in self.client.list(Event, namespace=self.namespace)
            if event.involvedObject.name == name and event.involvedObject.kind == KIND
        ]
        found.sort(key=lambda event: event.metadata.creationTimestamp if event.metadata else 0)
        return [(e.type or "", e.reason or "", e.message or "") for e in found]


@pytest.fixture
async def cluster(kube_admin: AsyncClient, pg_server: str) -> AsyncIterator[Cluster]:
    """A fresh namespace holding the server Secret (`pg`: the real PostgreSQL's admin URL);
    deleted at the end, with every tenant database the test made."""
    namespace = unique_name("op")
    await kube_admin.create(Namespace(metadata=ObjectMeta(name=namespace)))
    made = Cluster(kube_admin, namespace)
    await made.put_secret(SERVER_SECRET, {"url": pg_server})
    yield made
    for slug in made.slugs:
        await drop_tenant_objects(slug)
    # Finalizers of Tenants nobody handles any more would hold the namespace: drop them.
    async for item in kube_admin.list(TenantResource, namespace=namespace):
        name = item["metadata"]["name"]
        await kube_admin.patch(
            TenantResource,
            name,
            {"metadata": {"finalizers": None}},
            namespace=namespace,
            patch_type=PatchType.MERGE,
        )
    await kube_admin.delete(Namespace, namespace)


ReconcilerFactory = Callable[..., Reconciler]


@pytest.fixture
def make_reconciler(cluster: Cluster) -> ReconcilerFactory:
    """A Reconciler as the operator builds it, for `cluster`'s namespace (default server
    `pg` there); keyword arguments replace settings."""

    def factory(*, after_step: StepHook | None = None, **overrides: Any) -> Reconciler:
        values: dict[str, Any] = {
            "namespaces": [cluster.namespace],
            "registry_secret": REGISTRY_SECRET,
            "default_server": ServerSecret(name=SERVER_SECRET, namespace=cluster.namespace),
            "default_mongo_server": ServerSecret(name=MONGO_SECRET, namespace=cluster.namespace),
            "retry_first_seconds": 1,
        }
        settings = OperatorSettings(**(values | overrides))
        metrics = OperatorMetrics()
        kube = Kube(cluster.client, instance="test")
        return Reconciler(
            kube=kube,
            registries=Registries(kube, settings.registry_secret, metrics),
            settings=settings,
            metrics=metrics,
            after_step=after_step,
        )

    return factory


@pytest.fixture
def reconciler(make_reconciler: ReconcilerFactory) -> Reconciler:
    return make_reconciler()


@pytest.fixture
async def mongo_admin(
    cluster: Cluster, mongo_auth_server: MongoServer
) -> AsyncIterator[MongoServer]:
    """The default MongoDB server of `cluster`'s reconcilers: its Secret `mongo` holds the
    auth server's root URL. Every database the test made is dropped after, with its users."""
    await cluster.put_secret(MONGO_SECRET, {"url": mongo_auth_server.url})
    admin: MongoClient[dict[str, Any]]
    with MongoClient(mongo_auth_server.url) as admin:
        before = set(admin.list_database_names())
        yield mongo_auth_server
        for name in set(admin.list_database_names()) - before:
            admin[name].command("dropAllUsersFromDatabase")
            admin.drop_database(name)


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 60.0) -> None:
    """Wait for a condition the cluster reaches on its own (garbage collection, a watch)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not reached within {timeout:.0f} s")
        await asyncio.sleep(0.2)


__all__ = ["Cluster", "ReconcilerFactory", "drop_tenant_objects", "eventually"]
