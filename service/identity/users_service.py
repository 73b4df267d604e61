"""User management rules: who may see, create and change whom. No FastAPI here.

Scoping: a tenant's owners and admins see only their tenant, and another tenant's user is
"not found" (404), never "forbidden": existence elsewhere is not disclosed. Platform admins
see everyone. Built once per app; each call is handed the request's session.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from functools import partial
from http import HTTPStatus
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from service.core.clock import utc_now
from service.core.errors import DomainError, Forbidden, NotFound
from service.core.pagination import CursorSigner, Page, keyset_page
from service.core.tenancy import TenantDirectory
from service.db.engine import after_commit
from service.identity.auth_state import AuthStateCache
from service.identity.models import User
from service.identity.passwords import Passwords
from service.identity.principal import Principal, Role
from service.identity.repository import RefreshTokenRepository, UserFilters, UserRepository
from service.identity.schemas import UserOut

USER_NOT_FOUND = "User not found"
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


async def provision_user(session: AsyncSession, passwords: Passwords, new: NewUser) -> User:
    """Insert a user without any permission check (the callers make them); a taken email
    is a Conflict."""
    user = User(
        email=new.email,
        password_hash=await passwords.hash(new.password),
        role=new.role.value,
        tenant_slug=new.tenant_slug,
        is_active=True,
        token_version=0,
    )
    return await UserRepository(session).add(user)


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


class UserService:
    def __init__(
        self,
        passwords: Passwords,
        auth_states: AuthStateCache,
        tenants: TenantDirectory,
        cursors: CursorSigner,
    ) -> None:
        self.passwords = passwords
        self.auth_states = auth_states
        self.tenants = tenants
        self.cursors = cursors

    async def get(self, session: AsyncSession, actor: Principal, user_id: uuid.UUID) -> User:
        user = await UserRepository(session).get(user_id)
        if user is None or not actor.can_see_tenant(user.tenant_slug):
            raise NotFound(USER_NOT_FOUND)
        return user

    async def create(
        self,
        session: AsyncSession,
        actor: Principal,
        *,
        email: str,
        password: str,
        role: Role,
        tenant_slug: str | None,
    ) -> User:
        if not _may_grant(actor, role):
            raise Forbidden(f"Your role may not create users with the role {role.value}")
        tenant = _tenant_for_new_user(actor, role, tenant_slug)
        if tenant is not None:
            known = self.tenants.get(tenant)
            # Tenants still provisioning count; one on its way out does not.
            if known is None or not known.accepts_new_users:
                raise NotFound("Tenant not found")
        new = NewUser(email=email, password=password, role=role, tenant_slug=tenant)
        return await provision_user(session, self.passwords, new)

    async def update(
        self, session: AsyncSession, actor: Principal, user_id: uuid.UUID, changes: dict[str, Any]
    ) -> User:
        """Apply the fields that were sent (`role`, `is_active`)."""
        user = await self.get(session, actor, user_id)
        _check_may_manage(actor, user)
        role = changes.get("role")
        if role is not None and Role(role) != Role(user.role):
            self._change_role(actor, user, Role(role))
        is_active = changes.get("is_active")
        if is_active is not None and is_active != user.is_active:
            await self._set_active(session, actor, user, active=bool(is_active))
        await UserRepository(session).save(user)
        # Every token check reads these columns from the cache: forget them once committed.
        after_commit(session, partial(self.auth_states.forget, user.id))
        return user

    async def deactivate(self, session: AsyncSession, actor: Principal, user_id: uuid.UUID) -> User:
        return await self.update(session, actor, user_id, {"is_active": False})

    async def list_page(
        self,
        session: AsyncSession,
        actor: Principal,
        filters: UserFilters,
        *,
        cursor: str | None,
        limit: int,
    ) -> Page[UserOut]:
        if not actor.is_platform_admin:
            if filters.tenant_slug not in (None, actor.tenant_slug):
                return Page(items=[], next_cursor=None, has_more=False)
            filters = UserFilters(
                tenant_slug=actor.tenant_slug,
                role=filters.role,
                is_active=filters.is_active,
                email_contains=filters.email_contains,
            )
        users = UserRepository(session)
        return await keyset_page(
            partial(users.list_page, filters),
            UserOut.model_validate,
            signer=self.cursors,
            scope=_scope(actor, filters),
            cursor=cursor,
            limit=limit,
        )

    def _change_role(self, actor: Principal, user: User, role: Role) -> None:
        if user.id == actor.user_id:
            raise Forbidden("You cannot change your own role")
        if (role is Role.PLATFORM_ADMIN) != (user.role == Role.PLATFORM_ADMIN):
            raise InvalidInput("Platform admins and tenant users cannot change into each other")
        if not _may_grant(actor, role):
            raise Forbidden(f"Your role may not grant the role {role.value}")
        user.role = role.value
        # Tokens carry the role: make the old ones fail so the next ones say the new role.
        user.token_version += 1

    async def _set_active(
        self, session: AsyncSession, actor: Principal, user: User, *, active: bool
    ) -> None:
        if user.id == actor.user_id:
            raise Forbidden("You cannot deactivate yourself")
        user.is_active = active
        if not active:
            user.token_version += 1
            await RefreshTokenRepository(session).revoke_for_user(user.id, utc_now())
