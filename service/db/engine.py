"""Engines and sessions: created once in the lifespan, one AsyncSession per request."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event, make_url
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import NullPool

from service.core.config import DatabaseSettings

APPLICATION_NAME = "berth"


def safe_url(url: str | URL) -> str:
    """The URL with its password masked, fit for logs and error messages."""
    return make_url(url).render_as_string(hide_password=True)


def _ensure_sqlite_directory(url: URL) -> None:
    database = url.database
    if database and database != ":memory:" and not database.startswith("file:"):
        Path(database).parent.mkdir(parents=True, exist_ok=True)


def _sqlite_pragmas(dbapi_connection: Any, _: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


def create_engine(settings: DatabaseSettings) -> AsyncEngine:
    """An async engine for SQLite (aiosqlite) or PostgreSQL (asyncpg) from settings."""
    url = make_url(settings.url.get_secret_value())
    if url.get_backend_name() == "sqlite":
        _ensure_sqlite_directory(url)
        engine = create_async_engine(url, echo=settings.echo, hide_parameters=True)
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    return create_async_engine(
        url,
        echo=settings.echo,
        hide_parameters=True,  # statement parameters may hold secrets
        pool_size=settings.pool_size,
        max_overflow=settings.max_overflow,
        pool_timeout=settings.pool_timeout_seconds,
        pool_pre_ping=settings.pool_pre_ping,
        pool_recycle=settings.pool_recycle_seconds,
        connect_args={
            "timeout": settings.connect_timeout_seconds,
            "server_settings": {"application_name": APPLICATION_NAME},
        },
    )


def create_session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)


AFTER_COMMIT_KEY = "berth.after_commit"


def after_commit(session: AsyncSession, hook: Callable[[], Awaitable[None]]) -> None:
    """Run `hook` once this request's transaction has committed (e.g. cache invalidation,
    which before the commit would let a concurrent reader cache the old row again)."""
    session.info.setdefault(AFTER_COMMIT_KEY, []).append(hook)


@asynccontextmanager
async def session_scope(factory: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    """Commit when the block finishes cleanly, roll back on any exception (HTTP ones too).

    A context manager, so an exception raised in the block reaches the rollback right away
    (a dependency iterating a bare generator would leave it to the garbage collector).
    """
    async with factory() as session:
        try:
            yield session
        except BaseException:
            await session.rollback()
            raise
        await session.commit()
        for hook in session.info.pop(AFTER_COMMIT_KEY, []):
            await hook()


def create_engine_for_migrations(url: str) -> AsyncEngine:
    """A pool-less engine: a migration holds one connection for its whole run."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        _ensure_sqlite_directory(parsed)
    return create_async_engine(parsed, poolclass=NullPool, hide_parameters=True)
