"""Request dependencies: the request's tenant, with a session or a reader on its database.

The tenant comes from the authenticated principal (`service.identity`): its token's tenant,
narrowed by X-Tenant-ID. Routes take `tenant: CurrentTenant`; `scope: CurrentTenantScope`
for the tenant and a session on its database (writes); `reader: CurrentTenantReader` for the
tenant and session-less reads (GET). `tenant_resolver`, `tenant_scope_for` and
`tenant_reader_for` build the same from another claim dependency (tests use them).

No `from __future__ import annotations` here: the dependencies are closures whose annotations
name the factory's arguments, which FastAPI could not resolve from strings later.
"""

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from http import HTTPStatus
from typing import Annotated

import structlog
from fastapi import Depends, Header, Request

from service.core.logging import TENANT
from service.db.engine import session_scope
from service.identity.dependencies import current_principal
from service.tenants.engines import TenantReader
from service.tenants.schemas import TenantEntry
from service.tenants.service import TENANT_HEADER, TenantClaim, TenantScope, resolve_tenant
from service.tenants.wiring import TENANCY, Tenancy

ClaimDependency = Callable[..., Awaitable[TenantClaim]]
# What a route acting on the request's tenant may answer besides its own codes: no tenant
# named (400), suspended (403), unknown or not served (404), no engine slot, pool or
# database (503).
TENANT_ERRORS = (
    HTTPStatus.BAD_REQUEST,
    HTTPStatus.FORBIDDEN,
    HTTPStatus.NOT_FOUND,
    HTTPStatus.SERVICE_UNAVAILABLE,
)
TenantHeader = Annotated[str | None, Header(alias=TENANT_HEADER)]
# FastAPI's exit stack around the route call (`fastapi.routing.request_response`): closed
# when the route returns or raises, before the response is sent.
ROUTE_EXIT_STACK = "fastapi_function_astack"


def _request_tenant(tenancy: Tenancy, claim: TenantClaim, requested: str | None) -> TenantEntry:
    entry = resolve_tenant(claim.tenant_slug, claim.is_platform_admin, requested, tenancy.registry)
    # Bound in an async dependency, the tenant is on every later log line of the request.
    structlog.contextvars.bind_contextvars(**{TENANT: entry.slug})
    return entry


def _served_tenant(
    request: Request, claim: TenantClaim, requested: str | None
) -> tuple[Tenancy, TenantEntry]:
    """The request's tenant for a route that uses its database, counted per tenant."""
    tenancy = TENANCY.of(request)
    tenant = _request_tenant(tenancy, claim, requested)
    tenancy.metrics.count_request(tenant.slug)
    return tenancy, tenant


def tenant_resolver(claim_dependency: ClaimDependency) -> Callable[..., Awaitable[TenantEntry]]:
    """A dependency resolving the request's tenant from the claim `claim_dependency` gives
    (a `TenantClaim`, such as the authenticated `Principal`) and the X-Tenant-ID header."""

    async def current_tenant(
        request: Request,
        claim: Annotated[TenantClaim, Depends(claim_dependency)],
        requested: TenantHeader = None,
    ) -> TenantEntry:
        return _request_tenant(TENANCY.of(request), claim, requested)

    return current_tenant


def tenant_scope_for(
    claim_dependency: ClaimDependency,
) -> Callable[..., AsyncIterator[TenantScope]]:
    """A dependency yielding the tenant (as `tenant_resolver`) and an AsyncSession on its own
    engine: committed when the route returns, rolled back on any exception (HTTP ones too),
    as `DbSession`; read-only on autocommit for GET/HEAD (`SessionFactories`).

    One dependency, not one per step: FastAPI walks a dependency's whole sub-graph each time
    a route names it and spends tens of microseconds per node and request, which made the
    graph the largest cost of a cached article GET (docs/benchmarks.md).
    """

    async def tenant_scope(
        request: Request,
        claim: Annotated[TenantClaim, Depends(claim_dependency)],
        requested: TenantHeader = None,
    ) -> AsyncIterator[TenantScope]:
        tenancy, tenant = _served_tenant(request, claim, requested)
        async with (
            tenancy.engines.lease(tenant) as sessions,
            session_scope(sessions.for_method(request.method)) as session,
        ):
            yield TenantScope(tenant=tenant, session=session)

    return tenant_scope


def _route_exit_stack(request: Request) -> AsyncExitStack:
    stack = request.scope.get(ROUTE_EXIT_STACK)
    if not isinstance(stack, AsyncExitStack):  # a FastAPI upgrade moved it: fail loudly
        raise RuntimeError(f"no {ROUTE_EXIT_STACK} in the request scope")
    return stack


def tenant_reader_for(claim_dependency: ClaimDependency) -> Callable[..., Awaitable[TenantReader]]:
    """A dependency giving the tenant (as `tenant_resolver`) and a `TenantReader` on its
    database, closed when the route is done (on any exception too).

    A plain dependency that hands the close to FastAPI's route exit stack: a generator
    dependency costs ~20 µs more per request (docs/benchmarks.md). The reader takes its
    engine lease, permit and connection at its first query, so a cache hit takes none.
    """

    async def tenant_reader(
        request: Request,
        claim: Annotated[TenantClaim, Depends(claim_dependency)],
        requested: TenantHeader = None,
    ) -> TenantReader:
        tenancy, tenant = _served_tenant(request, claim, requested)
        reader = tenancy.engines.reader(tenant)
        _route_exit_stack(request).push_async_callback(reader.close)
        return reader

    return tenant_reader


# The authenticated principal is the claim: its token's tenant, or a platform admin.
current_tenant = tenant_resolver(current_principal)
CurrentTenant = Annotated[TenantEntry, Depends(current_tenant)]
# scope="function": commit/rollback runs when the route returns, before the response is sent.
CurrentTenantScope = Annotated[
    TenantScope, Depends(tenant_scope_for(current_principal), scope="function")
]
CurrentTenantReader = Annotated[TenantReader, Depends(tenant_reader_for(current_principal))]
