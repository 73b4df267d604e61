"""Deleting a watched namespace must not wedge: keep the operator's rights there until its
Tenants are finished.

A namespace's deletion removes everything in it at once, the RoleBinding that lets the
operator patch its Tenants included, while those Tenants wait for the operator to run their
cleanup and take its finalizer off: without the binding it cannot (403), and the namespace
hangs. So while Tenants in a namespace hold the operator's finalizer, its RoleBinding there
holds it too, and it comes off when the namespace is being deleted and no Tenant holds it any
more, or at once when only the binding is deleted (an uninstall, the namespace stays). The
RBAC authorizer honours a binding until it is gone, deletionTimestamp or not.

Watching every namespace, the operator is bound by a ClusterRoleBinding, which no namespace's
deletion touches: nothing to guard then (the app does not start a guard).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from lightkube import ApiError, AsyncClient
from lightkube.resources.core_v1 import Namespace
from lightkube.resources.rbac_authorization_v1 import RoleBinding
from lightkube.types import PatchType

from berth_operator.kube import FORBIDDEN, NOT_FOUND, TenantResource, get_or_none, status_code
from berth_operator.rbac import TENANTS_BINDING
from berth_operator.resource import FINALIZER, holds_finalizer, is_deleting
from service.core.logging import get_logger

log = get_logger(__name__)

LOOK_EVERY_SECONDS = 5.0


@dataclass
class BindingGuard:
    """Puts the operator's finalizer on, and takes it off, its RoleBinding in `namespaces`."""

    client: AsyncClient
    namespaces: list[str]
    interval: float = LOOK_EVERY_SECONDS
    _unbound: set[str] = field(default_factory=set)  # namespaces reported without a binding

    async def run(self, stop: asyncio.Event) -> None:
        """Look now, every `interval` until `stop`, and once more on the way out (an
        uninstall deletes the binding while the operator stops: let it go)."""
        while not stop.is_set():
            await self.look()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.interval)
        await self.look()

    async def look(self) -> None:
        """One pass over the watched namespaces; never raises (the next pass tries again)."""
        for namespace in self.namespaces:
            try:
                await self._look_at(namespace)
            except Exception as exc:
                log.warning("binding_guard_failed", namespace=namespace, error=str(exc))

    async def _look_at(self, namespace: str) -> None:
        binding = await self._binding(namespace)
        if binding is None:
            return  # not installed there (yet): nothing to hold
        is_held = holds_finalizer(binding)
        should_hold = await self._should_hold(namespace, binding)
        if should_hold and not is_held:
            await self._hold(namespace, binding)
        elif is_held and not should_hold:
            await self._release(namespace, binding)

    async def _should_hold(self, namespace: str, binding: Mapping[str, Any]) -> bool:
        tenants_pending = await self._tenants_pending(namespace)
        if not is_deleting(binding):
            return tenants_pending
        # Deleted with its namespace: hold on while Tenants wait. Deleted alone: let it go.
        return tenants_pending and await self._namespace_is_deleting(namespace)

    async def _binding(self, namespace: str) -> dict[str, Any] | None:
        """Our RoleBinding there; None when absent or unreadable: without it we are not
        bound there (a deleted namespace, RBAC not applied yet), so there is nothing to hold."""
        try:
            found = await get_or_none(
                self.client.get(RoleBinding, TENANTS_BINDING, namespace=namespace)
            )
        except ApiError as exc:
            if status_code(exc) != FORBIDDEN:
                raise
            found = None
        if found is None:
            self._report_unbound(namespace)
            return None
        self._unbound.discard(namespace)
        return found.to_dict()

    def _report_unbound(self, namespace: str) -> None:
        if namespace not in self._unbound:  # once, not every look
            self._unbound.add(namespace)
            log.info("binding_absent", namespace=namespace, binding=TENANTS_BINDING)

    async def _tenants_pending(self, namespace: str) -> bool:
        try:
            async for body in self.client.list(TenantResource, namespace=namespace):
                if holds_finalizer(body):
                    return True
        except ApiError as exc:
            if status_code(exc) != NOT_FOUND:  # the CRD is gone: no Tenant waits
                raise
        return False

    async def _namespace_is_deleting(self, namespace: str) -> bool:
        found = await get_or_none(self.client.get(Namespace, namespace))
        return found is not None and is_deleting(found.to_dict())

    async def _hold(self, namespace: str, binding: Mapping[str, Any]) -> None:
        current = binding["metadata"].get("finalizers")
        operation = (
            {"op": "add", "path": "/metadata/finalizers/-", "value": FINALIZER}
            if current
            else {"op": "add", "path": "/metadata/finalizers", "value": [FINALIZER]}
        )
        await self._patch(namespace, [_unchanged(binding), operation])
        log.info("binding_held", namespace=namespace, binding=TENANTS_BINDING)

    async def _release(self, namespace: str, binding: Mapping[str, Any]) -> None:
        index = list(binding["metadata"]["finalizers"]).index(FINALIZER)
        # `test` first: if the list changed meanwhile, the patch fails rather than removing
        # somebody else's finalizer.
        await self._patch(
            namespace,
            [
                {"op": "test", "path": f"/metadata/finalizers/{index}", "value": FINALIZER},
                {"op": "remove", "path": f"/metadata/finalizers/{index}"},
            ],
        )
        log.info("binding_released", namespace=namespace, binding=TENANTS_BINDING)

    async def _patch(self, namespace: str, operations: list[dict[str, Any]]) -> None:
        await self.client.patch(
            RoleBinding, TENANTS_BINDING, operations, namespace=namespace, patch_type=PatchType.JSON
        )


def _unchanged(binding: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON-patch `test` on the resourceVersion read: a concurrent change fails the patch."""
    version = binding["metadata"]["resourceVersion"]
    return {"op": "test", "path": "/metadata/resourceVersion", "value": version}
