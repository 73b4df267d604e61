"""Users API models; emails are normalised (strip + lower-case) on the way in."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
    field_validator,
)

from service.auth.passwords import MAX_PASSWORD_LENGTH, MIN_PASSWORD_LENGTH, password_problems
from service.tenants.schemas import TenantSlug
from service.users.models import Role

MAX_EMAIL_LENGTH = 320
# Deliberately loose: one @, no spaces, a dot in the domain. Deliverability is not our job.
EMAIL_PATTERN = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
MAX_PAGE_SIZE = 100
DEFAULT_PAGE_SIZE = 50


def normalise_email(value: Any) -> Any:
    return value.strip().lower() if isinstance(value, str) else value


def _looks_like_email(value: str) -> str:
    if EMAIL_PATTERN.fullmatch(value) is None:
        raise ValueError("must be an email address (name@example.com)")
    return value


Email = Annotated[
    str,
    BeforeValidator(normalise_email),
    StringConstraints(max_length=MAX_EMAIL_LENGTH),
    AfterValidator(_looks_like_email),
]


def _as_utc(value: datetime) -> datetime:
    # SQLite hands back naive datetimes; every timestamp is stored in UTC.
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


UtcDatetime = Annotated[datetime, AfterValidator(_as_utc)]
NewPassword = Annotated[
    str, StringConstraints(min_length=MIN_PASSWORD_LENGTH, max_length=MAX_PASSWORD_LENGTH)
]


def check_password_policy(password: str, info: ValidationInfo) -> str:
    """Field validator body for models with `email` declared before `password`."""
    problems = password_problems(password, info.data.get("email"))
    if problems:
        raise ValueError("; ".join(problems))
    return password


class UserOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    email: str
    role: Role
    tenant_slug: str | None
    is_active: bool
    created_at: UtcDatetime
    updated_at: UtcDatetime


class UserPage(BaseModel):
    items: list[UserOut]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page")
    has_more: bool


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
