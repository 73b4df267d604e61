"""The operator keeps its rights in a namespace being deleted until its Tenants are done.

On the real API server with the RBAC the operator ships: the guard runs as the operator's
ServiceAccount, so every read and patch it makes is one RBAC allows it (or refuses, 403).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from berth_operator.bindings import BindingGuard
from berth_operator.kube import TenantResource, get_or_none, retry_rule_faults
from berth_operator.rbac import TENANTS_BINDING, manifests
from berth_operator.resource import API_VERSION, FINALIZER, KIND, holds_finalizer
from lightkube import ApiError, AsyncClient, KubeConfig
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Namespace
from lightkube.resources.rbac_authorization_v1 import RoleBinding
from lightkube.types import PatchType

from tests.kube import ApiServer, kubectl, service_account_kubeconfig
from tests.operator.conftest import eventually, unique_name

SERVICE_ACCOUNT = "berth-operator"


@dataclass
class Guarded:
    """A watched namespace, the operator's RBAC for it, and its guard (as the operator)."""

    admin: AsyncClient
    operator: AsyncClient  # the ServiceAccount's client: RBAC decides what it may do
    guard: BindingGuard
    namespace: str

    async def create_waiting_tenant(self) -> str:
        """A Tenant holding the operator's finalizer, as kopf leaves one it handles."""
        name = unique_name("t")
        body = {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "metadata": {"name": name, "namespace": self.namespace, "finalizers": [FINALIZER]},
            "spec": {},
        }
        await retry_rule_faults(
            lambda: self.admin.create(TenantResource(body))  # type: ignore[arg-type]
        )
        return name

    async def finish_tenant(self, name: str, client: AsyncClient | None = None) -> None:
        """Take the finalizer off, as the operator does after its cleanup."""
        await retry_rule_faults(
            lambda: (client or self.admin).patch(
                TenantResource,
                name,
                {"metadata": {"finalizers": None}},
                namespace=self.namespace,
                patch_type=PatchType.MERGE,
            )
        )

    async def binding(self) -> dict[str, Any] | None:
        found = await get_or_none(
            self.admin.get(RoleBinding, TENANTS_BINDING, namespace=self.namespace)
        )
        return None if found is None else found.to_dict()

    async def is_held(self) -> bool:
        return holds_finalizer(await self.binding() or {})

    async def namespace_gone(self) -> bool:
        return await get_or_none(self.admin.get(Namespace, self.namespace)) is None


@pytest.fixture
async def guarded(
    kube_server: ApiServer, kube_admin: AsyncClient, tmp_path: Path
) -> AsyncIterator[Guarded]:
    operator_namespace, namespace = unique_name("opns"), unique_name("watched")
    for name in (operator_namespace, namespace):
        await kube_admin.create(Namespace(metadata=ObjectMeta(name=name)))
    rbac = manifests(operator_namespace, SERVICE_ACCOUNT, [namespace])
    kubectl(kube_server, "apply", "-f", "-", input=yaml.safe_dump_all(rbac))
    kubeconfig = service_account_kubeconfig(
        kube_server, operator_namespace, SERVICE_ACCOUNT, tmp_path / "operator.kubeconfig"
    )
    operator = AsyncClient(config=KubeConfig.from_file(kubeconfig), trust_env=False)
    yield Guarded(kube_admin, operator, BindingGuard(operator, [namespace]), namespace)
    await operator.close()
    await _strip_finalizers(kube_admin, namespace)
    kubectl(kube_server, "delete", "--ignore-not-found", "--wait=false", "-f", "-",
            input=yaml.safe_dump_all(rbac))  # fmt: skip
    for name in (operator_namespace, namespace):
        with contextlib.suppress(ApiError):
            await kube_admin.delete(Namespace, name)


async def _strip_finalizers(admin: AsyncClient, namespace: str) -> None:
    """Whatever a test left holding: nothing may keep its namespace from going."""
    unheld = {"metadata": {"finalizers": None}}
    with contextlib.suppress(ApiError):
        await admin.patch(RoleBinding, TENANTS_BINDING, unheld, namespace=namespace,
                          patch_type=PatchType.MERGE)  # fmt: skip
    async for item in admin.list(TenantResource, namespace=namespace):
        await retry_rule_faults(
            lambda name=item["metadata"]["name"]: admin.patch(
                TenantResource, name, unheld, namespace=namespace, patch_type=PatchType.MERGE
            )
        )


async def test_the_binding_is_held_only_while_a_tenant_waits_on_the_operator(
    guarded: Guarded,
) -> None:
    await guarded.guard.look()
    assert not await guarded.is_held()

    tenant = await guarded.create_waiting_tenant()
    await guarded.guard.look()
    assert await guarded.is_held()

    await guarded.finish_tenant(tenant)
    await guarded.guard.look()
    assert not await guarded.is_held()


async def test_a_namespace_being_deleted_keeps_the_operators_rights_until_its_tenants_are_done(
    guarded: Guarded,
) -> None:
    tenant = await guarded.create_waiting_tenant()
    await guarded.guard.look()
    await guarded.admin.delete(Namespace, guarded.namespace)

    async def binding_deleted() -> bool:
        return bool(((await guarded.binding()) or {}).get("metadata", {}).get("deletionTimestamp"))

    await eventually(binding_deleted)
    await guarded.guard.look()
    assert await guarded.is_held()

    # As the operator: its right to finish the Tenant outlived the deletion of the namespace.
    await guarded.finish_tenant(tenant, client=guarded.operator)
    await guarded.guard.look()
    await eventually(guarded.namespace_gone)


async def test_a_binding_deleted_alone_is_let_go_while_tenants_wait(guarded: Guarded) -> None:
    """An uninstall deletes the binding and leaves the namespace: nothing to wait for."""
    await guarded.create_waiting_tenant()
    await guarded.guard.look()
    assert await guarded.is_held()

    await guarded.admin.delete(RoleBinding, TENANTS_BINDING, namespace=guarded.namespace)
    await guarded.guard.look()

    assert await guarded.binding() is None


async def test_a_namespace_where_the_operator_is_not_bound_is_noted_once_and_left_alone(
    guarded: Guarded, capsys: pytest.CaptureFixture[str]
) -> None:
    """Deleted with its binding, or RBAC not applied yet: reading the binding is a 403."""
    guard = BindingGuard(guarded.operator, [unique_name("gone")])

    await guard.look()
    await guard.look()

    logged = capsys.readouterr().out
    assert "binding_guard_failed" not in logged
    assert logged.count("binding_absent") == 1
