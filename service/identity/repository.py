"""Every query on `users` and `refresh_tokens`. Never commits: the request's session does."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, CursorResult, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from service.core.pagination import PagePosition
from service.db.errors import flush_unique
from service.db.keyset import page_after
from service.identity.auth_state import AuthState
from service.identity.models import EMAIL_PER_PLATFORM, EMAIL_PER_TENANT, RefreshToken, User
from service.identity.principal import Role

# Said only within a tenant (or among platform admins): the address may exist elsewhere.
EMAIL_TAKEN = "A user with this email already exists"


@dataclass(frozen=True)
class UserFilters:
    tenant_slug: str | None = None
    role: Role | None = None
    is_active: bool | None = None
    email_contains: str | None = None


class UserRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def get(self, user_id: uuid.UUID) -> User | None:
        return await self.session.get(User, user_id)

    async def get_by_email(self, email: str, tenant_slug: str | None) -> User | None:
        """The user with `email` in `tenant_slug` (None: the platform admin with it)."""
        tenant = (
            User.tenant_slug.is_(None) if tenant_slug is None else User.tenant_slug == tenant_slug
        )
        result = await self.session.execute(select(User).where(User.email == email, tenant))
        return result.scalar_one_or_none()

    async def holders_of(self, email: str) -> list[User]:
        """Up to two users with `email`, the platform admin (if any) first: enough to know
        whether the address alone names one account."""
        statement = (
            select(User)
            .where(User.email == email)
            .order_by(User.tenant_slug.is_(None).desc())
            .limit(2)
        )
        return list((await self.session.scalars(statement)).all())

    async def auth_state(self, user_id: uuid.UUID) -> AuthState | None:
        # Core columns, not the entity: this runs on every authenticated request.
        statement = select(
            User.email, User.role, User.tenant_slug, User.is_active, User.token_version
        ).where(User.id == user_id)
        row = (await self.session.execute(statement)).one_or_none()
        if row is None:
            return None
        return AuthState(
            email=row.email,
            role=Role(row.role),
            tenant_slug=row.tenant_slug,
            is_active=row.is_active,
            token_version=row.token_version,
        )

    async def add(self, user: User) -> User:
        """Insert now (flush), so an email taken in the tenant is a Conflict here, not at
        commit."""
        self.session.add(user)
        await flush_unique(self.session, EMAIL_TAKEN, EMAIL_PER_TENANT, EMAIL_PER_PLATFORM)
        return user

    async def save(self, user: User) -> None:
        """Write pending changes now, so the caller sees server-side effects (updated_at)."""
        self.session.add(user)
        await self.session.flush()

    async def bump_token_version(self, user_id: uuid.UUID) -> int:
        statement = (
            update(User)
            .where(User.id == user_id)
            .values(token_version=User.token_version + 1)
            .returning(User.token_version)
            .execution_options(synchronize_session="fetch")
        )
        return int((await self.session.execute(statement)).scalar_one())

    async def list_page(
        self, filters: UserFilters, after: PagePosition | None, limit: int
    ) -> list[User]:
        """Up to `limit` users in (created_at, id) order, strictly after `after`."""
        statement = select(User).where(*_conditions(filters))
        statement = page_after(statement, User.created_at, User.id, after, limit)
        return list((await self.session.scalars(statement)).all())


def _conditions(filters: UserFilters) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = []
    if filters.tenant_slug is not None:
        conditions.append(User.tenant_slug == filters.tenant_slug)
    if filters.role is not None:
        conditions.append(User.role == filters.role.value)
    if filters.is_active is not None:
        conditions.append(User.is_active.is_(filters.is_active))
    if filters.email_contains:
        # Emails are stored lower-case; autoescape keeps % and _ literal.
        conditions.append(User.email.contains(filters.email_contains.lower(), autoescape=True))
    return conditions


@dataclass(frozen=True)
class ClaimedToken:
    user_id: uuid.UUID
    family_id: uuid.UUID


@dataclass(frozen=True)
class TokenRecord:
    user_id: uuid.UUID
    family_id: uuid.UUID
    used: bool


class RefreshTokenRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def add(
        self, *, user_id: uuid.UUID, family_id: uuid.UUID, token_hash: str, expires_at: datetime
    ) -> None:
        self.session.add(
            RefreshToken(
                user_id=user_id, family_id=family_id, token_hash=token_hash, expires_at=expires_at
            )
        )
        await self.session.flush()

    async def claim(self, token_hash: str, now: datetime) -> ClaimedToken | None:
        """Mark a live token used, atomically: of two concurrent uses exactly one wins."""
        statement = (
            update(RefreshToken)
            .where(
                RefreshToken.token_hash == token_hash,
                RefreshToken.used_at.is_(None),
                RefreshToken.revoked_at.is_(None),
                RefreshToken.expires_at > now,
            )
            .values(used_at=now)
            .returning(RefreshToken.user_id, RefreshToken.family_id)
            .execution_options(synchronize_session=False)
        )
        row = (await self.session.execute(statement)).one_or_none()
        return None if row is None else ClaimedToken(user_id=row.user_id, family_id=row.family_id)

    async def find(self, token_hash: str) -> TokenRecord | None:
        statement = select(
            RefreshToken.user_id, RefreshToken.family_id, RefreshToken.used_at
        ).where(RefreshToken.token_hash == token_hash)
        row = (await self.session.execute(statement)).one_or_none()
        if row is None:
            return None
        return TokenRecord(
            user_id=row.user_id, family_id=row.family_id, used=row.used_at is not None
        )

    async def revoke_family(self, family_id: uuid.UUID, now: datetime) -> int:
        return await self._revoke(RefreshToken.family_id == family_id, now)

    async def revoke_for_user(self, user_id: uuid.UUID, now: datetime) -> int:
        return await self._revoke(RefreshToken.user_id == user_id, now)

    async def _revoke(self, condition: ColumnElement[bool], now: datetime) -> int:
        statement = (
            update(RefreshToken)
            .where(condition, RefreshToken.revoked_at.is_(None))
            .values(revoked_at=now)
            .execution_options(synchronize_session=False)
        )
        result = await self.session.execute(statement)
        assert isinstance(result, CursorResult)
        return int(result.rowcount)
