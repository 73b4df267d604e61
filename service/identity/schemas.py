"""Identity on the wire: log in, tokens, sign-up and user management.

Emails are normalised (trimmed, lower-case) on the way in; passwords follow the policy of
`passwords.py`; timestamps leave as UTC with a `Z` on every backend.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
    field_validator,
)

from service.core.clock import UtcDateTime
from service.core.pagination import Page
from service.core.tenancy import TenantSlug
from service.identity.emails import Email, normalise_email
from service.identity.models import MAX_EMAIL_LENGTH
from service.identity.passwords import MAX_PASSWORD_LENGTH, MIN_PASSWORD_LENGTH, password_problems
from service.identity.principal import Role

# Login accepts what may have been valid under an older policy, within a sane bound.
MAX_LOGIN_PASSWORD_LENGTH = 1024
MAX_REFRESH_TOKEN_LENGTH = 256

LoginEmail = Annotated[str, StringConstraints(min_length=1, max_length=MAX_EMAIL_LENGTH)]
OpaqueToken = Annotated[str, StringConstraints(min_length=1, max_length=MAX_REFRESH_TOKEN_LENGTH)]
NewPassword = Annotated[
    str, StringConstraints(min_length=MIN_PASSWORD_LENGTH, max_length=MAX_PASSWORD_LENGTH)
]


def check_password_policy(password: str, info: ValidationInfo) -> str:
    """Field validator body for models with `email` declared before `password`."""
    problems = password_problems(password, info.data.get("email"))
    if problems:
        raise ValueError("; ".join(problems))
    return password


# Tokens ----------------------------------------------------------------------------------


LoginPassword = Annotated[
    str, StringConstraints(min_length=1, max_length=MAX_LOGIN_PASSWORD_LENGTH)
]
LoginTenant = Annotated[
    TenantSlug | None,
    Field(description="The tenant of the account; needed only when the email is in several"),
]


class LoginRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    email: LoginEmail
    password: LoginPassword
    tenant: LoginTenant = None

    _normalise = field_validator("email", mode="after")(normalise_email)


class TokenForm(BaseModel):
    """The OAuth2 password grant as a form (RFC 6749 4.3.2), with berth's `tenant`; other
    fields an OAuth2 client sends (scope, client_id) are ignored."""

    model_config = ConfigDict(extra="ignore")

    grant_type: Literal["password"] | None = None
    username: LoginEmail
    password: LoginPassword
    tenant: LoginTenant = None

    _normalise = field_validator("username", mode="after")(normalise_email)


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


# Users -----------------------------------------------------------------------------------


class UserOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    email: str
    role: Role
    tenant_slug: str | None
    is_active: bool
    created_at: UtcDateTime
    updated_at: UtcDateTime


UserPage = Page[UserOut]


class UserCreate(BaseModel):
    """Tenant admins omit `tenant_slug` (their own tenant); platform admins name it."""

    model_config = ConfigDict(extra="forbid")

    email: Email
    password: NewPassword
    role: Role = Role.MEMBER
    tenant_slug: TenantSlug | None = None

    _password_policy = field_validator("password")(check_password_policy)


class UserPatch(BaseModel):
    """Partial update: only the fields sent are changed."""

    model_config = ConfigDict(extra="forbid")

    role: Role | None = None
    is_active: bool | None = None

    @field_validator("role", "is_active")
    @classmethod
    def _not_null(cls, value: object) -> object:
        # Runs only for fields that were sent: null is not a value for either.
        if value is None:
            raise ValueError("may not be null")
        return value
