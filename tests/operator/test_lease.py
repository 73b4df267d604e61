"""The single-instance Lease on the real API server: a second operator waits and handles
nothing, takes over only from a holder that released it or stopped renewing, and a holder
that finds it taken stops."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from berth_operator.config import LeaseSettings
from berth_operator.lease import LeaseGuard, LeaseLost
from berth_operator.metrics import OperatorMetrics
from lightkube import AsyncClient, KubeConfig
from lightkube.resources.coordination_v1 import Lease

from tests.kube import ApiServer, service_account_kubeconfig
from tests.operator.conftest import Cluster


def guard(cluster: Cluster, identity: str, **settings: float) -> LeaseGuard:
    values = {"duration_seconds": 3.0, "renew_seconds": 0.2} | settings
    return LeaseGuard(
        cluster.client,
        cluster.namespace,
        identity,
        LeaseSettings(name="berth-operator", **values),
        OperatorMetrics(),
    )


async def holder(cluster: Cluster) -> str | None:
    lease = await cluster.client.get(Lease, "berth-operator", namespace=cluster.namespace)
    return lease.spec.holderIdentity if lease.spec else None


async def test_a_second_instance_is_refused_and_says_so_loudly(
    cluster: Cluster, capsys: pytest.CaptureFixture[str]
) -> None:
    first, second = guard(cluster, "first"), guard(cluster, "second")

    assert await first.try_acquire()
    assert not await second.try_acquire()

    assert await holder(cluster) == "first"
    logged = capsys.readouterr().out
    assert "operator_lease_held_elsewhere" in logged
    assert "first" in logged


async def test_a_released_lease_is_taken_over_at_once(cluster: Cluster) -> None:
    first, second = guard(cluster, "first", duration_seconds=60), guard(cluster, "second")
    assert await first.try_acquire()

    await first.release()

    assert await second.try_acquire()
    assert await holder(cluster) == "second"


async def test_a_holder_that_stopped_renewing_is_replaced_after_the_duration(
    cluster: Cluster,
) -> None:
    first, second = guard(cluster, "first", duration_seconds=2), guard(cluster, "second")
    assert await first.try_acquire()
    stop = asyncio.Event()

    waited = asyncio.get_running_loop().time()
    assert await asyncio.wait_for(second.acquire(stop), timeout=10)
    waited = asyncio.get_running_loop().time() - waited

    assert waited >= 1.0  # it waited for the lease to run out
    assert await holder(cluster) == "second"


async def test_a_holder_that_finds_the_lease_taken_stops(cluster: Cluster) -> None:
    first = guard(cluster, "first")
    assert await first.try_acquire()
    lease = await cluster.client.get(Lease, "berth-operator", namespace=cluster.namespace)
    assert lease.spec is not None
    lease.spec.holderIdentity = "usurper"
    await cluster.client.replace(lease)
    stop = asyncio.Event()

    with pytest.raises(LeaseLost):
        await asyncio.wait_for(first.keep(stop), timeout=10)

    assert stop.is_set()
    assert first.metrics.lease_held._value.get() == 0


async def test_a_waiting_instance_gives_up_when_asked_to_stop(cluster: Cluster) -> None:
    first, second = guard(cluster, "first", duration_seconds=60), guard(cluster, "second")
    assert await first.try_acquire()
    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(0.5, stop.set)

    assert not await asyncio.wait_for(second.acquire(stop), timeout=10)
    assert await holder(cluster) == "first"


async def test_a_holder_whose_renewal_is_forbidden_stops_at_once(
    cluster: Cluster, kube_server: ApiServer, tmp_path: Path
) -> None:
    """A 403 (a binding removed, a token revoked) will not pass: no waiting out the duration."""
    first = guard(cluster, "first", duration_seconds=60)
    assert await first.try_acquire()
    kubeconfig = service_account_kubeconfig(
        kube_server, cluster.namespace, "nobody", tmp_path / "nobody.kubeconfig"
    )
    first.client = AsyncClient(config=KubeConfig.from_file(kubeconfig), trust_env=False)
    stop = asyncio.Event()

    try:
        with pytest.raises(LeaseLost, match="cannot be renewed"):
            await asyncio.wait_for(first.keep(stop), timeout=10)
    finally:
        await first.client.close()

    assert stop.is_set()
    assert first.metrics.lease_held._value.get() == 0
