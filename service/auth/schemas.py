"""Auth API models."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from service.tenants.schemas import TenantSlug
from service.users.schemas import (
    MAX_EMAIL_LENGTH,
    Email,
    NewPassword,
    check_password_policy,
    normalise_email,
)

# Login accepts what may have been valid under an older policy, within a sane bound.
MAX_LOGIN_PASSWORD_LENGTH = 1024
MAX_REFRESH_TOKEN_LENGTH = 256

LoginEmail = Annotated[str, StringConstraints(min_length=1, max_length=MAX_EMAIL_LENGTH)]
OpaqueToken = Annotated[str, StringConstraints(min_length=1, max_length=MAX_REFRESH_TOKEN_LENGTH)]


class LoginRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    email: LoginEmail
    password: str = Field(min_length=1, max_length=MAX_LOGIN_PASSWORD_LENGTH)

    _normalise = field_validator("email", mode="after")(normalise_email)


class TokenResponse(BaseModel):
    """OAuth2-compatible (`access_token`, `token_type`), plus the rotating refresh token."""

    access_token: str
    token_type: Literal["bearer"] = "bearer"  # noqa: S105 - OAuth2 type
    expires_in: int = Field(description="Seconds until the access token expires")
    refresh_token: str
    refresh_expires_in: int = Field(description="Seconds until the refresh token expires")


class RefreshRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    refresh_token: OpaqueToken


class LogoutRequest(BaseModel):
    """The session's refresh token, so that it is revoked along with the access token."""

    model_config = ConfigDict(extra="forbid")

    refresh_token: OpaqueToken | None = None


class LogoutResponse(BaseModel):
    access_token_revoked: bool
    refresh_tokens_revoked: int


class RegisterRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tenant: TenantSlug
    email: Email
    password: NewPassword

    _password_policy = field_validator("password")(check_password_policy)
