"""The control-plane database of the app's container, and the request's session on it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession

from service.core.slots import AppSlot
from service.db.engine import Database, session_scope

CONTROL_PLANE: AppSlot[Database] = AppSlot("control_plane")


async def get_db_session(request: Request) -> AsyncIterator[AsyncSession]:
    """A control-plane session: read-only on autocommit for GET/HEAD, else a transaction."""
    sessions = CONTROL_PLANE.of(request).sessions
    async with session_scope(sessions.for_method(request.method)) as session:
        yield session


# scope="function": commit/rollback runs when the route returns, before the response is sent,
# so a failed commit becomes an error response instead of a 200 over lost data.
DbSession = Annotated[AsyncSession, Depends(get_db_session, scope="function")]
