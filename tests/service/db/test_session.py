"""One AsyncSession per request: committed on success, rolled back on any exception; GET,
HEAD and OPTIONS get a read-only session on an autocommit connection that refuses writes.

Runs against the real PostgreSQL (a fresh migrated database per test) and against SQLite.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime

import httpx
import pytest
from fastapi import APIRouter, FastAPI
from sqlalchemy import Executable, delete, func, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

from service.core.config import DatabaseSettings
from service.db.dependencies import DbSession
from service.db.engine import (
    ReadOnlySession,
    ReadOnlySessionError,
    SessionFactories,
    after_commit,
    create_engine,
    create_session_factories,
    session_scope,
)
from service.identity.models import User
from tests.conftest import ClientFactory
from tests.service.conftest import unique_email

OUTCOMES = [("ok", 200, 1), ("http", 409, 0), ("domain", 404, 0), ("crash", 500, 0)]


async def count_users(url: str, email: str) -> int:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as connection:
            result = await connection.execute(
                select(func.count()).select_from(User).where(User.email == email)
            )
            return int(result.scalar_one())
    finally:
        await engine.dispose()


@pytest.fixture(params=["postgres", "sqlite"])
def database_url(request: pytest.FixtureRequest) -> str:
    if request.param == "postgres":
        return str(request.getfixturevalue("pg_database"))
    return str(request.getfixturevalue("migrated_sqlite"))


@pytest.mark.parametrize(("outcome", "status", "rows"), OUTCOMES)
async def test_request_session_commits_only_when_the_route_succeeds(
    probe_app: Callable[..., FastAPI],
    client_for: ClientFactory,
    database_url: str,
    outcome: str,
    status: int,
    rows: int,
) -> None:
    client: httpx.AsyncClient = await client_for(probe_app(database={"url": database_url}))
    email = unique_email()

    response = await client.post("/api/v1/test/users", params={"email": email, "outcome": outcome})

    assert response.status_code == status
    assert await count_users(database_url, email) == rows


async def test_failed_commit_is_an_error_response_not_a_success(
    probe_app: Callable[..., FastAPI], client_for: ClientFactory, pg_database: str
) -> None:
    client = await client_for(probe_app(database={"url": pg_database}))
    email = unique_email()
    first = await client.post("/api/v1/test/users", params={"email": email, "outcome": "ok"})

    duplicate = await client.post("/api/v1/test/users", params={"email": email, "outcome": "ok"})

    assert first.status_code == 200
    assert duplicate.status_code == 500
    assert duplicate.json()["name"] == "InternalServerError"
    assert await count_users(pg_database, email) == 1


# Read and write session factories ---------------------------------------------------------


@pytest.fixture
async def factories(database_url: str) -> AsyncIterator[SessionFactories]:
    engine = create_engine(DatabaseSettings(url=database_url))
    yield create_session_factories(engine)
    await engine.dispose()


async def add_user(factories: SessionFactories) -> tuple[uuid.UUID, str]:
    email = unique_email()
    async with session_scope(factories.write) as session:
        user = User(email=email, password_hash="x", role="member", tenant_slug="demo")
        session.add(user)
    return user.id, email


async def emails_in(url: str) -> list[str]:
    """The committed emails, read on a connection of its own."""
    engine = create_async_engine(url)
    try:
        async with engine.connect() as connection:
            return list((await connection.scalars(select(User.email).order_by(User.email))).all())
    finally:
        await engine.dispose()


@pytest.mark.parametrize(
    ("method", "kind"),
    [
        *((method, "read") for method in ("GET", "HEAD", "OPTIONS")),
        *((method, "write") for method in ("POST", "PUT", "PATCH", "DELETE")),
    ],
)
async def test_safe_methods_get_the_read_factory_and_the_others_the_write_one(
    sqlite_url: str, method: str, kind: str
) -> None:
    engine = create_engine(DatabaseSettings(url=sqlite_url))
    try:
        factories = create_session_factories(engine)

        factory = factories.for_method(method)

        assert factory is (factories.read if kind == "read" else factories.write)
        async with factory() as session:
            assert isinstance(session.sync_session, ReadOnlySession) is (kind == "read")
    finally:
        await engine.dispose()


async def _add(session: AsyncSession, user_id: uuid.UUID) -> None:
    session.add(User(email=unique_email(), password_hash="x", role="member", tenant_slug="demo"))


async def _change(session: AsyncSession, user_id: uuid.UUID) -> None:
    user = await session.get(User, user_id)
    assert user is not None
    user.email = unique_email()


async def _delete(session: AsyncSession, user_id: uuid.UUID) -> None:
    user = await session.get(User, user_id)
    assert user is not None
    await session.delete(user)


@pytest.mark.parametrize("write", [_add, _change, _delete], ids=["add", "change", "delete"])
async def test_a_read_session_refuses_orm_writes_at_flush(
    factories: SessionFactories,
    database_url: str,
    write: Callable[[AsyncSession, uuid.UUID], Awaitable[None]],
) -> None:
    user_id, email = await add_user(factories)

    async with factories.read() as session:
        await write(session, user_id)
        with pytest.raises(ReadOnlySessionError):
            await session.flush()

    assert await emails_in(database_url) == [email]


@pytest.mark.parametrize(
    "statement",
    [
        pytest.param(
            lambda _: insert(User).values(
                email="inserted@example.com", password_hash="x", role="member", tenant_slug="d"
            ),
            id="insert",
        ),
        pytest.param(
            lambda user_id: update(User).where(User.id == user_id).values(role="admin"),
            id="update",
        ),
        pytest.param(lambda user_id: delete(User).where(User.id == user_id), id="delete"),
    ],
)
async def test_a_read_session_refuses_insert_update_and_delete_statements(
    factories: SessionFactories,
    database_url: str,
    statement: Callable[[uuid.UUID], Executable],
) -> None:
    user_id, email = await add_user(factories)

    async with factories.read() as session:
        with pytest.raises(ReadOnlySessionError):
            await session.execute(statement(user_id))

    assert await emails_in(database_url) == [email]
    async with factories.read() as session:  # reads are fine
        assert (await session.scalars(select(User.role))).all() == ["member"]


async def test_a_read_session_refuses_a_textual_write_too(
    factories: SessionFactories, database_url: str
) -> None:
    _, email = await add_user(factories)

    async with factories.read() as session:
        with pytest.raises(ReadOnlySessionError):
            await session.execute(
                text(
                    "INSERT INTO users (id, email, password_hash, role, tenant_slug, is_active,"
                    " token_version, created_at, updated_at) VALUES (:id, 'sneaky@example.com',"
                    " 'x', 'member', 'demo', true, 0, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
                ),
                {"id": uuid.uuid4().hex if "sqlite" in database_url else uuid.uuid4()},
            )

    assert await emails_in(database_url) == [email]


async def two_clock_readings(session: AsyncSession) -> tuple[datetime, datetime]:
    """now() twice, 50 ms apart: now() is the start time of the current transaction."""
    first = await session.scalar(text("SELECT now()"))
    await session.execute(text("SELECT pg_sleep(0.05)"))
    second = await session.scalar(text("SELECT now()"))
    assert first is not None
    assert second is not None
    return first, second


async def test_read_sessions_run_on_autocommit_connections_on_postgres(
    pg_database: str,
) -> None:
    """In a read session every statement is its own transaction; in a write session all of
    them share one."""
    engine = create_engine(DatabaseSettings(url=pg_database))
    factories = create_session_factories(engine)
    try:
        async with session_scope(factories.read) as session:
            read_first, read_second = await two_clock_readings(session)
        async with session_scope(factories.write) as session:
            write_first, write_second = await two_clock_readings(session)
    finally:
        await engine.dispose()

    assert read_second > read_first
    assert write_second == write_first


async def test_a_write_session_on_a_connection_a_read_session_used_is_a_transaction(
    pg_database: str,
) -> None:
    """One pooled connection serves both factories: autocommit does not stick to it."""
    engine = create_engine(DatabaseSettings(url=pg_database, pool_size=1, max_overflow=0))
    factories = create_session_factories(engine)
    email = unique_email()
    try:
        async with factories.read() as session:
            read_backend = await session.scalar(text("SELECT pg_backend_pid()"))
            await two_clock_readings(session)
        async with factories.write() as session:
            write_backend = await session.scalar(text("SELECT pg_backend_pid()"))
            first, second = await two_clock_readings(session)
            session.add(User(email=email, password_hash="x", role="member", tenant_slug="demo"))
            await session.flush()
            await session.rollback()
    finally:
        await engine.dispose()

    assert write_backend == read_backend
    assert first == second
    assert await count_users(pg_database, email) == 0


async def test_session_scope_commits_a_write_session_then_runs_its_after_commit_hooks(
    factories: SessionFactories, database_url: str
) -> None:
    email = unique_email()
    seen_by_hooks: list[list[str]] = []

    async def hook() -> None:  # reads on another connection: sees only what is committed
        seen_by_hooks.append(await emails_in(database_url))

    async with session_scope(factories.write) as session:
        session.add(User(email=email, password_hash="x", role="member", tenant_slug="demo"))
        after_commit(session, hook)
        after_commit(session, hook)

    assert seen_by_hooks == [[email], [email]]


async def test_session_scope_does_not_commit_a_read_session(
    factories: SessionFactories, database_url: str
) -> None:
    """A change left in a read session is not flushed at the end of the block (a commit
    would flush it, and the flush would refuse), and no after-commit hook runs."""
    user_id, email = await add_user(factories)
    hooks_run: list[str] = []

    async def hook() -> None:
        hooks_run.append("ran")

    async with session_scope(factories.read) as session:
        await _change(session, user_id)
        after_commit(session, hook)

    assert await emails_in(database_url) == [email]
    assert hooks_run == []


async def test_session_scope_runs_no_after_commit_hook_when_the_block_fails(
    factories: SessionFactories, database_url: str
) -> None:
    hooks_run: list[str] = []

    async def hook() -> None:
        hooks_run.append("ran")

    async def failing_block() -> None:
        async with session_scope(factories.write) as session:
            session.add(
                User(email=unique_email(), password_hash="x", role="member", tenant_slug="demo")
            )
            after_commit(session, hook)
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        await failing_block()

    assert hooks_run == []
    assert await emails_in(database_url) == []


def writing_get_router() -> APIRouter:
    router = APIRouter(prefix="/api/v1/test")

    @router.get("/write-in-get")
    async def write_in_get(session: DbSession, email: str) -> dict[str, str]:
        session.add(User(email=email, password_hash="x", role="member", tenant_slug="demo"))
        await session.flush()
        return {"written": email}

    return router


async def test_a_get_route_that_writes_fails_loudly_and_writes_nothing(
    probe_app: Callable[..., FastAPI], client_for: ClientFactory, database_url: str
) -> None:
    app = probe_app(database={"url": database_url})
    app.include_router(writing_get_router())
    client = await client_for(app)
    email = unique_email()

    response = await client.get("/api/v1/test/write-in-get", params={"email": email})
    written = await client.post("/api/v1/test/users", params={"email": email, "outcome": "ok"})

    assert response.status_code == 500
    assert response.json()["name"] == "InternalServerError"
    assert written.status_code == 200  # the same write through POST is committed
    assert await count_users(database_url, email) == 1
