"""Which tenant a request acts on: framework-free rules, used by the dependencies.

The authenticated principal's token names the tenant (`tid`). An `X-Tenant-ID` header may
only narrow it: equal to the token's tenant, or absent. Platform admins belong to no tenant
and must name one. Anything else is "Unknown tenant" (404), worded the same whether or not
the tenant exists, so the answer never reveals another tenant.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from sqlalchemy.ext.asyncio import AsyncSession

from service.core.errors import BadRequest, NotFound
from service.core.tenancy import TenantSuspended, is_valid_tenant_slug
from service.tenants.schemas import TenantEntry, TenantLookup

TENANT_HEADER = "X-Tenant-ID"


class UnknownTenant(NotFound):
    message = "Unknown tenant"


class TenantRequired(BadRequest):
    message = f"Platform admins must name a tenant with the {TENANT_HEADER} header"


class TenantClaim(Protocol):
    """What the caller's credentials say about tenancy; the authenticated `Principal` is one."""

    @property
    def tenant_slug(self) -> str | None:
        """The token's tenant (`tid`); None for platform admins."""

    @property
    def is_platform_admin(self) -> bool: ...


def requested_slug(token_tenant: str | None, is_platform_admin: bool, requested: str | None) -> str:
    """The slug the request may act on, before looking it up."""
    requested = requested.strip() if requested else None  # an empty header is no header
    if is_platform_admin:
        if not requested:
            raise TenantRequired()
        return requested
    if token_tenant is None:
        raise UnknownTenant()
    if requested is not None and requested != token_tenant:
        raise UnknownTenant()  # same answer as a tenant that does not exist
    return token_tenant


def resolve_tenant(
    token_tenant: str | None,
    is_platform_admin: bool,
    requested: str | None,
    lookup: TenantLookup,
) -> TenantEntry:
    """The registry entry of the request's tenant, or the domain error to answer with.

    Only `ready` tenants are served. `suspended` is 403 with a clear message (the caller
    belongs to that tenant or is a platform admin, so its existence is no secret to them);
    `provisioning`, `deleting`, removed and unknown tenants are 404 "Unknown tenant".
    """
    slug = requested_slug(token_tenant, is_platform_admin, requested)
    entry = lookup.get(slug) if is_valid_tenant_slug(slug) else None
    if entry is None:
        raise UnknownTenant()
    if entry.is_suspended:
        raise TenantSuspended()
    if not entry.is_serving:
        raise UnknownTenant()
    return entry


@dataclass(frozen=True, slots=True)
class TenantScope:
    """The request's tenant and a session on that tenant's own database."""

    tenant: TenantEntry
    session: AsyncSession
