"""Engines and sessions: created once per app, one AsyncSession per request (writes), or
one `ReadConnection` (tenant reads: no session, statements run on the driver)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import Select, TextClause, event, make_url, text
from sqlalchemy.engine import URL, Dialect
from sqlalchemy.exc import DBAPIError, DisconnectionError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import ORMExecuteState, Session
from sqlalchemy.pool import ConnectionPoolEntry, NullPool, PoolProxiedConnection
from sqlalchemy.sql.cache_key import CacheKey
from sqlalchemy.sql.compiler import ExpandedState, SQLCompiler
from sqlalchemy.util import greenlet_spawn

from service.core.config import DatabaseSettings
from service.db.errors import is_unavailable

APPLICATION_NAME = "berth"
# Methods whose requests only read: their sessions run on autocommit connections.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_CHECKED_IN_AT = "berth.checked_in_at"
_QUERY_KEYWORDS = frozenset({"SELECT", "WITH", "VALUES", "TABLE", "SHOW", "EXPLAIN"})
# asyncpg prepares each statement once per connection and keeps it (an LRU per connection):
# the read path's own statements through `fetch`, SQLAlchemy's through its adapter.
STATEMENT_CACHE_SIZE = 256


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
            "statement_cache_size": STATEMENT_CACHE_SIZE,
            "prepared_statement_cache_size": STATEMENT_CACHE_SIZE,
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


_ANSWER_TYPES = (str, int, float, bool, tuple, type(None))


class ServerDialects:
    """What a PostgreSQL dialect learns on its engine's first connection, asked once per
    server and handed to every later engine on it.

    SQLAlchemy's `Dialect.initialize` asks a new engine's first connection for the server
    version, default schema, default isolation level and string escaping: six round trips
    (BEGIN, four queries, ROLLBACK) to a backend that has just started, ~2.2 ms here against
    ~3 ms for the connection itself. A tenant engine is made whenever an evicted tenant comes
    back, so with more active tenants than `engine_cache_size` every tenant switch paid them
    (docs/benchmarks.md, target r). Tenant databases on one server are provisioned alike by
    berth (no per-database or per-role settings), so the first engine's answers hold for all
    of them; a server is its URL without database and credentials.
    """

    def __init__(self) -> None:
        self._learnt: dict[tuple[Any, ...], dict[str, Any]] = {}

    def share(self, engine: AsyncEngine) -> None:
        """Let `engine` learn its server's dialect state, or adopt what an engine before it
        learnt; engines on other backends are left alone."""
        sync_engine = engine.sync_engine
        if sync_engine.dialect.name != "postgresql":
            return
        url = sync_engine.url
        key = (url.drivername, url.host, url.port, tuple(sorted(url.query.items())))
        dialect = sync_engine.dialect
        learnt = self._learnt.get(key)
        if learnt is not None:
            dialect.initialize = lambda connection: vars(dialect).update(learnt)  # type: ignore[method-assign]
            return
        initialize = dialect.initialize

        def initialize_and_learn(connection: Any) -> None:
            before = dict(vars(dialect))
            initialize(connection)
            self._learnt[key] = {
                name: value
                for name, value in vars(dialect).items()
                if isinstance(value, _ANSWER_TYPES)  # not the memo caches it builds as it goes
                and (name not in before or before[name] is not value)
            }

        dialect.initialize = initialize_and_learn  # type: ignore[method-assign]


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


# -- reads without a session -----------------------------------------------------------------

ReadRow = Sequence[Any]
ReadStatement = Select[*tuple[Any, ...]]
_Processor = Callable[[Any], Any]
_COMPILED_LIMIT = 512  # statement shapes kept compiled (a few dozen exist)
_compiled_reads: dict[tuple[str, str, Any], _CompiledRead] = {}


class RowReader(Protocol):
    """What a repository's reads need: rows of a SELECT (`ReadConnection`, `TenantReader`)."""

    async def all(
        self, statement: ReadStatement, params: Mapping[str, Any] | None = None
    ) -> Sequence[ReadRow]: ...


class ReadOnlyConnectionError(ReadOnlySessionError):
    """A statement other than a SELECT reached a read connection: a bug in a GET route."""


@dataclass(frozen=True, slots=True)
class _CompiledRead:
    """A SELECT compiled once for one dialect and statement shape."""

    compiled: SQLCompiler
    names: tuple[str, ...]  # the compiled name of each of the cache key's bound parameters
    binds: Mapping[str, _Processor]  # by compiled name, for the parameters that convert
    results: tuple[_Processor | None, ...] | None  # per column; None when no column converts

    def state(self, key: CacheKey, params: Mapping[str, Any] | None) -> ExpandedState:
        """The SQL and its parameters for this statement's values (expanding IN included)."""
        values = {
            name: bind.effective_value
            for name, bind in zip(self.names, key.bindparams, strict=True)
            if not bind.required
        }
        if params:
            values.update(params)
        return self.compiled.construct_expanded_state(values)

    def arguments(self, state: ExpandedState) -> tuple[Any, ...]:
        """The positional parameters the driver takes, converted for it."""
        assert state.positiontup is not None  # both drivers take positional parameters
        # An expanded IN's processors come with its state, the others were found once.
        binds = {**self.binds, **state.processors} if state.processors else self.binds
        values = state.parameters
        return tuple(
            binds[name](values[name]) if name in binds else values[name]
            for name in state.positiontup
        )


