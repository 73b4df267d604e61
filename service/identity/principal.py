"""Who is making the request: the roles, and the principal built from a verified access
token and the user's current row. Other features import these (from `service.identity`)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from enum import StrEnum


class Role(StrEnum):
    PLATFORM_ADMIN = "platform_admin"
    OWNER = "owner"
    ADMIN = "admin"
    MEMBER = "member"


ROLE_VALUES = tuple(role.value for role in Role)
# Who acts on all of a tenant's content (edits every article, sees every submission); a
# member acts on their own only.
TENANT_WIDE_ROLES = frozenset({Role.OWNER, Role.ADMIN, Role.PLATFORM_ADMIN})


@dataclass(frozen=True, slots=True)
class Principal:
    user_id: uuid.UUID
    email: str
    role: Role
    tenant_slug: str | None
    # The access token's jti: what logout revokes.
    token_id: str

    @property
    def is_platform_admin(self) -> bool:
        return self.role is Role.PLATFORM_ADMIN

    @property
    def sees_all_of_tenant(self) -> bool:
        """Whether the principal acts on everyone's content in the tenant, not just its own."""
        return self.role in TENANT_WIDE_ROLES

    def can_see_tenant(self, tenant_slug: str | None) -> bool:
        """Platform admins see every tenant; everyone else only their own."""
        return self.is_platform_admin or (
            tenant_slug is not None and tenant_slug == self.tenant_slug
        )
