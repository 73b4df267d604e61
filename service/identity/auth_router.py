"""/api/v1/auth: HTTP only; the rules live in auth_service.py."""

from __future__ import annotations

from http import HTTPStatus
from typing import Annotated

from fastapi import APIRouter, Depends, Form, Request, Response
from sqlalchemy.ext.asyncio import AsyncSession

from service.core.dependencies import (
    LoginIpRateLimit,
    NoStore,
    RefreshIpRateLimit,
    RegisterIpRateLimit,
    RequireJson,
    enforce,
)
from service.core.errors import (
    FORM_BODY_ERRORS,
    JSON_BODY_ERRORS,
    RATE_LIMITED_ERRORS,
    RateLimited,
    error_responses,
)
from service.core.routing import LeanRoute
from service.db.dependencies import DbSession
from service.db.errors import DATABASE_ERRORS
from service.identity.auth_service import AuthService, LogoutOutcome, TokenPair
from service.identity.dependencies import AUTHENTICATED_ERRORS, CurrentClaims, CurrentPrincipal
from service.identity.emails import email_hash
from service.identity.schemas import (
    LoginRequest,
    LogoutRequest,
    LogoutResponse,
    RefreshRequest,
    RegisterRequest,
    TokenForm,
    TokenResponse,
    UserOut,
)
from service.identity.users_router import user_location
from service.identity.wiring import IDENTITY

router = APIRouter(prefix="/auth", tags=["auth"], route_class=LeanRoute)
PasswordForm = Annotated[TokenForm, Form()]


async def get_auth_service(request: Request) -> AuthService:
    return IDENTITY.of(request).auth


AuthServiceDep = Annotated[AuthService, Depends(get_auth_service)]
# Bad credentials or token (401), a suspended tenant (403), limits, an outage.
LOGIN_ERRORS = (
    HTTPStatus.UNAUTHORIZED,
    HTTPStatus.FORBIDDEN,
    *RATE_LIMITED_ERRORS,
    *DATABASE_ERRORS,
)


async def limit_login_account(
    request: Request, response: Response, auth: AuthService, email: str
) -> None:
    """Per account, counted once the body is valid (the per-IP limit ran before it)."""
    try:
        await enforce(request, response, "login_per_account", email_hash(email))
    except RateLimited:
        auth.locked_out()
        raise


def _token_response(pair: TokenPair) -> TokenResponse:
    return TokenResponse.model_validate(pair, from_attributes=True)


def _logout_response(outcome: LogoutOutcome) -> LogoutResponse:
    return LogoutResponse.model_validate(outcome, from_attributes=True)


async def _log_in(
    request: Request,
    response: Response,
    auth: AuthService,
    session: AsyncSession,
    *,
    email: str,
    password: str,
    tenant: str | None,
) -> TokenResponse:
    """Both login routes: the per-account limit once the body is valid, then the login."""
    await limit_login_account(request, response, auth, email)
    return _token_response(await auth.login(session, email, password, tenant))


@router.post(
    "/login",
    response_model=TokenResponse,
    summary="Log in with email and password (JSON)",
    dependencies=[NoStore, RequireJson],
    responses=error_responses(*LOGIN_ERRORS, *JSON_BODY_ERRORS),
)
async def login(
    credentials: LoginRequest,
    request: Request,
    response: Response,
    auth: AuthServiceDep,
    session: DbSession,
    _: LoginIpRateLimit,
) -> TokenResponse:
    return await _log_in(
        request,
        response,
        auth,
        session,
        email=credentials.email,
        password=credentials.password,
        tenant=credentials.tenant,
    )


@router.post(
    "/token",
    response_model=TokenResponse,
    summary="Log in with the OAuth2 password form (Swagger's Authorize uses this)",
    dependencies=[NoStore],
    responses=error_responses(*LOGIN_ERRORS, *FORM_BODY_ERRORS),
)
async def token(
    form: PasswordForm,
    request: Request,
    response: Response,
    auth: AuthServiceDep,
    session: DbSession,
    _: LoginIpRateLimit,
) -> TokenResponse:
    return await _log_in(
        request,
        response,
        auth,
        session,
        email=form.username,
        password=form.password,
        tenant=form.tenant,
    )


@router.post(
    "/refresh",
    response_model=TokenResponse,
    summary="Exchange a refresh token for new tokens (the old one is used up)",
    dependencies=[NoStore, RequireJson],
    responses=error_responses(*LOGIN_ERRORS, *JSON_BODY_ERRORS),
)
async def refresh(
    body: RefreshRequest, auth: AuthServiceDep, session: DbSession, _: RefreshIpRateLimit
) -> TokenResponse:
    return _token_response(await auth.refresh(session, body.refresh_token))


@router.post(
    "/logout",
    response_model=LogoutResponse,
    summary="Revoke this access token and the session's refresh token",
    dependencies=[RequireJson],
    responses=error_responses(*AUTHENTICATED_ERRORS, *DATABASE_ERRORS, *JSON_BODY_ERRORS),
)
async def logout(
    principal: CurrentPrincipal,
    claims: CurrentClaims,
    auth: AuthServiceDep,
    session: DbSession,
    body: LogoutRequest | None = None,
) -> LogoutResponse:
    refresh_token = body.refresh_token if body else None
    return _logout_response(await auth.logout(session, principal, claims, refresh_token))


@router.post(
    "/logout-all",
    response_model=LogoutResponse,
    summary="Sign out everywhere: every access and refresh token of this user stops working",
    responses=error_responses(*AUTHENTICATED_ERRORS, *DATABASE_ERRORS),
)
async def logout_all(
    principal: CurrentPrincipal, auth: AuthServiceDep, session: DbSession
) -> LogoutResponse:
    return _logout_response(await auth.logout_all(session, principal))


@router.get(
    "/me",
    response_model=UserOut,
    summary="The authenticated user",
    dependencies=[NoStore],
    responses=error_responses(*AUTHENTICATED_ERRORS, *DATABASE_ERRORS),
)
async def me(principal: CurrentPrincipal, auth: AuthServiceDep, session: DbSession) -> UserOut:
    return UserOut.model_validate(await auth.me(session, principal))


@router.post(
    "/register",
    response_model=UserOut,
    status_code=HTTPStatus.CREATED,
    summary="Self sign-up as a member, where the tenant allows it",
    dependencies=[RequireJson],
    responses=error_responses(
        *DATABASE_ERRORS,
        *JSON_BODY_ERRORS,
        *RATE_LIMITED_ERRORS,
        HTTPStatus.NOT_FOUND,
        HTTPStatus.CONFLICT,
    ),
)
async def register(
    body: RegisterRequest,
    response: Response,
    auth: AuthServiceDep,
    session: DbSession,
    _: RegisterIpRateLimit,
) -> UserOut:
    user = await auth.register(
        session, tenant_slug=body.tenant, email=body.email, password=body.password
    )
    response.headers["Location"] = user_location(user.id)
    return UserOut.model_validate(user)
