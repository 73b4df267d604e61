"""Exactly one active operator: a coordination.k8s.io Lease held while it runs.

kopf runs `--standalone` (its peering is not leader election and falls back silently), and
the chart runs one replica with the Recreate strategy. This Lease is the guard for the day
that goes wrong (a second Deployment, a developer's laptop against the cluster): a second
instance does not handle Tenants while another holds the Lease, logs an error each time it
looks, and takes over only once the holder stopped renewing. A holder that finds the Lease
taken (or cannot renew it in time) stops the operator rather than act beside another.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
from dataclasses import dataclass

from lightkube import ApiError, AsyncClient
from lightkube.models.coordination_v1 import LeaseSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.coordination_v1 import Lease

from berth_operator.config import LeaseSettings
from berth_operator.kube import CONFLICT, NOT_FOUND, is_temporary, managed_labels, status_code
from berth_operator.metrics import OperatorMetrics
from service.core.logging import get_logger

log = get_logger(__name__)


class LeaseLost(RuntimeError):
    """Another instance holds the Lease now: this one must stop."""


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass
class LeaseGuard:
    client: AsyncClient
    namespace: str
    identity: str
    settings: LeaseSettings
    metrics: OperatorMetrics
    _renewed_at: float = 0.0  # monotonic time of our last successful write

    def _expired(self, lease: Lease) -> bool:
        spec = lease.spec or LeaseSpec()
        if not spec.holderIdentity or spec.holderIdentity == self.identity:
            return True
        if spec.renewTime is None:
            return True
        duration = spec.leaseDurationSeconds or self.settings.duration_seconds
        return (_now() - spec.renewTime).total_seconds() > duration

    def _spec(self, previous: LeaseSpec | None, *, holder: str | None) -> LeaseSpec:
        now = _now()
        taking = previous is None or previous.holderIdentity != holder
        transitions = (previous.leaseTransitions or 0) if previous else 0
        return LeaseSpec(
            holderIdentity=holder,
            leaseDurationSeconds=self.settings.duration_seconds,
            acquireTime=now if taking else (previous.acquireTime if previous else now),
            renewTime=now,
            leaseTransitions=transitions + (1 if taking and holder else 0),
        )

    async def _read(self) -> Lease | None:
        try:
            return await self.client.get(Lease, self.settings.name, namespace=self.namespace)
        except ApiError as exc:
            if status_code(exc) == NOT_FOUND:
                return None
            raise

    async def _write(self, current: Lease | None, holder: str | None) -> bool:
        """Create or replace the Lease for `holder`; False when someone wrote first."""
        metadata = ObjectMeta(
            name=self.settings.name, namespace=self.namespace, labels=managed_labels()
        )
        lease = Lease(
            metadata=metadata, spec=self._spec(current.spec if current else None, holder=holder)
        )
        try:
            if current is None:
                await self.client.create(lease)
            else:
                assert current.metadata is not None
                metadata.resourceVersion = current.metadata.resourceVersion
                await self.client.replace(lease)
        except ApiError as exc:
            if status_code(exc) == CONFLICT:
                return False
            raise
        self._renewed_at = time.monotonic()
        return True

    async def try_acquire(self) -> bool:
        """One attempt; False (after an error in the log) while another instance holds it."""
        current = await self._read()
        if current is not None and not self._expired(current):
            holder = current.spec.holderIdentity if current.spec else None
            log.error(
                "operator_lease_held_elsewhere",
                lease=f"{self.namespace}/{self.settings.name}",
                holder=holder,
                detail="another berth operator is active; this one waits and handles nothing",
            )
            return False
        return await self._write(current, self.identity)

    async def acquire(self, stop: asyncio.Event) -> bool:
        """Wait until this instance holds the Lease (True), or `stop` is set (False)."""
        while not await self.try_acquire():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.settings.renew_seconds)
            if stop.is_set():
                return False
        self.metrics.lease_held.set(1)
        log.info(
            "operator_lease_acquired",
            lease=f"{self.namespace}/{self.settings.name}",
            holder=self.identity,
        )
        return True

    async def renew(self) -> None:
        """Renew once; LeaseLost when another instance holds it now."""
        current = await self._read()
        holder = current.spec.holderIdentity if current is not None and current.spec else None
        if holder != self.identity:
            raise LeaseLost(f"Lease {self.namespace}/{self.settings.name} is held by {holder}")
        if not await self._write(current, self.identity):
            await self.renew()  # written in between: look again

    async def keep(self, stop: asyncio.Event) -> None:
        """Renew until `stop` is set; set it and raise LeaseLost when the Lease is gone."""
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), timeout=self.settings.renew_seconds)
                return
            except TimeoutError:
                pass
            try:
                await self.renew()
            except LeaseLost:
                self._lost(stop)
                raise
            except Exception as exc:
                if not is_temporary(exc):  # 401, 403, 422: renewing will not work again
                    self._lost(stop)
                    raise LeaseLost(f"the Lease cannot be renewed: {exc}") from exc
                if time.monotonic() - self._renewed_at > self.settings.duration_seconds:
                    self._lost(stop)
                    raise LeaseLost("the Lease could not be renewed before it expired") from exc
                log.warning("operator_lease_renewal_failed", error=str(exc))

    def _lost(self, stop: asyncio.Event) -> None:
        self.metrics.lease_held.set(0)
        log.critical(
            "operator_lease_lost", lease=f"{self.namespace}/{self.settings.name}", detail="stopping"
        )
        stop.set()

    async def release(self) -> None:
        """Hand the Lease back on a clean stop, so a successor starts at once."""
        self.metrics.lease_held.set(0)
        try:
            current = await self._read()
            if (
                current is not None
                and current.spec
                and current.spec.holderIdentity == self.identity
            ):
                await self._write(current, None)
        except Exception as exc:  # the successor will wait out the duration instead
            log.warning("operator_lease_not_released", error=str(exc))
