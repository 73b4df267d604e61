"""The registry Secret's writer against the real API server: a write that lost a race is
retried without losing the other writer's key, concurrent changes are batched, removals
never create the Secret."""

from __future__ import annotations

import asyncio

import pytest
from berth_operator.kube import Kube
from berth_operator.metrics import OperatorMetrics
from berth_operator.registry import RegistryWriter, entry_value
from lightkube.resources.core_v1 import Secret

from service.tenants.registry import entry_file_name
from service.tenants.schemas import TenantEntry
from tests.operator.conftest import REGISTRY_SECRET, Cluster


def entry(slug: str) -> TenantEntry:
    return TenantEntry.model_validate(
        {"slug": slug, "database_url": f"postgresql+asyncpg://u:p@db:5432/tenant_{slug}"}
    )


@pytest.fixture
def writer(cluster: Cluster) -> RegistryWriter:
    return RegistryWriter(
        Kube(cluster.client, instance="test"), cluster.namespace, REGISTRY_SECRET, OperatorMetrics()
    )


class CountingKube(Kube):
    """The real client, counting replaces and able to let a rival write right after a read
    (the interleaving two processes produce by chance, made certain)."""

    def __init__(self, cluster: Cluster) -> None:
        super().__init__(cluster.client, instance="test")
        self.cluster = cluster
        self.reads = 0
        self.rival_writes: dict[int, tuple[str, str]] = {}

    async def read_secret(self, namespace: str, name: str) -> Secret | None:
        secret = await super().read_secret(namespace, name)
        self.reads += 1
        if self.reads in self.rival_writes:
            key, value = self.rival_writes[self.reads]
            data = await self.cluster.secret_data(REGISTRY_SECRET) or {}
            await self.cluster.put_secret(REGISTRY_SECRET, {**data, key: value})
        return secret


async def test_a_write_that_lost_a_race_is_retried_and_keeps_the_rivals_key(
    cluster: Cluster,
) -> None:
    await cluster.put_secret(REGISTRY_SECRET, {"old.json": "{}"})
    kube = CountingKube(cluster)
    metrics = OperatorMetrics()
    writer = RegistryWriter(kube, cluster.namespace, REGISTRY_SECRET, metrics)
    # Read 1 is put()'s look at the current value; read 2 is the one the write builds on.
    kube.rival_writes[2] = ("rival.json", "{}")

    assert await writer.put(entry("ours"))

    data = await cluster.secret_data(REGISTRY_SECRET)
    assert data == {"old.json": "{}", "rival.json": "{}", "ours.json": entry_value(entry("ours"))}
    assert metrics.registry_conflicts._value.get() == 1


async def test_concurrent_changes_are_batched_into_few_writes(cluster: Cluster) -> None:
    kube = CountingKube(cluster)
    writer = RegistryWriter(kube, cluster.namespace, REGISTRY_SECRET, OperatorMetrics())
    slugs = [f"tenant-{index:02d}" for index in range(30)]

    await asyncio.gather(*(writer.put(entry(slug)) for slug in slugs))

    assert sorted(await cluster.secret_data(REGISTRY_SECRET) or {}) == sorted(
        entry_file_name(slug) for slug in slugs
    )
    writes = kube.reads - len(slugs)  # each put() reads once; each write reads once more
    assert 1 <= writes <= 5
    assert writer.metrics.registry_conflicts._value.get() == 0


async def test_putting_the_same_entry_again_writes_nothing(
    cluster: Cluster, writer: RegistryWriter
) -> None:
    assert await writer.put(entry("same"))
    version = await cluster.resource_version(REGISTRY_SECRET)

    assert not await writer.put(entry("same"))

    assert await cluster.resource_version(REGISTRY_SECRET) == version


async def test_removing_a_key_keeps_the_others_and_never_creates_the_secret(
    cluster: Cluster, writer: RegistryWriter
) -> None:
    await writer.remove("nobody")
    assert await cluster.secret_data(REGISTRY_SECRET) is None

    await writer.put(entry("kept"))
    await writer.put(entry("gone"))
    await writer.remove("gone")

    assert list(await cluster.secret_data(REGISTRY_SECRET) or {}) == ["kept.json"]
