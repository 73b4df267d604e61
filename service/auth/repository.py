"""Every query on `refresh_tokens`. Never commits: the request's session does (DbSession)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, CursorResult, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from service.auth.models import RefreshToken


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
