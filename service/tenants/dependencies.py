"""Request dependencies: the request's tenant and a session on that tenant's database.

The tenant comes from the authenticated principal (`service/auth/`): its token's tenant,
narrowed by X-Tenant-ID. Routes take `tenant: CurrentTenant`, or `scope: CurrentTenantScope`
for the tenant and a session on its database; `tenant_resolver` and `tenant_scope_for` build
the same from another claim dependency (tests use them).

No `from __future__ import annotations` here: the dependencies are closures whose annotations
name the factory's arguments, which FastAPI could not resolve from strings later.
"""

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
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


def tenant_resolver(
    claim_dependency: Callable[..., Any],
) -> Callable[..., Awaitable[TenantEntry]]:
    """A dependency resolving the request's tenant from the claim `claim_dependency` gives
    (a `TenantClaim`) and the optional X-Tenant-ID header."""

    async def current_tenant(
        request: Request,
        claim: Annotated[TenantClaim, Depends(claim_dependency)],
        requested: Annotated[str | None, Header(alias=TENANT_HEADER)] = None,
    ) -> TenantEntry:
        lookup: TenantLookup = request.app.state.tenants
        entry = resolve_tenant(claim.tenant, claim.is_platform_admin, requested, lookup)
        # Async on purpose: bound here, the tenant is on every later log line of the request.
        structlog.contextvars.bind_contextvars(**{TENANT: entry.slug})
        return entry

    return current_tenant


@dataclass(frozen=True, slots=True)
class TenantScope:
    """The request's tenant and a session on that tenant's own database."""

    tenant: TenantEntry
    session: AsyncSession


def tenant_scope_for(
    tenant_dependency: Callable[..., Awaitable[TenantEntry]],
) -> Callable[..., AsyncIterator[TenantScope]]:
    """A dependency yielding the tenant and an AsyncSession on its own engine: committed when
    the route returns, rolled back on any exception (HTTP ones too), as `DbSession`; read-only
    on autocommit for GET/HEAD (`SessionFactories`).

    Tenant and session come as one object: FastAPI walks a dependency's whole sub-graph each
    time a route names it, so naming the tenant and the session apart walked the principal's
    sub-graph twice per request.
    """

    async def tenant_scope(
        request: Request, tenant: Annotated[TenantEntry, Depends(tenant_dependency)]
    ) -> AsyncIterator[TenantScope]:
        engines: TenantEngines = request.app.state.resources.tenant_engines
        async with (
            engines.lease(tenant) as sessions,
            session_scope(sessions.for_method(request.method)) as session,
        ):
            yield TenantScope(tenant=tenant, session=session)

    return tenant_scope


async def tenant_claim(principal: CurrentPrincipal) -> TenantClaim:
    """What the authenticated principal's token says about tenancy."""
    return TenantClaim(tenant=principal.tenant_slug, is_platform_admin=principal.is_platform_admin)


current_tenant = tenant_resolver(tenant_claim)
CurrentTenant = Annotated[TenantEntry, Depends(current_tenant)]
# scope="function": commit/rollback runs when the route returns, before the response is sent.
CurrentTenantScope = Annotated[
    TenantScope, Depends(tenant_scope_for(current_tenant), scope="function")
]
