"""Engines and sessions: created once per app, one AsyncSession per request."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import TextClause, event, make_url, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import ORMExecuteState, Session
from sqlalchemy.pool import ConnectionPoolEntry, NullPool

from service.core.config import DatabaseSettings

APPLICATION_NAME = "berth"
# Methods whose requests only read: their sessions run on autocommit connections.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_CHECKED_IN_AT = "berth.checked_in_at"
_QUERY_KEYWORDS = frozenset({"SELECT", "WITH", "VALUES", "TABLE", "SHOW", "EXPLAIN"})


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
    """An async engine for SQLite (aiosqlite) or PostgreSQL (asyncpg) from settings; no
    connection is made until the first use."""
    url = make_url(settings.url.get_secret_value())
    pool_options: dict[str, Any] = {
        "pool_size": settings.pool_size,
        "max_overflow": settings.max_overflow,
        "pool_timeout": settings.pool_timeout_seconds,
    }
    if url.get_backend_name() == "sqlite":
        _ensure_sqlite_directory(url)
        if url.database in (None, "", ":memory:"):
            pool_options = {}  # one in-memory database, one shared connection (StaticPool)
        engine = create_async_engine(url, echo=settings.echo, hide_parameters=True, **pool_options)
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    ping_every_checkout = settings.pool_pre_ping and settings.pool_ping_idle_seconds == 0
    engine = create_async_engine(
        url,
        echo=settings.echo,
        hide_parameters=True,  # statement parameters may hold secrets
        pool_pre_ping=ping_every_checkout,
        pool_recycle=settings.pool_recycle_seconds,
        connect_args={
            "timeout": settings.connect_timeout_seconds,
            "server_settings": {"application_name": APPLICATION_NAME},
        },
        **pool_options,
    )
    if settings.pool_pre_ping and not ping_every_checkout:
        ping_after_idle(engine, settings.pool_ping_idle_seconds)
    return engine


def ping_after_idle(engine: AsyncEngine, idle_seconds: float) -> None:
    """Ping a pooled connection at checkout only if it sat idle `idle_seconds` or more.

    SQLAlchemy's pre-ping costs asyncpg three round trips (BEGIN, `;`, ROLLBACK) on every
    checkout, more than the query of a cheap request. A connection returned a moment ago
    is as good as a pinged one; an idle one is where a restarted server or a proxy's idle
    timeout would show. A failed ping discards the connection and the pool opens another.
    """
    pool = engine.sync_engine.pool
    dialect = engine.sync_engine.dialect

    def remember(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        record.info[_CHECKED_IN_AT] = time.monotonic()

    def ping(dbapi_connection: Any, record: ConnectionPoolEntry, proxy: Any) -> None:
        checked_in_at = record.info.get(_CHECKED_IN_AT)
        # A brand-new connection (no check-in yet) was proven by connecting.
        if checked_in_at is None or time.monotonic() - checked_in_at < idle_seconds:
            return
        try:
            dialect.do_ping(dbapi_connection)
        except Exception as exc:
            raise DisconnectionError("pooled connection failed its ping") from exc

    event.listen(pool, "checkin", remember)
    event.listen(pool, "checkout", ping)


def create_session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)


class ReadOnlySession(Session):
    """A session for safe-method requests: it refuses to write (see `SessionFactories`)."""


class ReadOnlySessionError(RuntimeError):
    """A write was attempted in a read-only session: a bug in a GET/HEAD route."""


def _refuse_flush(session: Session, *_: Any) -> None:
    if session.new or session.dirty or session.deleted:
        raise ReadOnlySessionError("a read-only (GET/HEAD) session cannot write rows")


def _is_query_text(sql: str) -> bool:
    words = sql.lstrip(" \t\r\n(").split(None, 1)
    return bool(words) and words[0].upper() in _QUERY_KEYWORDS


def _refuse_dml(state: ORMExecuteState) -> None:
    """DML constructs, and textual SQL that does not start as a query, are refused.

    A data-modifying CTE in text (`WITH x AS (DELETE ...) SELECT ...`) or SQL sent through
    the raw connection would still pass: the guard is for mistakes, not for hostile code.
    """
    statement = state.statement
    is_write = state.is_insert or state.is_update or state.is_delete
    if is_write or (isinstance(statement, TextClause) and not _is_query_text(statement.text)):
        raise ReadOnlySessionError("a read-only (GET/HEAD) session cannot write")


event.listen(ReadOnlySession, "before_flush", _refuse_flush)
event.listen(ReadOnlySession, "do_orm_execute", _refuse_dml)


@dataclass(frozen=True, slots=True)
class SessionFactories:
    """Sessions for one engine: writes in a transaction, reads on autocommit connections.

    At READ COMMITTED, PostgreSQL's default, every statement sees its own snapshot whether or
    not a transaction is open, so a read-only transaction buys nothing and costs a BEGIN and
    a COMMIT round trip per request. Read sessions refuse writes, so a mistaken write in a
    GET route fails loudly instead of committing statement by statement.
    """

    write: async_sessionmaker[AsyncSession]
    read: async_sessionmaker[AsyncSession]

    def for_method(self, method: str) -> async_sessionmaker[AsyncSession]:
        return self.read if method in SAFE_METHODS else self.write


def create_session_factories(engine: AsyncEngine) -> SessionFactories:
    autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
    read = async_sessionmaker(
        autocommit, expire_on_commit=False, autoflush=False, sync_session_class=ReadOnlySession
    )
    return SessionFactories(write=create_session_factory(engine), read=read)


@dataclass(frozen=True)
class Database:
    """An engine and its session factories: the control plane, or one tenant's database."""

    engine: AsyncEngine
    sessions: SessionFactories

    @classmethod
    def open(cls, settings: DatabaseSettings) -> Database:
        engine = create_engine(settings)
        return cls(engine=engine, sessions=create_session_factories(engine))

    async def ping(self) -> None:
        """One round trip (readiness, start-up)."""
        async with self.engine.connect() as connection:
            await connection.execute(text("SELECT 1"))

    async def dispose(self) -> None:
        await self.engine.dispose()


AFTER_COMMIT_KEY = "berth.after_commit"


def after_commit(session: AsyncSession, hook: Callable[[], Awaitable[None]]) -> None:
    """Run `hook` once this request's transaction has committed.

    Services register their cache invalidations here (the one place for it in every
    feature): forgetting before the commit would let a concurrent reader cache the old row
    again, and a rolled-back change must not forget anything.
    """
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
        if isinstance(session.sync_session, ReadOnlySession):
            return  # nothing to commit: closing returns the connection
        await session.commit()
        for hook in session.info.pop(AFTER_COMMIT_KEY, []):
            await hook()


def create_engine_for_migrations(url: str) -> AsyncEngine:
    """A pool-less engine: a migration holds one connection for its whole run."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        _ensure_sqlite_directory(parsed)
    return create_async_engine(parsed, poolclass=NullPool, hide_parameters=True)
