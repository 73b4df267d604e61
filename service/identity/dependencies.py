"""Who is calling, and may they: the dependencies other features build on.

CurrentPrincipal             the authenticated caller (401 otherwise)
require_role(*roles)         a dependency: the principal, if its role is one of `roles`
                             (403 otherwise); roles are listed explicitly, no hierarchy
WriteRateLimit               put on write routes: per-principal write limit (429)

@router.post("/things", dependencies=[WriteRateLimit])
async def create(principal: Annotated[Principal, Depends(require_role(Role.OWNER))]): ...
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Annotated

from fastapi import Depends, Request, Response
from fastapi.security import OAuth2PasswordBearer

from service.core.dependencies import enforce
from service.core.errors import Forbidden, Unauthorized
from service.core.http import API_PREFIX
from service.identity.auth_service import BEARER
from service.identity.principal import Principal, Role
from service.identity.tokens import AccessClaims
from service.identity.wiring import IDENTITY

TOKEN_URL = f"{API_PREFIX}/auth/token"
# auto_error=False: a missing token is answered by us, in the envelope, with our message.
oauth2_scheme = OAuth2PasswordBearer(tokenUrl=TOKEN_URL, auto_error=False)
BearerToken = Annotated[str | None, Depends(oauth2_scheme)]
# What a route that needs the principal may answer besides its own codes: no valid token, or
# Redis or the control plane unreachable for the check.
AUTHENTICATED_ERRORS = (HTTPStatus.UNAUTHORIZED, HTTPStatus.SERVICE_UNAVAILABLE)


async def current_claims(request: Request, token: BearerToken) -> AccessClaims:
    if not token:
        raise Unauthorized("Authentication required", headers=BEARER)
    return IDENTITY.of(request).auth.verify(token)


CurrentClaims = Annotated[AccessClaims, Depends(current_claims)]


class PrincipalBearer(OAuth2PasswordBearer):
    """The bearer scheme that also resolves the caller: checked against revocations and the
    user's current row (401 without a valid token).

    The token and the principal are one node of the dependency graph, not two: FastAPI spends
    ~10 µs per node and request (docs/benchmarks.md). Being the scheme itself, it still marks
    every route that needs the principal as secured in the OpenAPI document.
    """

    async def __call__(self, request: Request) -> Principal:  # type: ignore[override]
        token = await super().__call__(request)
        if not token:
            raise Unauthorized("Authentication required", headers=BEARER)
        auth = IDENTITY.of(request).auth
        return await auth.authenticate(auth.verify(token))


# Under the plain scheme's name: one security scheme in the OpenAPI document, not two.
current_principal = PrincipalBearer(
    tokenUrl=TOKEN_URL, auto_error=False, scheme_name=oauth2_scheme.scheme_name
)
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