def _compile(statement: ReadStatement, key: CacheKey, dialect: Dialect) -> _CompiledRead:
    compiled = statement.compile(dialect=dialect)
    assert isinstance(compiled, SQLCompiler)
    if compiled.isinsert or compiled.isupdate or compiled.isdelete:
        raise ReadOnlyConnectionError("a read connection runs SELECTs only")
    # Clones made while compiling keep their key: match the cache key's parameters by it.
    by_key = {bind.key: name for bind, name in compiled.bind_names.items()}
    names = tuple(by_key[bind.key] for bind in key.bindparams)
    binds = {
        name: processor
        for bind, name in compiled.bind_names.items()
        if (processor := bind.type.dialect_impl(dialect).bind_processor(dialect)) is not None
    }
    results = tuple(
        column.type.dialect_impl(dialect).result_processor(dialect, None)
        for column in statement.selected_columns
    )
    return _CompiledRead(compiled, names, binds, results if any(results) else None)


def _compiled_read(statement: ReadStatement, dialect: Dialect) -> tuple[_CompiledRead, CacheKey]:
    """The statement compiled for `dialect`, looked up by its shape (SQLAlchemy's cache key,
    memoized on statements built once), and the key holding this statement's values."""
    if not isinstance(statement, Select):
        raise ReadOnlyConnectionError("a read connection runs SELECTs only")
    key = statement._generate_cache_key()
    if key is None:
        raise TypeError("a read statement must be cacheable")
    lookup = (dialect.name, dialect.driver, key.key)
    compiled = _compiled_reads.get(lookup)
    if compiled is None:
        compiled = _compile(statement, key, dialect)
        if len(_compiled_reads) >= _COMPILED_LIMIT:
            del _compiled_reads[next(iter(_compiled_reads))]
        _compiled_reads[lookup] = compiled
    return compiled, key


def _converted(row: ReadRow, processors: tuple[_Processor | None, ...]) -> ReadRow:
    return tuple(p(v) if p else v for p, v in zip(processors, row, strict=True))


async def _fetch_asyncpg(driver: Any, sql: str, arguments: tuple[Any, ...]) -> Sequence[ReadRow]:
    rows: Sequence[ReadRow] = await driver.fetch(sql, *arguments)
    return rows


async def _fetch_aiosqlite(driver: Any, sql: str, arguments: tuple[Any, ...]) -> Sequence[ReadRow]:
    return list(await driver.execute_fetchall(sql, arguments))


_FETCHERS = {"asyncpg": _fetch_asyncpg, "aiosqlite": _fetch_aiosqlite}


class ReadConnection:
    """One pooled connection for reads: SELECTs compiled once per dialect and shape, sent on
    the driver itself, with no Connection, transaction or session around them.

    Outside a transaction both drivers run each statement on its own (autocommit), as the
    read sessions do; asyncpg prepares a statement once per connection (`STATEMENT_CACHE_SIZE`).
    Anything but a SELECT construct is refused, as the read session refuses writes.
    """

    __slots__ = ("_dialect", "_driver", "_echo", "_fetch", "_pooled")
    _echo: Any  # the engine's own statement logger, when `echo` is on

    def __init__(self, engine: AsyncEngine, pooled: PoolProxiedConnection) -> None:
        self._dialect = engine.dialect
        self._fetch = _FETCHERS[self._dialect.driver]
        self._pooled = pooled
        self._driver = pooled.driver_connection
        self._echo = engine.sync_engine.logger if engine.echo else None

    @classmethod
    async def open(cls, engine: AsyncEngine) -> ReadConnection:
        """A connection checked out of the engine's pool (its checkout events run)."""
        if engine.dialect.driver not in _FETCHERS:
            raise TypeError(f"no read path for driver {engine.dialect.driver}")
        return cls(engine, await engine.raw_connection())

    async def all(
        self, statement: ReadStatement, params: Mapping[str, Any] | None = None
    ) -> Sequence[ReadRow]:
        compiled, key = _compiled_read(statement, self._dialect)
        state = compiled.state(key, params)
        if self._echo is not None:  # `echo` logs every statement, these too (not values)
            self._echo.info("[read] %s", state.statement)
        try:
            rows = await self._fetch(self._driver, state.statement, compiled.arguments(state))
        except Exception as exc:
            lost = await self._discard_if_lost(exc)
            raise DBAPIError.instance(
                state.statement,
                None,
                exc,
                Exception,
                hide_parameters=True,
                connection_invalidated=lost,
            ) from exc  # as SQLAlchemy raises it: an outage is then a 503, not a 500
        except BaseException as exc:  # cancelled mid-statement: its state is unknown
            await greenlet_spawn(self._pooled.invalidate, exc)
            raise
        if compiled.results is None:
            return rows
        return [_converted(row, compiled.results) for row in rows]

    async def _discard_if_lost(self, exc: Exception) -> bool:
        """Whether the connection is gone; if so, the pool never hands it out again."""
        lost = is_unavailable(exc) or bool(getattr(self._driver, "is_closed", bool)())
        if lost:
            await greenlet_spawn(self._pooled.invalidate, exc)
        return lost

    async def close(self) -> None:
        """Back to the pool (its reset and check-in events run)."""
        await greenlet_spawn(self._pooled.close)
