"""One AsyncSession per request: committed on success, rolled back on any exception.

Runs against the real PostgreSQL (a fresh migrated database per test) and against SQLite.
"""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import create_async_engine

from service.users.models import User
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
