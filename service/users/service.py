"""User management rules: who may see, create and change whom. No FastAPI here.

Scoping: a tenant's owners and admins see only their tenant, and another tenant's user is
"not found" (404), never "forbidden": existence elsewhere is not disclosed. Platform admins
see everyone.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any

from service.auth.passwords import Passwords
from service.auth.principal import Principal
from service.auth.repository import RefreshTokenRepository
from service.core.errors import Conflict, DomainError, Forbidden, NotFound
from service.core.pagination import PagePosition, encode_cursor, position_after
from service.tenants.schemas import TenantLookup
from service.users.models import Role, User
from service.users.repository import EmailTaken, UserFilters, UserRepository

# Who may grant a role, beyond the tenant admins who may grant admin and member.
_GRANTED_ONLY_BY = {
    Role.PLATFORM_ADMIN: frozenset({Role.PLATFORM_ADMIN}),
    Role.OWNER: frozenset({Role.PLATFORM_ADMIN, Role.OWNER}),
}


class InvalidInput(DomainError):
    """Well-formed but contradictory input (422, like a validation error)."""

    status_code = HTTPStatus.UNPROCESSABLE_ENTITY
    message = "The request is not valid"


@dataclass(frozen=True)
class NewUser:
    email: str
    password: str
    role: Role
    tenant_slug: str | None


@dataclass(frozen=True)
class Page:
    items: list[User]
    next_cursor: str | None
    has_more: bool


async def provision_user(users: UserRepository, passwords: Passwords, new: NewUser) -> User:
    """Insert a user without any permission check (the callers make them)."""
    user = User(
        email=new.email,
        password_hash=await passwords.hash(new.password),
        role=new.role.value,
        tenant_slug=new.tenant_slug,
        is_active=True,
        token_version=0,
    )
    try:
        return await users.add(user)
    except EmailTaken:
        raise Conflict("A user with this email already exists") from None


def _may_grant(actor: Principal, role: Role) -> bool:
    return actor.role in _GRANTED_ONLY_BY.get(role, frozenset(Role))


def _tenant_for_new_user(actor: Principal, role: Role, requested: str | None) -> str | None:
    if role is Role.PLATFORM_ADMIN:
        if requested is not None:
            raise InvalidInput("A platform admin belongs to no tenant: omit tenant_slug")
        return None
    if actor.is_platform_admin:
        if requested is None:
            raise InvalidInput("tenant_slug is required for tenant roles")
        return requested
    if requested is not None and requested != actor.tenant_slug:
        raise Forbidden("You can only create users in your own tenant")
    return actor.tenant_slug


class UserService:
    def __init__(
        self,
        users: UserRepository,
        refresh_tokens: RefreshTokenRepository,
        passwords: Passwords,
        cursor_key: bytes,
    ) -> None:
        self.users = users
        self.refresh_tokens = refresh_tokens
        self.passwords = passwords
        self.cursor_key = cursor_key

    async def get(self, actor: Principal, user_id: uuid.UUID) -> User:
        user = await self.users.get(user_id)
        if user is None or not actor.can_see_tenant(user.tenant_slug):
            raise NotFound("User not found")
        return user

    async def create(
        self,
        actor: Principal,
        *,
        email: str,
        password: str,
        role: Role,
        tenant_slug: str | None,
        tenants: TenantLookup | None,
    ) -> User:
        if not _may_grant(actor, role):
            raise Forbidden(f"Your role may not create users with the role {role.value}")
        tenant = _tenant_for_new_user(actor, role, tenant_slug)
        # Only checkable where a registry is wired in; tenants still provisioning count.
        if tenant is not None and tenants is not None and tenants.get(tenant) is None:
            raise NotFound("Tenant not found")
        new = NewUser(email=email, password=password, role=role, tenant_slug=tenant)
        return await provision_user(self.users, self.passwords, new)

    async def update(self, actor: Principal, user_id: uuid.UUID, changes: dict[str, Any]) -> User:
        """Apply the fields that were sent (`role`, `is_active`)."""
        user = await self.get(actor, user_id)
        _check_may_manage(actor, user)
        role = changes.get("role")
        if role is not None and Role(role) != Role(user.role):
            await self._change_role(actor, user, Role(role))
        is_active = changes.get("is_active")
        if is_active is not None and is_active != user.is_active:
            await self._set_active(actor, user, active=bool(is_active))
        await self.users.save(user)
        return user

    async def deactivate(self, actor: Principal, user_id: uuid.UUID) -> User:
        return await self.update(actor, user_id, {"is_active": False})

    async def list_page(
        self,
        actor: Principal,
        filters: UserFilters,
        *,
        cursor: str | None,
        limit: int,
    ) -> Page:
        if not actor.is_platform_admin:
            if filters.tenant_slug not in (None, actor.tenant_slug):
                return Page(items=[], next_cursor=None, has_more=False)
            filters = UserFilters(
                tenant_slug=actor.tenant_slug,
                role=filters.role,
                is_active=filters.is_active,
                email_contains=filters.email_contains,
            )
        scope = _scope(actor, filters)
        after = position_after(cursor, key=self.cursor_key, scope=scope)
        rows = await self.users.list_page(filters, after, limit + 1)
        items, has_more = rows[:limit], len(rows) > limit
        next_cursor = None
        if has_more:
            last = PagePosition(created_at=items[-1].created_at, id=items[-1].id)
            next_cursor = encode_cursor(last, key=self.cursor_key, scope=scope)
        return Page(items=items, next_cursor=next_cursor, has_more=has_more)

    async def _change_role(self, actor: Principal, user: User, role: Role) -> None:
        if user.id == actor.user_id:
            raise Forbidden("You cannot change your own role")
        if (role is Role.PLATFORM_ADMIN) != (user.role == Role.PLATFORM_ADMIN):
            raise InvalidInput("Platform admins and tenant users cannot change into each other")
        if not _may_grant(actor, role):
            raise Forbidden(f"Your role may not grant the role {role.value}")
        user.role = role.value
        # Tokens carry the role: make the old ones fail so the next ones say the new role.
        user.token_version += 1

    async def _set_active(self, actor: Principal, user: User, *, active: bool) -> None:
        if user.id == actor.user_id:
            raise Forbidden("You cannot deactivate yourself")
        user.is_active = active
        if not active:
            user.token_version += 1
            await self.refresh_tokens.revoke_for_user(user.id, datetime.now(UTC))


def _check_may_manage(actor: Principal, user: User) -> None:
    if user.role == Role.OWNER and actor.role not in (Role.OWNER, Role.PLATFORM_ADMIN):
        raise Forbidden("Only owners and platform admins may change an owner")


def _scope(actor: Principal, filters: UserFilters) -> str:
    """What a cursor is bound to: who lists (the tenant scope) and with which filters."""
    return "|".join(
        str(part)
        for part in (
            "all" if actor.is_platform_admin else actor.tenant_slug,
            filters.tenant_slug,
            filters.role,
            filters.is_active,
            filters.email_contains,
        )
    )
