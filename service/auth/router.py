"""/api/v1/auth: HTTP only; the rules live in service.auth.service."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from fastapi.security import OAuth2PasswordRequestForm

from service.auth.dependencies import (
    AuthServiceDep,
    CurrentClaims,
    CurrentPrincipal,
    TenantsDep,
)
from service.auth.schemas import (
    LoginRequest,
    LogoutRequest,
    LogoutResponse,
    RefreshRequest,
    RegisterRequest,
    TokenResponse,
)
from service.auth.service import TokenPair
from service.core.dependencies import DbSession, RequireJson
from service.core.ratelimit import (
    LoginIpRateLimit,
    RefreshIpRateLimit,
    RegisterIpRateLimit,
    account_identity,
    enforce,
)
from service.users.schemas import UserOut, normalise_email

router = APIRouter(prefix="/auth", tags=["auth"])
PasswordForm = Annotated[OAuth2PasswordRequestForm, Depends()]


async def limit_json_login(
    request: Request, response: Response, credentials: LoginRequest, _: LoginIpRateLimit
) -> None:
    # Named like the route's body parameter, so FastAPI reads one body, not two.
    await enforce(request, response, "login_per_account", account_identity(credentials.email))


async def limit_form_login(
    request: Request, response: Response, form: PasswordForm, _: LoginIpRateLimit
) -> None:
    email = normalise_email(form.username)
    await enforce(request, response, "login_per_account", account_identity(email))


def _token_response(pair: TokenPair) -> TokenResponse:
    return TokenResponse(
        access_token=pair.access_token,
        expires_in=pair.expires_in,
        refresh_token=pair.refresh_token,
        refresh_expires_in=pair.refresh_expires_in,
    )


@router.post(
    "/login",
    response_model=TokenResponse,
    summary="Log in with email and password (JSON)",
    dependencies=[RequireJson, Depends(limit_json_login)],
)
async def login(credentials: LoginRequest, service: AuthServiceDep) -> TokenResponse:
    return _token_response(await service.login(credentials.email, credentials.password))


@router.post(
    "/token",
    response_model=TokenResponse,
    summary="Log in with the OAuth2 password form (Swagger's Authorize uses this)",
    dependencies=[Depends(limit_form_login)],
)
async def token(form: PasswordForm, service: AuthServiceDep) -> TokenResponse:
    pair = await service.login(normalise_email(form.username), form.password)
    return _token_response(pair)


@router.post(
    "/refresh",
    response_model=TokenResponse,
    summary="Exchange a refresh token for new tokens (the old one is used up)",
    dependencies=[RequireJson],
)
async def refresh(
    body: RefreshRequest, service: AuthServiceDep, session: DbSession, _: RefreshIpRateLimit
) -> TokenResponse:
    return _token_response(await service.refresh(body.refresh_token, commit=session.commit))


@router.post(
    "/logout",
    response_model=LogoutResponse,
    summary="Revoke this access token and the session's refresh token",
    dependencies=[RequireJson],
)
async def logout(
    principal: CurrentPrincipal,
    claims: CurrentClaims,
    service: AuthServiceDep,
    body: LogoutRequest | None = None,
) -> LogoutResponse:
    refresh_token = body.refresh_token if body else None
    outcome = await service.logout(principal, claims, refresh_token)
    return LogoutResponse(
        access_token_revoked=outcome.access_token_revoked,
        refresh_tokens_revoked=outcome.refresh_tokens_revoked,
    )


@router.post(
    "/logout-all",
    response_model=LogoutResponse,
    summary="Sign out everywhere: every access and refresh token of this user stops working",
)
async def logout_all(principal: CurrentPrincipal, service: AuthServiceDep) -> LogoutResponse:
    outcome = await service.logout_all(principal)
    return LogoutResponse(
        access_token_revoked=outcome.access_token_revoked,
        refresh_tokens_revoked=outcome.refresh_tokens_revoked,
    )


@router.get("/me", response_model=UserOut, summary="The authenticated user")
async def me(principal: CurrentPrincipal, service: AuthServiceDep) -> UserOut:
    return UserOut.model_validate(await service.me(principal))


@router.post(
    "/register",
    response_model=UserOut,
    summary="Self sign-up as a member, where the tenant allows it",
    dependencies=[RequireJson],
)
async def register(
    body: RegisterRequest, service: AuthServiceDep, tenants: TenantsDep, _: RegisterIpRateLimit
) -> UserOut:
    user = await service.register(
        tenants, tenant_slug=body.tenant, email=body.email, password=body.password
    )
    return UserOut.model_validate(user)
