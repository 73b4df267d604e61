"""Tenant engines on one server learn SQLAlchemy's dialect state once (`ServerDialects`).

Real PostgreSQL: two databases on the one server. What the engines send is recorded by
wrapping SQLAlchemy's asyncpg adapter `_prepare` (monkeypatch), where every statement
SQLAlchemy runs is prepared; the wrapper still prepares for real.
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.dialects.postgresql.asyncpg import AsyncAdapt_asyncpg_connection
from sqlalchemy.ext.asyncio import AsyncEngine

from service.core.config import DatabaseSettings
from service.db.engine import ServerDialects, create_engine

DIALECT_QUESTION = "pg_catalog.version()"


def engine_for(url: str) -> AsyncEngine:
    return create_engine(DatabaseSettings.model_validate({"url": url, "pool_size": 1}))


def record_statements(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every statement SQLAlchemy prepares on any asyncpg connection from now on."""
    sent: list[str] = []
    prepare = AsyncAdapt_asyncpg_connection._prepare

    async def recording_prepare(self: Any, operation: str, *args: Any) -> Any:
        sent.append(operation)
        return await prepare(self, operation, *args)

    monkeypatch.setattr(AsyncAdapt_asyncpg_connection, "_prepare", recording_prepare)
    return sent


async def select_one(engine: AsyncEngine) -> None:
    async with engine.connect() as connection:
        await connection.execute(text("SELECT 1"))


async def test_an_engine_after_the_first_on_a_server_connects_without_dialect_questions(
    pg_database: str, empty_pg_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    dialects = ServerDialects()
    first, second, unshared = (
        engine_for(pg_database),
        engine_for(empty_pg_database),
        engine_for(empty_pg_database),
    )
    sent = record_statements(monkeypatch)
    try:
        dialects.share(first)
        await select_one(first)
        first_sent, sent[:] = list(sent), []
        dialects.share(second)
        await select_one(second)
        second_sent, sent[:] = list(sent), []
        await select_one(unshared)
    finally:
        for engine in (first, second, unshared):
            await engine.dispose()

    assert any(DIALECT_QUESTION in sql for sql in first_sent)  # the recording sees them
    assert any(DIALECT_QUESTION in sql for sql in sent)  # an engine not sharing asks again
    assert second_sent == ["SELECT 1"]
    learnt, adopted = first.sync_engine.dialect, second.sync_engine.dialect
    assert adopted.server_version_info == learnt.server_version_info
    assert adopted.server_version_info is not None
    assert adopted.server_version_info >= (15,)
    assert adopted.default_schema_name == learnt.default_schema_name == "public"
    assert adopted.default_isolation_level == learnt.default_isolation_level == "READ COMMITTED"
    assert adopted._backslash_escapes is learnt._backslash_escapes is False  # type: ignore[attr-defined]


async def test_engines_sharing_a_server_keep_their_own_caches(
    pg_database: str, empty_pg_database: str
) -> None:
    """Only the server's answers are shared: the memo caches a dialect builds as it goes stay
    its own, so one engine can never change another's."""
    dialects = ServerDialects()
    first, second = engine_for(pg_database), engine_for(empty_pg_database)
    try:
        for engine in (first, second):
            dialects.share(engine)
            await select_one(engine)
    finally:
        for engine in (first, second):
            await engine.dispose()

    [learnt] = dialects._learnt.values()
    assert {"server_version_info", "default_schema_name", "default_isolation_level"} <= set(learnt)
    assert "_type_memos" not in learnt
    first_memos = first.sync_engine.dialect._type_memos  # type: ignore[attr-defined]
    assert second.sync_engine.dialect._type_memos is not first_memos  # type: ignore[attr-defined]


async def test_a_sqlite_engine_is_left_alone(tmp_path: Any) -> None:
    engine = engine_for(f"sqlite+aiosqlite:///{tmp_path / 'app.db'}")
    try:
        ServerDialects().share(engine)
        await select_one(engine)
    finally:
        await engine.dispose()

    assert "initialize" not in vars(engine.sync_engine.dialect)
