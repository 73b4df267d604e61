"""/api/v1/users: user management for tenant owners/admins and platform admins."""

from __future__ import annotations

import uuid
from http import HTTPStatus
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response

from service.core.dependencies import RequireJson
from service.core.errors import (
    INPUT_ERRORS,
    JSON_BODY_ERRORS,
    RATE_LIMITED_ERRORS,
    error_responses,
)
from service.core.http import API_PREFIX
from service.core.pagination import DEFAULT_PAGE_SIZE, CursorParam, PageSize
from service.core.routing import LeanRoute
from service.core.tenancy import TenantSlug
from service.db.dependencies import DbSession
from service.db.errors import DATABASE_ERRORS
from service.identity.dependencies import AUTHENTICATED_ERRORS, WriteRateLimit, require_role
from service.identity.models import MAX_EMAIL_LENGTH
from service.identity.principal import Principal, Role
from service.identity.repository import UserFilters
from service.identity.schemas import UserCreate, UserOut, UserPage, UserPatch
from service.identity.users_service import UserService
from service.identity.wiring import IDENTITY

PREFIX = "/users"
router = APIRouter(prefix=PREFIX, tags=["users"], route_class=LeanRoute)


def user_location(user_id: uuid.UUID) -> str:
    """Where a created user is (the `Location` of a 201)."""
    return f"{API_PREFIX}{PREFIX}/{user_id}"


async def get_user_service(request: Request) -> UserService:
    return IDENTITY.of(request).users


UserServiceDep = Annotated[UserService, Depends(get_user_service)]
# Every route needs a manager (403 for other roles, and for rules a role does not meet).
MANAGER_ERRORS = (*AUTHENTICATED_ERRORS, *DATABASE_ERRORS, HTTPStatus.FORBIDDEN, *INPUT_ERRORS)
WRITE_ERRORS = (*MANAGER_ERRORS, *JSON_BODY_ERRORS, *RATE_LIMITED_ERRORS)

# Members manage nobody; tenant owners and admins their tenant; platform admins everyone.
UserManager = Annotated[
    Principal, Depends(require_role(Role.PLATFORM_ADMIN, Role.OWNER, Role.ADMIN))
]


@router.get(
    "",
    response_model=UserPage,
    responses=error_responses(*MANAGER_ERRORS, HTTPStatus.BAD_REQUEST),
    summary="List users (keyset pagination)",
)
async def list_users(
    actor: UserManager,
    users: UserServiceDep,
    session: DbSession,
    role: Role | None = None,
    is_active: bool | None = None,
    email: Annotated[
        str | None, Query(max_length=MAX_EMAIL_LENGTH, description="Email contains this")
    ] = None,
    tenant: Annotated[TenantSlug | None, Query(description="Platform admins: one tenant")] = None,
    cursor: CursorParam = None,
    limit: PageSize = DEFAULT_PAGE_SIZE,
) -> UserPage:
    filters = UserFilters(tenant_slug=tenant, role=role, is_active=is_active, email_contains=email)
    return await users.list_page(session, actor, filters, cursor=cursor, limit=limit)


@router.get(
    "/{user_id}",
    response_model=UserOut,
    responses=error_responses(*MANAGER_ERRORS, HTTPStatus.NOT_FOUND),
    summary="One user",
)
async def get_user(
    user_id: uuid.UUID, actor: UserManager, users: UserServiceDep, session: DbSession
) -> UserOut:
    return UserOut.model_validate(await users.get(session, actor, user_id))


@router.post(
    "",
    response_model=UserOut,
    status_code=HTTPStatus.CREATED,
    summary="Create (invite) a user",
    dependencies=[RequireJson, WriteRateLimit],
    responses=error_responses(*WRITE_ERRORS, HTTPStatus.NOT_FOUND, HTTPStatus.CONFLICT),
)
async def create_user(
    body: UserCreate,
    response: Response,
    actor: UserManager,
    users: UserServiceDep,
    session: DbSession,
) -> UserOut:
    user = await users.create(
        session,
        actor,
        email=body.email,
        password=body.password,
        role=body.role,
        tenant_slug=body.tenant_slug,
    )
    response.headers["Location"] = user_location(user.id)
    return UserOut.model_validate(user)


@router.patch(
    "/{user_id}",
    response_model=UserOut,
    summary="Change role or active state (only the fields sent)",
    dependencies=[RequireJson, WriteRateLimit],
    responses=error_responses(*WRITE_ERRORS, HTTPStatus.NOT_FOUND),
)
async def update_user(
    user_id: uuid.UUID,
    body: UserPatch,
    actor: UserManager,
    users: UserServiceDep,
    session: DbSession,
) -> UserOut:
    changes = body.model_dump(exclude_unset=True)
    return UserOut.model_validate(await users.update(session, actor, user_id, changes))


@router.delete(
    "/{user_id}",
    response_model=UserOut,
    summary="Deactivate a user (is_active=false; nothing is deleted)",
    dependencies=[WriteRateLimit],
    responses=error_responses(*MANAGER_ERRORS, *RATE_LIMITED_ERRORS, HTTPStatus.NOT_FOUND),
)
async def deactivate_user(
    user_id: uuid.UUID, actor: UserManager, users: UserServiceDep, session: DbSession
) -> UserOut:
    return UserOut.model_validate(await users.deactivate(session, actor, user_id))
