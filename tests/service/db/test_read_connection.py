"""Session-less reads (`ReadConnection`): SELECTs compiled once per dialect and shape, sent on
the driver, on autocommit, prepared once per connection (asyncpg); anything else refused; a
lost connection a database error that leaves the pool.

The real PostgreSQL (a fresh migrated database per test) and SQLite.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import pytest
from sqlalchemy import (
    Executable,
    bindparam,
    column,
    delete,
    func,
    insert,
    select,
    table,
    text,
    update,
)
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from service.core.config import DatabaseSettings
from service.db import engine as engine_module
from service.db.engine import (
    ReadConnection,
    ReadOnlyConnectionError,
    ReadOnlySessionError,
    create_engine,
    create_session_factories,
    session_scope,
)
from service.db.errors import is_unavailable
from service.identity.models import User
from tests.service.conftest import unique_email
from tests.support import PG_ADMIN_URL, asyncpg_dsn

BY_EMAIL = select(User.id, User.email, User.created_at, User.is_active).where(
    User.email == bindparam("email")
)


@pytest.fixture(params=["postgres", "sqlite"])
def database_url(request: pytest.FixtureRequest) -> str:
    if request.param == "postgres":
        return str(request.getfixturevalue("pg_database"))
    return str(request.getfixturevalue("migrated_sqlite"))


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    """Two connections: the read connection's, and one for the sessions beside it."""
    engine = create_engine(DatabaseSettings(url=database_url, pool_size=2, max_overflow=0))
    yield engine
    await engine.dispose()


@pytest.fixture
async def connection(engine: AsyncEngine) -> AsyncIterator[ReadConnection]:
    connection = await ReadConnection.open(engine)
    yield connection
    await connection.close()


async def add_users(engine: AsyncEngine, count: int = 1) -> list[str]:
    emails = [unique_email() for _ in range(count)]
    async with session_scope(create_session_factories(engine).write) as session:
        for email in emails:
            session.add(User(email=email, password_hash="x", role="member", tenant_slug="demo"))
    return emails


async def session_rows(engine: AsyncEngine, email: str) -> list[tuple[Any, ...]]:
    async with session_scope(create_session_factories(engine).read) as session:
        return [tuple(row) for row in await session.execute(BY_EMAIL, {"email": email})]


async def test_rows_are_what_a_session_reads_on_both_backends(
    engine: AsyncEngine, connection: ReadConnection
) -> None:
    """Values are converted as SQLAlchemy converts them: UUIDs, datetimes, booleans."""
    [email] = await add_users(engine)

    rows = await connection.all(BY_EMAIL, {"email": email})

    assert [tuple(row) for row in rows] == await session_rows(engine, email)
    [(user_id, _, created_at, is_active)] = rows
    assert isinstance(user_id, uuid.UUID)
    assert created_at.year >= 2024
    assert is_active is True


async def test_values_built_into_a_statement_and_expanding_in_are_bound_per_call(
    engine: AsyncEngine, connection: ReadConnection
) -> None:
    """Statements of one shape share one compiled form, each with its own values."""
    emails = await add_users(engine, 3)

    def by_prefix(email: str) -> Any:
        return select(User.email).where(User.email == email)

    compiled_before = len(engine_module._compiled_reads)
    singles = [await connection.all(by_prefix(email)) for email in emails]
    compiled_after = len(engine_module._compiled_reads)
    listed = await connection.all(
        select(User.email).where(User.email.in_(bindparam("emails", expanding=True))),
        {"emails": emails[:2]},
    )

    assert [[row[0] for row in rows] for rows in singles] == [[email] for email in emails]
    assert compiled_after - compiled_before <= 1  # one shape (none if an earlier test made it)
    assert sorted(row[0] for row in listed) == sorted(emails[:2])


WRITES: list[Any] = [
    pytest.param(
        lambda: insert(User).values(
            email="inserted@example.com", password_hash="x", role="member", tenant_slug="d"
        ),
        id="insert",
    ),
    pytest.param(lambda: update(User).values(role="admin"), id="update"),
    pytest.param(lambda: delete(User), id="delete"),
    pytest.param(lambda: text("DELETE FROM users"), id="text"),
]


@pytest.mark.parametrize("statement", WRITES)
async def test_a_read_connection_refuses_anything_but_a_select(
    engine: AsyncEngine, connection: ReadConnection, statement: Callable[[], Executable]
) -> None:
    [email] = await add_users(engine)

    with pytest.raises(ReadOnlyConnectionError):
        await connection.all(statement())  # type: ignore[arg-type]

    assert issubclass(ReadOnlyConnectionError, ReadOnlySessionError)  # caught as before
    assert [row[1] for row in await connection.all(BY_EMAIL, {"email": email})] == [email]
    assert [row[1] for row in await session_rows(engine, email)] == [email]


async def test_each_read_is_its_own_transaction_on_postgres(pg_database: str) -> None:
    """No transaction is left open between reads: now() moves on (in a transaction it would
    stay at the transaction's start)."""
    engine = create_engine(DatabaseSettings(url=pg_database))
    connection = await ReadConnection.open(engine)
    try:
        [[first]] = await connection.all(select(func.now()))
        await connection.all(select(func.pg_sleep(0.05)))
        [[second]] = await connection.all(select(func.now()))
    finally:
        await connection.close()
        await engine.dispose()

    assert second > first


PREPARED = table("pg_prepared_statements", column("statement"))


async def test_a_statement_is_prepared_once_per_connection_on_postgres(pg_database: str) -> None:
    engine = create_engine(DatabaseSettings(url=pg_database, pool_size=1, max_overflow=0))
    [email] = await add_users(engine)
    connection = await ReadConnection.open(engine)
    try:
        for _ in range(3):
            assert len(await connection.all(BY_EMAIL, {"email": email})) == 1
        prepared = [row[0] for row in await connection.all(select(PREPARED.c.statement))]
    finally:
        await connection.close()
        await engine.dispose()

    assert len([sql for sql in prepared if "FROM users" in sql]) == 1, prepared


async def test_a_lost_connection_is_a_database_error_and_never_handed_out_again(
    pg_database: str,
) -> None:
    engine = create_engine(DatabaseSettings(url=pg_database, pool_size=1, max_overflow=0))
    connection = await ReadConnection.open(engine)
    try:
        [[pid]] = await connection.all(select(func.pg_backend_pid()))
        admin = await asyncpg.connect(asyncpg_dsn(PG_ADMIN_URL))
        try:
            await admin.execute("SELECT pg_terminate_backend($1)", pid)
        finally:
            await admin.close()
        with pytest.raises(DBAPIError) as raised:
            await connection.all(select(func.pg_backend_pid()))
        await connection.close()

        again = await ReadConnection.open(engine)
        [[new_pid]] = await again.all(select(func.pg_backend_pid()))
        await again.close()
    finally:
        await engine.dispose()

    assert raised.value.connection_invalidated
    assert is_unavailable(raised.value)  # answered as an outage: 503, not 500
    assert new_pid != pid
