"""The tenant-database history (articles, tags): its own Alembic history, on SQLite and on a
tenant database provisioned on the real PostgreSQL, migrated with the tenant's own role.

The schema is read back from the database (pg_catalog, SQLAlchemy's inspector).
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, inspect

from service.db import migrate
from service.db.base import Base, TenantBase
from service.tenants.migrate import (
    downgrade_tenant,
    tenant_head,
    tenant_lock_name,
    upgrade_tenant,
)
from service.tenants.registry import write_entry
from tests.conftest import SpawnFactory
from tests.service.tenants.conftest import ProvisionFactory, sqlite_entry
from tests.support import PG_CONSTRAINT_KINDS, Spawned, asyncpg_dsn, process_env, run_sync_on

TABLES = {"articles", "tags", "article_tags"}
CONSTRAINTS = {
    "articles": {
        "pk_articles": "PRIMARY KEY",
        "uq_articles_slug": "UNIQUE",
        "ck_articles_status_known": "CHECK",
    },
    "tags": {"pk_tags": "PRIMARY KEY", "uq_tags_name": "UNIQUE"},
    "article_tags": {
        "pk_article_tags": "PRIMARY KEY",
        "fk_article_tags_article_id_articles": "FOREIGN KEY",
        "fk_article_tags_tag_id_tags": "FOREIGN KEY",
    },
}
INDEXES = {
    "ix_articles_created_at_id": (["created_at", "id"], False),
    "ix_articles_author_id": (["author_id"], False),
    "ix_articles_status": (["status"], False),
    "ix_article_tags_tag_id": (["tag_id"], False),
}


@dataclass
class Schema:
    tables: set[str]
    constraints: dict[str, dict[str, str]] = field(default_factory=dict)
    indexes: dict[str, tuple[list[str], bool]] = field(default_factory=dict)
    versions: list[str] | None = None


async def pg_schema(url: str) -> Schema:
    connection = await asyncpg.connect(asyncpg_dsn(url), timeout=5)
    try:
        rows = await connection.fetch(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = 'public' AND c.relkind = 'r'"
        )
        schema = Schema(tables={row["relname"] for row in rows})
        for row in await connection.fetch(
            "SELECT t.relname AS table, con.conname, con.contype::text AS kind "
            "FROM pg_constraint con JOIN pg_class t ON t.oid = con.conrelid "
            "JOIN pg_namespace n ON n.oid = t.relnamespace WHERE n.nspname = 'public'"
        ):
            schema.constraints.setdefault(row["table"], {})[row["conname"]] = PG_CONSTRAINT_KINDS[
                row["kind"]
            ]
        for row in await connection.fetch(
            "SELECT i.relname AS name, ix.indisunique AS is_unique, ix.indisprimary AS is_pk, "
            "array(SELECT a.attname FROM unnest(ix.indkey) WITH ORDINALITY AS k(attnum, pos) "
            "      JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = k.attnum "
            "      ORDER BY k.pos) AS columns "
            "FROM pg_index ix JOIN pg_class i ON i.oid = ix.indexrelid "
            "JOIN pg_class t ON t.oid = ix.indrelid JOIN pg_namespace n ON n.oid = t.relnamespace "
            "WHERE n.nspname = 'public'"
        ):
            if not row["is_unique"]:  # unique ones are the constraints above
                schema.indexes[row["name"]] = (list(row["columns"]), False)
        if "alembic_version" in schema.tables:
            rows = await connection.fetch("SELECT version_num FROM alembic_version")
            schema.versions = [row["version_num"] for row in rows]
        return schema
    finally:
        await connection.close()


def _inspect_sqlite(connection: Connection) -> Schema:
    inspector = inspect(connection)
    schema = Schema(tables=set(inspector.get_table_names()))
    for table in schema.tables & TABLES:
        found = schema.constraints.setdefault(table, {})
        found[inspector.get_pk_constraint(table)["name"] or "?"] = "PRIMARY KEY"
        for unique in inspector.get_unique_constraints(table):
            found[unique["name"] or "?"] = "UNIQUE"
        for check in inspector.get_check_constraints(table):
            found[check["name"] or "?"] = "CHECK"
        for foreign_key in inspector.get_foreign_keys(table):
            found[foreign_key["name"] or "?"] = "FOREIGN KEY"
        for index in inspector.get_indexes(table):
            columns = [str(column) for column in index["column_names"]]
            schema.indexes[index["name"] or "?"] = (columns, bool(index["unique"]))
    if "alembic_version" in schema.tables:
        rows = connection.exec_driver_sql("SELECT version_num FROM alembic_version")
        schema.versions = [row[0] for row in rows]
    return schema


async def sqlite_schema(url: str) -> Schema:
    return await run_sync_on(url, _inspect_sqlite)


def assert_articles_schema(schema: Schema) -> None:
    assert schema.tables == {*TABLES, "alembic_version"}
    assert {table: schema.constraints[table] for table in TABLES} == CONSTRAINTS
    assert schema.indexes == INDEXES
    assert schema.versions == ["0001"]


def assert_base(schema: Schema) -> None:
    assert schema.tables == {"alembic_version"}
    assert schema.versions == []


async def test_tenant_history_round_trips_on_a_provisioned_postgres_database(
    provision: ProvisionFactory,
) -> None:
    """Real PostgreSQL, a tenant database made by the provisioning code, migrated as the
    tenant's own role."""
    entry = await provision("mig", migrate=False)
    url = entry.database_url.get_secret_value()
    assert (await pg_schema(url)).tables == set()

    assert await upgrade_tenant(entry) == tenant_head() == "0001"
    first = await pg_schema(url)
    assert_articles_schema(first)
    await assert_constraints_are_enforced(url)

    assert await downgrade_tenant(entry, "base") is None
    assert_base(await pg_schema(url))
    await upgrade_tenant(entry)
    assert await pg_schema(url) == first


