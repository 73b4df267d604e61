"""Deleting the CRD must not wedge: finish the Tenants kopf stops serving.

While `tenants.berth.dev` terminates, the API server deletes every Tenant, but its discovery
no longer lists `patch` for them, so kopf drops the resource ("Non-patchable resources will
not be served") and our finalizers would hold the CRD forever. The API server still accepts
the patch that removes a finalizer, so this watcher does kopf's part for that case: it looks
at the CRD (RBAC: `get` on that one CRD), and while it terminates, runs each deleted
Tenant's cleanup (the same `Reconciler.delete`, by its deletionPolicy) and removes the
finalizer. Failures are in the Tenant's status and Events and retried on the next look.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from lightkube import ALL_NS, ApiError, AsyncClient
from lightkube.resources.apiextensions_v1 import CustomResourceDefinition
from lightkube.types import PatchType

from berth_operator.errors import ReconcileFailed
from berth_operator.kube import NOT_FOUND, TenantResource, retry_rule_faults, status_code
from berth_operator.metrics import Handler, Result
from berth_operator.reconciler import Reconciler
from berth_operator.resource import CRD_NAME, FINALIZER, Tenant, holds_finalizer, is_deleting
from service.core.logging import get_logger

log = get_logger(__name__)

LOOK_EVERY_SECONDS = 5.0


class CrdState(Enum):
    ABSENT = "absent"
    PRESENT = "present"
    TERMINATING = "terminating"


@dataclass
class CrdDeletionWatcher:
    client: AsyncClient
    reconciler: Reconciler
    namespaces: list[str]
    interval: float = LOOK_EVERY_SECONDS
    restart_requested: bool = False
    # Per Tenant uid: failed cleanups so far, and when to try again (the status says so).
    _retries: dict[str, tuple[int, float]] = field(default_factory=dict)

    async def crd_state(self) -> CrdState:
        try:
            crd = await self.client.get(CustomResourceDefinition, CRD_NAME)
        except ApiError as exc:
            if status_code(exc) == NOT_FOUND:
                return CrdState.ABSENT
            raise
        if crd.metadata is not None and crd.metadata.deletionTimestamp is not None:
            return CrdState.TERMINATING
        return CrdState.PRESENT

    async def crd_terminating(self) -> bool:
        return await self.crd_state() is CrdState.TERMINATING

    async def _deleted_tenants(self) -> AsyncIterator[Mapping[str, Any]]:
        for namespace in self.namespaces or [ALL_NS]:
            async for body in self.client.list(TenantResource, namespace=namespace):
                if is_deleting(body) and holds_finalizer(body):
                    yield body

    async def finish(self) -> int:
        """Clean up and release every deleted Tenant still holding our finalizer; how many
        were released."""
        released = 0
        async for body in self._deleted_tenants():
            tenant = Tenant.from_body(body)
            metrics = self.reconciler.metrics
            retry, not_before = self._retries.get(tenant.ref.uid, (0, 0.0))
            if time.monotonic() < not_before:
                continue
            try:
                await self.reconciler.delete(tenant, retry=retry)
            except ReconcileFailed as exc:
                wait = exc.failure.retry_seconds or self.reconciler.retry_seconds(retry)
                self._retries[tenant.ref.uid] = (retry + 1, time.monotonic() + wait)
                result = Result.TEMPORARY_ERROR if exc.failure.temporary else Result.PERMANENT_ERROR
                metrics.reconciles.labels(Handler.DELETE.value, result.value).inc()
                continue  # in its status and Events; looked at again next time
            metrics.reconciles.labels(Handler.DELETE.value, Result.SUCCESS.value).inc()
            await self._release(body)
            released += 1
        return released

    async def _release(self, body: Mapping[str, Any]) -> None:
        metadata = body["metadata"]
        index = list(metadata["finalizers"]).index(FINALIZER)
        # `test` first: if the list changed meanwhile, the patch fails rather than removing
        # somebody else's finalizer.
        patch = [
            {"op": "test", "path": f"/metadata/finalizers/{index}", "value": FINALIZER},
            {"op": "remove", "path": f"/metadata/finalizers/{index}"},
        ]
        await retry_rule_faults(
            lambda: self.client.patch(
                TenantResource,
                metadata["name"],
                patch,
                namespace=metadata["namespace"],
                patch_type=PatchType.JSON,
            )
        )
        log.info(
            "tenant_released_during_crd_deletion",
            tenant=metadata["name"],
            namespace=metadata["namespace"],
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Look every `interval` until `stop`. A CRD installed after the operator started is
        not served by kopf (it scans resources once): then ask for a restart."""
        absent_at_start = await self._state_or_none() is CrdState.ABSENT
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.interval)
            if stop.is_set():
                return
            state = await self._state_or_none()
            if state is CrdState.PRESENT and absent_at_start:
                log.warning("operator_restarting", reason=f"{CRD_NAME} was installed after start")
                self.restart_requested = True
                stop.set()
            elif state is CrdState.TERMINATING:
                await self._finish_quietly()

    async def _state_or_none(self) -> CrdState | None:
        try:
            return await self.crd_state()
        except Exception as exc:  # never let this helper stop the operator
            log.warning("crd_deletion_watch_failed", error=str(exc))
            return None

    async def _finish_quietly(self) -> None:
        try:
            await self.finish()
        except Exception as exc:
            log.warning("crd_deletion_watch_failed", error=str(exc))
