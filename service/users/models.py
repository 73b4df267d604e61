"""Control-plane identity: users of every tenant and the platform admins."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum

from sqlalchemy import CheckConstraint, DateTime, String, Uuid, func
from sqlalchemy.orm import Mapped, mapped_column

from service.db.base import Base


class Role(StrEnum):
    PLATFORM_ADMIN = "platform_admin"
    OWNER = "owner"
    ADMIN = "admin"
    MEMBER = "member"


ROLE_VALUES = tuple(role.value for role in Role)


def utcnow() -> datetime:
    return datetime.now(UTC)


class User(Base):
    __tablename__ = "users"
    __table_args__ = (
        CheckConstraint(f"role IN {ROLE_VALUES!r}", name="role_known"),
        # Platform admins belong to no tenant; everyone else to exactly one.
        CheckConstraint(
            "(role = 'platform_admin') = (tenant_slug IS NULL)", name="tenant_matches_role"
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(32))
    tenant_slug: Mapped[str | None] = mapped_column(String(63), index=True)
    is_active: Mapped[bool] = mapped_column(default=True)
    # Bumped by logout-all: tokens minted under an older version stop working.
    token_version: Mapped[int] = mapped_column(default=0)
    # Set in Python as well as by the server: keyset pagination compares (created_at, id), and
    # SQLite's CURRENT_TIMESTAMP has whole seconds in another text format than bound values.
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, server_default=func.now()
    )
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, server_default=func.now(), onupdate=utcnow
    )
