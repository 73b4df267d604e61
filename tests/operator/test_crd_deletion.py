"""Deleting the CRD does not wedge on our finalizers: kopf stops serving a terminating CRD's
objects, so the operator's own watcher runs each Tenant's cleanup and releases it. Against
the real API server; the CRD is installed again afterwards for the tests that follow (an
operator started while it was absent asks for a restart then: kopf looks for it only at start)."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest
from berth_operator.crd import render_yaml
from berth_operator.crd_deletion import CrdDeletionWatcher
from berth_operator.kube import TenantResource
from berth_operator.metrics import Handler
from berth_operator.resource import CRD_NAME, FINALIZER
from lightkube import ApiError
from lightkube.resources.apiextensions_v1 import CustomResourceDefinition
from lightkube.types import PatchType

from service.tenants.postgres import tenant_names
from tests.kube import ApiServer, kubectl
from tests.operator.conftest import Cluster, ReconcilerFactory, eventually
from tests.support import PG_ADMIN_URL, asyncpg_dsn

pytestmark = pytest.mark.postgres


async def crd_gone(cluster: Cluster) -> bool:
    try:
        await cluster.client.get(CustomResourceDefinition, CRD_NAME)
    except ApiError as exc:
        return exc.status.code == 404
    return False


async def test_deleting_the_crd_runs_each_cleanup_and_a_reinstall_restarts_an_operator_without_it(
    cluster: Cluster, make_reconciler: ReconcilerFactory, kube_server: ApiServer
) -> None:
    reconciler = make_reconciler()
    dropped = await cluster.create_tenant(deletionPolicy="Delete")
    kept = await cluster.create_tenant()
    for tenant in (dropped, kept):
        await reconciler.reconcile(tenant, Handler.CREATE)
        await cluster.client.patch(  # as kopf does when it first sees the Tenant
            TenantResource,
            tenant.ref.name,
            {"metadata": {"finalizers": [FINALIZER]}},
            namespace=cluster.namespace,
            patch_type=PatchType.MERGE,
        )
    watcher = CrdDeletionWatcher(cluster.client, reconciler, [cluster.namespace])
    assert not await watcher.crd_terminating()

    try:
        kubectl(kube_server, "delete", "crd", CRD_NAME, "--wait=false")
        assert await watcher.crd_terminating()
        released = []

        async def all_released() -> bool:
            # The API server marks the Tenants deleted a moment after the CRD: look again.
            released.append(await watcher.finish())
            return sum(released) == 2

        await eventually(all_released, timeout=30)
        await eventually(lambda: crd_gone(cluster), timeout=60)
        # An operator started without the CRD: kopf would never serve it, so it must restart.
        started_without = CrdDeletionWatcher(cluster.client, reconciler, [], interval=0.2)
        stop = asyncio.Event()
        watching = asyncio.create_task(started_without.run(stop))
        await asyncio.sleep(0.5)  # its first look (a GET on loopback) saw no CRD
    finally:
        await asyncio.to_thread(kubectl, kube_server, "apply", "-f", "-", input=render_yaml())
        kubectl(
            kube_server, "wait", "--for=condition=Established", f"crd/{CRD_NAME}", "--timeout=60s"
        )

    await asyncio.wait_for(watching, timeout=30)
    assert started_without.restart_requested
    assert stop.is_set()

    admin = await asyncpg.connect(asyncpg_dsn(PG_ADMIN_URL), timeout=5)
    try:
        databases = {row["datname"] for row in await admin.fetch("SELECT datname FROM pg_database")}
    finally:
        await admin.close()
    assert tenant_names(dropped.ref.slug).database not in databases
    assert tenant_names(kept.ref.slug).database in databases  # Retain, as the policy says
    assert await cluster.secret_data("berth-tenant-registry") == {}