async def test_tenant_history_round_trips_on_sqlite(tmp_path: Path) -> None:
    entry = sqlite_entry(tmp_path / "acme.db", "acme")
    url = entry.database_url.get_secret_value()

    assert await upgrade_tenant(entry) == "0001"
    first = await sqlite_schema(url)
    assert_articles_schema(first)

    await downgrade_tenant(entry, "base")
    assert_base(await sqlite_schema(url))
    await upgrade_tenant(entry)
    assert await sqlite_schema(url) == first


async def assert_constraints_are_enforced(url: str) -> None:
    connection = await asyncpg.connect(asyncpg_dsn(url), timeout=5)
    insert = (
        "INSERT INTO articles (id, slug, title, author_id, status) VALUES ($1, $2, 'T', $3, $4)"
    )
    try:
        article, tag, author = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
        await connection.execute(insert, article, "first", author, "draft")
        row = await connection.fetchrow("SELECT body, version, created_at FROM articles")
        assert (row["body"], row["version"]) == ("", 1)
        assert row["created_at"].tzinfo is not None
        with pytest.raises(asyncpg.UniqueViolationError, match="uq_articles_slug"):
            await connection.execute(insert, uuid.uuid4(), "first", author, "draft")
        with pytest.raises(asyncpg.CheckViolationError, match="ck_articles_status_known"):
            await connection.execute(insert, uuid.uuid4(), "second", author, "archived")
        await connection.execute("INSERT INTO tags (id, name) VALUES ($1, 'news')", tag)
        await connection.execute("INSERT INTO article_tags VALUES ($1, $2)", article, tag)
        await connection.execute("DELETE FROM articles")
        assert await connection.fetchval("SELECT count(*) FROM article_tags") == 0  # cascade
        await connection.execute("DELETE FROM tags")
    finally:
        await connection.close()


