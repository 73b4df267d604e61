"""Open and close the tenancy resources in the lifespan: registry, watcher, engine cache."""

from __future__ import annotations

from functools import partial

from service.core.config import Settings
from service.tenants.engines import TenantEngines
from service.tenants.registry import TenantRegistry


async def open_tenancy(settings: Settings) -> tuple[TenantRegistry, TenantEngines]:
    """Read the registry once, then poll it in a background task that also drives the
    engine cache (registry changes, idle engines)."""
    registry = TenantRegistry(settings.tenants.registry_dir)
    engines = TenantEngines(settings.tenants, settings.database)
    await registry.refresh_async()
    registry.start_watching(
        settings.tenants.registry_poll_seconds, partial(engines.on_registry_poll, registry)
    )
    return registry, engines


async def close_tenancy(registry: TenantRegistry, engines: TenantEngines) -> None:
    await registry.close()  # first: no poll may touch the engines while they close
    await engines.close()
