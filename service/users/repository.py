"""Every query on `users`. Never commits: the request's session does (DbSession)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy import ColumnElement, and_, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from service.core.pagination import PagePosition
from service.db.engine import after_commit
from service.users.auth_state import AuthState, AuthStateCache
from service.users.models import Role, User


class EmailTaken(Exception):
    """The unique constraint on users.email refused an insert."""


@dataclass(frozen=True)
class UserFilters:
    tenant_slug: str | None = None
    role: Role | None = None
    is_active: bool | None = None
    email_contains: str | None = None


class UserRepository:
    """`auth_states`: the cache every request's token check reads (`auth_state.py`); writes to
    a user forget its entry after commit. Pass it wherever users are changed."""

    def __init__(self, session: AsyncSession, auth_states: AuthStateCache | None = None) -> None:
        self.session = session
        self.auth_states = auth_states

    async def get(self, user_id: uuid.UUID) -> User | None:
        return await self.session.get(User, user_id)

    async def get_by_email(self, email: str) -> User | None:
        result = await self.session.execute(select(User).where(User.email == email))
        return result.scalar_one_or_none()

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
        """Insert now (flush), so a duplicate email fails here and not at commit."""
        self.session.add(user)
        try:
            await self.session.flush()
        except IntegrityError as exc:
            # The session is now unusable; the caller raises and the request rolls back.
            if "email" not in str(exc.orig):
                raise
            raise EmailTaken(user.email) from exc
        return user

    async def save(self, user: User) -> None:
        """Write pending changes now, so the caller sees server-side effects (updated_at)."""
        self.session.add(user)
        await self.session.flush()
        self._forget_auth_state_after_commit(user.id)

    async def bump_token_version(self, user_id: uuid.UUID) -> int:
        statement = (
            update(User)
            .where(User.id == user_id)
            .values(token_version=User.token_version + 1)
            .returning(User.token_version)
            .execution_options(synchronize_session="fetch")
        )
        version = int((await self.session.execute(statement)).scalar_one())
        self._forget_auth_state_after_commit(user_id)
        return version

    def _forget_auth_state_after_commit(self, user_id: uuid.UUID) -> None:
        auth_states = self.auth_states
        if auth_states is None:
            return

        async def forget() -> None:
            await auth_states.forget(user_id)

        after_commit(self.session, forget)

    async def list_page(
        self, filters: UserFilters, after: PagePosition | None, limit: int
    ) -> list[User]:
        """Up to `limit` users in (created_at, id) order, strictly after `after`."""
        statement = select(User).order_by(User.created_at, User.id).limit(limit)
        for condition in _conditions(filters):
            statement = statement.where(condition)
        if after is not None:
            statement = statement.where(
                or_(
                    User.created_at > after.created_at,
                    and_(User.created_at == after.created_at, User.id > after.id),
                )
            )
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
