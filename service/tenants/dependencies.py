"""Request dependencies: the request's tenant and a session on that tenant's database.

The tenant comes from the authenticated principal (`service/auth/`): its token's tenant,
narrowed by X-Tenant-ID. Routes take `tenant: CurrentTenant` and `session: TenantSession`;
`tenant_resolver` builds the same from another claim dependency (tests use it).

No `from __future__ import annotations` here: the dependencies are closures whose annotations
name the factory's arguments, which FastAPI could not resolve from strings later.
"""

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, Any

import structlog
from fastapi import Depends, Header, Request
from sqlalchemy.ext.asyncio import AsyncSession

from service.auth.dependencies import CurrentPrincipal
from service.core.logging import TENANT
from service.db.engine import session_scope
from service.tenants.engines import TenantEngines
from service.tenants.schemas import TenantEntry, TenantLookup
from service.tenants.service import TENANT_HEADER, TenantClaim, resolve_tenant


async def get_tenant_lookup(request: Request) -> TenantLookup:
    lookup: TenantLookup = request.app.state.tenants
    return lookup


async def get_tenant_engines(request: Request) -> TenantEngines:
    engines: TenantEngines = request.app.state.resources.tenant_engines
    return engines


def tenant_resolver(
    claim_dependency: Callable[..., Any],
) -> Callable[..., Awaitable[TenantEntry]]:
    """A dependency resolving the request's tenant from the claim `claim_dependency` gives
    (a `TenantClaim`) and the optional X-Tenant-ID header."""

    async def current_tenant(
        claim: Annotated[TenantClaim, Depends(claim_dependency)],
        lookup: Annotated[TenantLookup, Depends(get_tenant_lookup)],
        requested: Annotated[str | None, Header(alias=TENANT_HEADER)] = None,
    ) -> TenantEntry:
        entry = resolve_tenant(claim.tenant, claim.is_platform_admin, requested, lookup)
        # Async on purpose: bound here, the tenant is on every later log line of the request.
        structlog.contextvars.bind_contextvars(**{TENANT: entry.slug})
        return entry

    return current_tenant


def tenant_session_for(
    tenant_dependency: Callable[..., Awaitable[TenantEntry]],
) -> Callable[..., AsyncIterator[AsyncSession]]:
    """A dependency yielding an AsyncSession on the tenant's own engine: committed when the
    route returns, rolled back on any exception (HTTP ones too), as `DbSession`."""

    async def tenant_session(
        tenant: Annotated[TenantEntry, Depends(tenant_dependency)],
        engines: Annotated[TenantEngines, Depends(get_tenant_engines)],
    ) -> AsyncIterator[AsyncSession]:
        async with engines.lease(tenant) as factory, session_scope(factory) as session:
            yield session

    return tenant_session


async def tenant_claim(principal: CurrentPrincipal) -> TenantClaim:
    """What the authenticated principal's token says about tenancy."""
    return TenantClaim(tenant=principal.tenant_slug, is_platform_admin=principal.is_platform_admin)


current_tenant = tenant_resolver(tenant_claim)
CurrentTenant = Annotated[TenantEntry, Depends(current_tenant)]
# scope="function": commit/rollback runs when the route returns, before the response is sent.
TenantSession = Annotated[
    AsyncSession, Depends(tenant_session_for(current_tenant), scope="function")
]
