"""What every feature knows of tenants: the slug rule, the directory, the suspended answer.

The tenants feature owns the registry; identity must ask it whether a tenant exists, is
suspended or lets people sign up, without depending on it (tenants depends on identity).
So the questions are asked here, as a protocol the registry implements.

A slug names a tenant's registry entry, its Secret key, its database and role and its
`Tenant` resource, so the pattern is DNS-label-like: safe as a file name, a Secret key, a
PostgreSQL identifier part and a URL part.
"""

from __future__ import annotations

import re
from typing import Annotated, Protocol

from pydantic import StringConstraints

from service.core.errors import Forbidden

TENANT_SLUG_PATTERN = r"^[a-z][a-z0-9-]{1,38}[a-z0-9]$"
TENANT_SLUG_HELP = "3-40 characters: lowercase letters, digits and '-', starting with a letter"
TenantSlug = Annotated[str, StringConstraints(pattern=TENANT_SLUG_PATTERN)]
_SLUG = re.compile(TENANT_SLUG_PATTERN)


def is_valid_tenant_slug(value: str) -> bool:
    return _SLUG.fullmatch(value) is not None


class TenantSuspended(Forbidden):
    """Told only to a tenant's own users (and platform admins), who know it exists."""

    message = "This tenant is suspended"


class KnownTenant(Protocol):
    """A tenant as the directory knows it (a registry entry is one)."""

    @property
    def self_signup(self) -> bool: ...

    @property
    def is_serving(self) -> bool: ...

    @property
    def is_suspended(self) -> bool: ...

    @property
    def accepts_new_users(self) -> bool: ...


class TenantDirectory(Protocol):
    """Which tenants exist, and in which state (the tenant registry implements it)."""

    def get(self, slug: str) -> KnownTenant | None: ...
