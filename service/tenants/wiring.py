"""The tenants part of the app's container: the registry, its watcher, the engine cache and
the document-database cache."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

from prometheus_client import CollectorRegistry

from service.core.config import Settings
from service.core.slots import AppSlot
from service.tenants.documents import TenantDocuments
from service.tenants.engines import TenantEngines
from service.tenants.metrics import TenantMetrics
from service.tenants.registry import TenantRegistry


@dataclass(frozen=True)
class Tenancy:
    """Built once per app; `start` reads the registry and watches it, `close` ends both."""

    registry: TenantRegistry
    engines: TenantEngines
    documents: TenantDocuments
    poll_seconds: float
    metrics: TenantMetrics

    async def start(self) -> None:
        """Read the registry once, then poll it in a background task that also drives the
        engine cache (registry changes, idle engines)."""
        await self.registry.refresh_async()
        self.registry.start_watching(
            self.poll_seconds, partial(self.engines.on_registry_poll, self.registry)
        )

    async def close(self) -> None:
        await self.registry.close()  # first: no poll may touch the engines while they close
        await self.engines.close()
        await self.documents.close()


def build_tenancy(settings: Settings, metrics_registry: CollectorRegistry) -> Tenancy:
    metrics = TenantMetrics(metrics_registry, settings.observability.metrics_tenants)
    return Tenancy(
        registry=TenantRegistry(settings.tenants.registry_dir, metrics),
        engines=TenantEngines(settings.tenants, settings.database, metrics=metrics),
        documents=TenantDocuments(
            settings.mongo, wait_seconds=settings.tenants.engine_wait_seconds
        ),
        poll_seconds=settings.tenants.registry_poll_seconds,
        metrics=metrics,
    )


TENANCY: AppSlot[Tenancy] = AppSlot("tenancy")
