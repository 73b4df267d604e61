"""/api/v1/users: user management for tenant owners/admins and platform admins."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Query

from service.auth.dependencies import (
    AuthContextDep,
    TenantsDep,
    WriteRateLimit,
    auth_state_cache,
    require_role,
)
from service.auth.principal import Principal
from service.auth.repository import RefreshTokenRepository
from service.core.dependencies import DbSession, RequireJson, SettingsDep, StoreDep
from service.core.pagination import MAX_CURSOR_LENGTH, cursor_key
from service.tenants.schemas import TenantSlug
from service.users.models import Role
from service.users.repository import UserFilters, UserRepository
from service.users.schemas import (
    DEFAULT_PAGE_SIZE,
    MAX_EMAIL_LENGTH,
    MAX_PAGE_SIZE,
    UserCreate,
    UserOut,
    UserPage,
    UserPatch,
)
from service.users.service import UserService

router = APIRouter(prefix="/users", tags=["users"])

# Members manage nobody; tenant owners and admins their tenant; platform admins everyone.
UserManager = Annotated[
    Principal, Depends(require_role(Role.PLATFORM_ADMIN, Role.OWNER, Role.ADMIN))
]


async def get_user_service(
    session: DbSession, context: AuthContextDep, settings: SettingsDep, store: StoreDep
) -> UserService:
    return UserService(
        UserRepository(session, auth_state_cache(context, store)),
        RefreshTokenRepository(session),
        context.passwords,
        cursor_key(settings.auth.jwt_secret.get_secret_value().encode(), "users"),
    )


UserServiceDep = Annotated[UserService, Depends(get_user_service)]


@router.get("", response_model=UserPage, summary="List users (keyset pagination)")
async def list_users(
    actor: UserManager,
    service: UserServiceDep,
    role: Role | None = None,
    is_active: bool | None = None,
    email: Annotated[
        str | None, Query(max_length=MAX_EMAIL_LENGTH, description="Email contains this")
    ] = None,
    tenant: Annotated[TenantSlug | None, Query(description="Platform admins: one tenant")] = None,
    cursor: Annotated[str | None, Query(max_length=MAX_CURSOR_LENGTH)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = DEFAULT_PAGE_SIZE,
) -> UserPage:
    filters = UserFilters(tenant_slug=tenant, role=role, is_active=is_active, email_contains=email)
    page = await service.list_page(actor, filters, cursor=cursor, limit=limit)
    return UserPage(
        items=[UserOut.model_validate(user) for user in page.items],
        next_cursor=page.next_cursor,
        has_more=page.has_more,
    )


@router.get("/{user_id}", response_model=UserOut, summary="One user")
async def get_user(user_id: uuid.UUID, actor: UserManager, service: UserServiceDep) -> UserOut:
    return UserOut.model_validate(await service.get(actor, user_id))


@router.post(
    "",
    response_model=UserOut,
    summary="Create (invite) a user",
    dependencies=[RequireJson, WriteRateLimit],
)
async def create_user(
    body: UserCreate, actor: UserManager, service: UserServiceDep, tenants: TenantsDep
) -> UserOut:
    user = await service.create(
        actor,
        email=body.email,
        password=body.password,
        role=body.role,
        tenant_slug=body.tenant_slug,
        tenants=tenants,
    )
    return UserOut.model_validate(user)


@router.patch(
    "/{user_id}",
    response_model=UserOut,
    summary="Change role or active state (only the fields sent)",
    dependencies=[RequireJson, WriteRateLimit],
)
async def update_user(
    user_id: uuid.UUID, body: UserPatch, actor: UserManager, service: UserServiceDep
) -> UserOut:
    changes = body.model_dump(exclude_unset=True)
    return UserOut.model_validate(await service.update(actor, user_id, changes))


@router.delete(
    "/{user_id}",
    response_model=UserOut,
    summary="Deactivate a user (is_active=false; nothing is deleted)",
    dependencies=[WriteRateLimit],
)
async def deactivate_user(
    user_id: uuid.UUID, actor: UserManager, service: UserServiceDep
) -> UserOut:
    return UserOut.model_validate(await service.deactivate(actor, user_id))
