"""Who is calling, and may they: dependencies other features build on.

CurrentPrincipal             the authenticated caller (401 otherwise)
require_role(*roles)         a dependency: the principal, if its role is one of `roles`
                             (403 otherwise); roles are listed explicitly, no hierarchy
WriteRateLimit               put on write routes: per-principal write limit (429)

@router.post("/things", dependencies=[WriteRateLimit])
async def create(principal: Annotated[Principal, Depends(require_role(Role.OWNER))]): ...
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Request, Response
from fastapi.security import OAuth2PasswordBearer

from service.auth.principal import Principal
from service.auth.repository import RefreshTokenRepository
from service.auth.service import (
    BEARER,
    AuthContext,
    AuthService,
    authenticate,
    decode_access_token,
)
from service.auth.tokens import AccessClaims
from service.core.dependencies import DbSession, get_resources, get_store
from service.core.errors import Forbidden, Unauthorized
from service.core.ratelimit import enforce
from service.core.store import KeyValueStore
from service.db.engine import session_scope
from service.tenants.schemas import TenantLookup
from service.users.auth_state import AuthState, AuthStateCache
from service.users.models import Role
from service.users.repository import UserRepository

TOKEN_URL = "/api/v1/auth/token"  # noqa: S105 - a path
# auto_error=False: a missing token is answered by us, in the envelope, with our message.
oauth2_scheme = OAuth2PasswordBearer(tokenUrl=TOKEN_URL, auto_error=False)


async def get_auth_context(request: Request) -> AuthContext:
    context: AuthContext = request.app.state.auth
    return context


async def get_tenants(request: Request) -> TenantLookup | None:
    """The tenant registry, once the tenants feature has put one on app.state."""
    tenants: TenantLookup | None = getattr(request.app.state, "tenants", None)
    return tenants


AuthContextDep = Annotated[AuthContext, Depends(get_auth_context)]
TenantsDep = Annotated[TenantLookup | None, Depends(get_tenants)]


async def get_auth_service(request: Request, session: DbSession) -> AuthService:
    context = await get_auth_context(request)
    store = await get_store(request)
    users = UserRepository(session, auth_state_cache(context, store))
    tenants = await get_tenants(request)
    return AuthService(context, users, RefreshTokenRepository(session), store, tenants)


def auth_state_cache(context: AuthContext, store: KeyValueStore) -> AuthStateCache:
    return AuthStateCache(store, context.settings.state_cache_seconds)


AuthServiceDep = Annotated[AuthService, Depends(get_auth_service)]


async def current_claims(
    request: Request, token: Annotated[str | None, Depends(oauth2_scheme)]
) -> AccessClaims:
    if not token:
        raise Unauthorized("Authentication required", headers=BEARER)
    context = await get_auth_context(request)
    return decode_access_token(context.codec, token)


CurrentClaims = Annotated[AccessClaims, Depends(current_claims)]


async def current_principal(
    request: Request, token: Annotated[str | None, Depends(oauth2_scheme)]
) -> Principal:
    """The caller, checked against revocations and the user's current row.

    It reads the token itself rather than depending on `current_claims`: every node of a
    dependency graph costs each request (docs/benchmarks.md). No control-plane session per
    request either: the row is usually in the key-value store, and only a miss opens a
    short read-only session to fetch it.
    """
    claims = await current_claims(request, token)
    resources = await get_resources(request)

    async def read_state(user_id: uuid.UUID) -> AuthState | None:
        async with session_scope(resources.sessions.read) as session:
            return await UserRepository(session).auth_state(user_id)

    states = auth_state_cache(await get_auth_context(request), resources.store)
    return await authenticate(claims, states, read_state)


CurrentPrincipal = Annotated[Principal, Depends(current_principal)]


def require_role(*roles: Role) -> Callable[[Principal], Awaitable[Principal]]:
    """A dependency that yields the principal only if its role is one of `roles`."""
    if not roles:
        raise ValueError("require_role needs at least one role")
    allowed = frozenset(roles)

    async def guard(principal: CurrentPrincipal) -> Principal:
        if principal.role not in allowed:
            raise Forbidden("Your role does not allow this")
        return principal

    guard.__name__ = f"require_role_{'_'.join(sorted(role.value for role in allowed))}"
    return guard


async def limit_writes(request: Request, response: Response, principal: CurrentPrincipal) -> None:
    await enforce(request, response, "writes_per_principal", str(principal.user_id))


WriteRateLimit = Depends(limit_writes)