def _differences(connection: Connection) -> list[Any]:
    # Server defaults too on PostgreSQL; on SQLite Alembic reports the reflected `''` of
    # `body` as different from the model's `''` (a comparison artefact, not a difference).
    options = {"compare_type": True, "compare_server_default": connection.dialect.name != "sqlite"}
    context = MigrationContext.configure(connection, opts=options)
    return list(compare_metadata(context, TenantBase.metadata))


async def test_models_match_the_migrated_postgres_tenant_schema(
    provision: ProvisionFactory,
) -> None:
    entry = await provision("cmp")
    assert await run_sync_on(entry.database_url.get_secret_value(), _differences) == []


async def test_models_match_the_migrated_sqlite_tenant_schema(tenant_template: Path) -> None:
    assert await run_sync_on(f"sqlite+aiosqlite:///{tenant_template}", _differences) == []


def test_the_two_histories_keep_their_tables_apart() -> None:
    assert set(TenantBase.metadata.tables) == TABLES
    assert not TABLES & set(Base.metadata.tables)


async def lock_waiters(connection: asyncpg.Connection, key: int) -> int:
    return int(
        await connection.fetchval(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
            "AND classid = $1 AND objid = $2 AND objsubid = 1",
            (key >> 32) & 0xFFFFFFFF,
            key & 0xFFFFFFFF,
        )
    )


async def test_each_tenant_migrates_under_its_own_advisory_lock(
    provision: ProvisionFactory, registry_dir: Path, spawn: SpawnFactory
) -> None:
    """Real PostgreSQL: while a session holds tenant A's migration lock, a real
    `python -m service migrate --tenant A` waits on it (seen in pg_locks), and tenant B
    migrates meanwhile, not held up at all."""
    a, b = await provision("lka", migrate=False), await provision("lkb", migrate=False)
    write_entry(registry_dir, a)
    key = migrate.advisory_lock_key(tenant_lock_name(a.slug))
    assert key != migrate.advisory_lock_key(tenant_lock_name(b.slug))
    env = process_env(
        BERTH_ENVIRONMENT="test",
        BERTH_OBSERVABILITY__LOG_FORMAT="json",
        BERTH_TENANTS__REGISTRY_DIR=str(registry_dir),
    )
    holder = await asyncpg.connect(asyncpg_dsn(a.database_url.get_secret_value()), timeout=5)
    try:
        await holder.execute("SELECT pg_advisory_lock($1)", key)
        waiting = spawn("-m", "service", "migrate", "--tenant", a.slug, env=env, name="migrate")
        await wait_until(lambda: lock_waiters(holder, key), expected=1, process=waiting)

        assert await asyncio.wait_for(upgrade_tenant(b), timeout=30) == "0001"
        assert waiting.running()
        assert (await pg_schema(a.database_url.get_secret_value())).tables == set()

        await holder.execute("SELECT pg_advisory_unlock($1)", key)
        assert await waiting.wait(timeout=30) == 0, waiting.describe()
    finally:
        await holder.close()
    applied = [e for e in waiting.events() if e.get("event") == "tenant_migrations_applied"]
    assert [(e["tenant"], e["revision"]) for e in applied] == [(a.slug, "0001")]
    assert_articles_schema(await pg_schema(a.database_url.get_secret_value()))


async def test_in_process_migrations_of_two_tenants_at_once_both_succeed(
    provision: ProvisionFactory,
) -> None:
    """Alembic's environment is process-global: concurrent runs in one process take turns
    instead of corrupting each other (as an operator migrating many tenants would do)."""
    a, b = await provision("cca", migrate=False), await provision("ccb", migrate=False)

    revisions = await asyncio.gather(upgrade_tenant(a), upgrade_tenant(b))

    assert revisions == ["0001", "0001"]


async def wait_until(probe: Any, expected: int, process: Spawned, timeout: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while await probe() < expected:
        assert process.running(), process.describe()
        if loop.time() > deadline:
            pytest.fail("the migration never waited on its lock", pytrace=False)
        await asyncio.sleep(0.05)
