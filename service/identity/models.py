"""Control-plane identity: users of every tenant and the platform admins, and their refresh
tokens (opaque to clients, stored only as a SHA-256 hash, rotated on every use)."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import (
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    String,
    UniqueConstraint,
    Uuid,
    func,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from service.core.clock import utc_now
from service.db.base import Base
from service.identity.principal import ROLE_VALUES

MAX_EMAIL_LENGTH = 320
# An email is unique within a tenant, and among platform admins (who belong to none): one
# person may be a user of several tenants, and no tenant learns who is in another.
EMAIL_PER_TENANT = UniqueConstraint("tenant_slug", "email", name="uq_users_tenant_email")
EMAIL_PER_PLATFORM = Index(
    "uq_users_platform_admin_email",
    "email",
    unique=True,
    postgresql_where=text("tenant_slug IS NULL"),
    sqlite_where=text("tenant_slug IS NULL"),
)


class User(Base):
    __tablename__ = "users"
    __table_args__ = (
        CheckConstraint(f"role IN {ROLE_VALUES!r}", name="role_known"),
        # Platform admins belong to no tenant; everyone else to exactly one.
        CheckConstraint(
            "(role = 'platform_admin') = (tenant_slug IS NULL)", name="tenant_matches_role"
        ),
        EMAIL_PER_TENANT,
        EMAIL_PER_PLATFORM,
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    email: Mapped[str] = mapped_column(String(MAX_EMAIL_LENGTH))
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(32))
    tenant_slug: Mapped[str | None] = mapped_column(String(63), index=True)
    is_active: Mapped[bool] = mapped_column(default=True)
    # Bumped by logout-all: tokens minted under an older version stop working.
    token_version: Mapped[int] = mapped_column(default=0)
    # Set in Python as well as by the server: keyset pagination compares (created_at, id), and
    # SQLite's CURRENT_TIMESTAMP has whole seconds in another text format than bound values.
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utc_now, server_default=func.now()
    )
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utc_now, server_default=func.now(), onupdate=utc_now
    )


class RefreshToken(Base):
    __tablename__ = "refresh_tokens"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    user_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    # Every token rotated from one login shares the family: a replay revokes all of them.
    family_id: Mapped[uuid.UUID] = mapped_column(Uuid, index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utc_now, server_default=func.now()
    )
