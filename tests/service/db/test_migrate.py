"""Alembic migrations on the real PostgreSQL and on SQLite, in process and as processes.

The schema is read back from the database itself (pg_catalog on PostgreSQL, SQLAlchemy's
inspector on SQLite), never from the models.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import (
    CheckConstraint,
    Column,
    Connection,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    inspect,
)
from sqlalchemy.exc import IntegrityError

from service.db import migrate
from service.db.base import NAMING_CONVENTION
from service.migrations.metadata import CONTROL_PLANE_METADATA
from tests.conftest import SpawnFactory
from tests.support import (
    PG_CONSTRAINT_KINDS,
    Spawned,
    asyncpg_dsn,
    migrations_head,
    process_env,
    run_sync_on,
)

HEAD = migrations_head()
USERS_REVISION = "0001"
USERS_CONSTRAINTS = {
    "pk_users": "PRIMARY KEY",
    "uq_users_email": "UNIQUE",
    "ck_users_role_known": "CHECK",
    "ck_users_tenant_matches_role": "CHECK",
}
USERS_INDEX = "ix_users_tenant_slug"
# At head: emails unique per tenant (0003) instead of across all of them.
HEAD_USERS_CONSTRAINTS = {
    **{k: v for k, v in USERS_CONSTRAINTS.items() if k != "uq_users_email"},
    "uq_users_tenant_email": "UNIQUE",
}
HEAD_USERS_INDEXES = {USERS_INDEX, "uq_users_platform_admin_email"}
LOCK_KEY = migrate.advisory_lock_key(migrate.CONTROL_PLANE_LOCK)


@dataclass
class Schema:
    """What the database reports: tables, constraints and indexes of `users`, versions."""

    tables: set[str]
    constraints: dict[str, str] = field(default_factory=dict)  # name -> kind
    definitions: dict[str, str] = field(default_factory=dict)  # name -> SQL, where known
    indexes: dict[str, tuple[list[str], bool]] = field(default_factory=dict)  # -> cols, unique
    versions: list[str] | None = None  # None: no alembic_version table at all


async def pg_schema(url: str) -> Schema:
    connection = await asyncpg.connect(asyncpg_dsn(url), timeout=5)
    try:
        tables = {
            row["relname"]
            for row in await connection.fetch(
                "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = 'public' AND c.relkind = 'r'"
            )
        }
        schema = Schema(tables=tables)
        rows = await connection.fetch(
            "SELECT con.conname, con.contype::text AS kind, pg_get_constraintdef(con.oid) AS sql "
            "FROM pg_constraint con JOIN pg_class t ON t.oid = con.conrelid "
            "JOIN pg_namespace n ON n.oid = t.relnamespace "
            "WHERE n.nspname = 'public' AND t.relname = 'users'"
        )
        for row in rows:
            schema.constraints[row["conname"]] = PG_CONSTRAINT_KINDS[row["kind"]]
            schema.definitions[row["conname"]] = row["sql"]
        rows = await connection.fetch(
            "SELECT i.relname AS name, ix.indisunique AS is_unique, "
            "array(SELECT a.attname FROM unnest(ix.indkey) AS k "
            "      JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = k) AS columns "
            "FROM pg_index ix JOIN pg_class i ON i.oid = ix.indexrelid "
            "JOIN pg_class t ON t.oid = ix.indrelid JOIN pg_namespace n ON n.oid = t.relnamespace "
            "WHERE n.nspname = 'public' AND t.relname = 'users'"
        )
        schema.indexes = {row["name"]: (list(row["columns"]), row["is_unique"]) for row in rows}
        if "alembic_version" in tables:
            rows = await connection.fetch("SELECT version_num FROM alembic_version")
            schema.versions = [row["version_num"] for row in rows]
        return schema
    finally:
        await connection.close()


def _inspect_sqlite(connection: Connection) -> Schema:
    inspector = inspect(connection)
    schema = Schema(tables=set(inspector.get_table_names()))
    if "users" in schema.tables:
        schema.constraints[inspector.get_pk_constraint("users")["name"] or "?"] = "PRIMARY KEY"
        for unique in inspector.get_unique_constraints("users"):
            schema.constraints[unique["name"] or "?"] = "UNIQUE"
        for check in inspector.get_check_constraints("users"):
            schema.constraints[check["name"] or "?"] = "CHECK"
            schema.definitions[check["name"] or "?"] = check["sqltext"]
        for index in inspector.get_indexes("users"):
            columns = [str(column) for column in index["column_names"]]
            schema.indexes[index["name"] or "?"] = (columns, bool(index["unique"]))
    if "alembic_version" in schema.tables:
        rows = connection.exec_driver_sql("SELECT version_num FROM alembic_version")
        schema.versions = [row[0] for row in rows]
    return schema


async def sqlite_schema(url: str) -> Schema:
    return await run_sync_on(url, _inspect_sqlite)


def assert_users_schema(schema: Schema, version: str) -> None:
    assert schema.tables == {"users", "alembic_version"}
    assert schema.constraints == USERS_CONSTRAINTS
    assert schema.indexes[USERS_INDEX] == (["tenant_slug"], False)
    assert schema.versions == [version]
    for role in ("platform_admin", "owner", "admin", "member"):
        assert role in schema.definitions["ck_users_role_known"]
    assert "tenant_slug IS NULL" in schema.definitions["ck_users_tenant_matches_role"]


def assert_base_schema(schema: Schema) -> None:
    """Down to base: only alembic_version is left, and it is empty."""
    assert schema.tables == {"alembic_version"}
    assert schema.constraints == {}
    assert schema.indexes == {}
    assert schema.versions == []


async def test_postgres_migrations_create_users_with_its_constraints_and_round_trip(
    empty_pg_database: str,
) -> None:
    """Real PostgreSQL (a fresh empty database); schema read from pg_catalog."""
    assert (await pg_schema(empty_pg_database)).tables == set()

    await migrate.upgrade(empty_pg_database, USERS_REVISION)
    first = await pg_schema(empty_pg_database)
    assert_users_schema(first, USERS_REVISION)
    assert first.definitions["uq_users_email"] == "UNIQUE (email)"
    assert first.definitions["pk_users"] == "PRIMARY KEY (id)"
    assert first.indexes["pk_users"] == (["id"], True)
    assert first.indexes["uq_users_email"] == (["email"], True)
    await assert_constraints_are_enforced(empty_pg_database)

    await migrate.downgrade(empty_pg_database, "base")
    assert_base_schema(await pg_schema(empty_pg_database))
    assert await migrate.current_revision(empty_pg_database) is None

    await migrate.upgrade(empty_pg_database, USERS_REVISION)
    assert await pg_schema(empty_pg_database) == first
    await migrate.upgrade(empty_pg_database)
    assert await migrate.current_revision(empty_pg_database) == HEAD


async def assert_constraints_are_enforced(url: str) -> None:
    connection = await asyncpg.connect(asyncpg_dsn(url), timeout=5)
    insert = (
        "INSERT INTO users (id, email, password_hash, role, tenant_slug, is_active, "
        "token_version) VALUES ($1, $2, 'x', $3, $4, true, 0)"
    )
    try:
        await connection.execute(insert, uuid.uuid4(), "a@example.com", "member", "acme")
        with pytest.raises(asyncpg.UniqueViolationError, match="uq_users_email"):
            await connection.execute(insert, uuid.uuid4(), "a@example.com", "member", "acme")
        with pytest.raises(asyncpg.CheckViolationError, match="ck_users_role_known"):
            await connection.execute(insert, uuid.uuid4(), "b@example.com", "root", "acme")
        with pytest.raises(asyncpg.CheckViolationError, match="ck_users_tenant_matches_role"):
            await connection.execute(insert, uuid.uuid4(), "c@example.com", "platform_admin", "x")
        await connection.execute("DELETE FROM users")
    finally:
        await connection.close()


async def test_sqlite_migrations_create_users_and_round_trip(sqlite_url: str) -> None:
    """Real SQLite file (aiosqlite); schema read with SQLAlchemy's inspector."""
    await migrate.upgrade(sqlite_url, USERS_REVISION)
    first = await sqlite_schema(sqlite_url)
    assert_users_schema(first, USERS_REVISION)

    await migrate.downgrade(sqlite_url, "base")
    assert_base_schema(await sqlite_schema(sqlite_url))
    assert await migrate.current_revision(sqlite_url) is None

    await migrate.upgrade(sqlite_url, USERS_REVISION)
    assert await sqlite_schema(sqlite_url) == first
    await migrate.upgrade(sqlite_url)
    assert await migrate.current_revision(sqlite_url) == HEAD


async def advisory_lock_waiters(connection: asyncpg.Connection) -> list[dict[str, Any]]:
    """Sessions other than `connection` waiting (not granted) for the migration lock."""
    rows = await connection.fetch(
        "SELECT l.pid, a.wait_event_type, a.wait_event FROM pg_locks l "
        "JOIN pg_stat_activity a ON a.pid = l.pid "
        "WHERE l.locktype = 'advisory' AND NOT l.granted AND l.pid <> pg_backend_pid() "
        "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
        "AND l.classid = $1 AND l.objid = $2 AND l.objsubid = 1",
        (LOCK_KEY >> 32) & 0xFFFFFFFF,
        LOCK_KEY & 0xFFFFFFFF,
    )
    return [dict(row) for row in rows]


async def wait_for_waiters(
    connection: asyncpg.Connection, runs: list[Spawned], count: int, timeout: float
) -> list[dict[str, Any]]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        for run in runs:
            assert run.running(), f"finished while the lock was held: {run.describe()}"
        waiters = await advisory_lock_waiters(connection)
        if len(waiters) >= count:
            return waiters
        await asyncio.sleep(0.1)
    pytest.fail(f"fewer than {count} sessions waited for the migration lock", pytrace=False)


async def test_two_concurrent_migrations_serialize_on_the_advisory_lock(
    empty_pg_database: str, spawn: SpawnFactory
) -> None:
    """Real PostgreSQL, two real `python -m service migrate` processes, and a test session
    that holds the migration advisory lock until both are seen waiting in pg_locks."""
    env = process_env(
        BERTH_DATABASE__URL=empty_pg_database,
        BERTH_ENVIRONMENT="test",
        BERTH_OBSERVABILITY__LOG_FORMAT="json",
    )
    holder = await asyncpg.connect(asyncpg_dsn(empty_pg_database), timeout=5)
    try:
        await holder.execute("SELECT pg_advisory_lock($1)", LOCK_KEY)
        started = time.monotonic()
        runs = [spawn("-m", "service", "migrate", env=env, name="migrate") for _ in range(2)]

        waiters = await wait_for_waiters(holder, runs, count=2, timeout=30)
        await asyncio.sleep(max(0.0, 1.5 - (time.monotonic() - started)))
        assert all(run.running() for run in runs), [run.describe() for run in runs]
        waiters = await advisory_lock_waiters(holder)
        assert len({waiter["pid"] for waiter in waiters}) == 2
        assert {(w["wait_event_type"], w["wait_event"]) for w in waiters} == {("Lock", "advisory")}
        assert (await pg_schema(empty_pg_database)).tables == set()  # nothing ran yet

        assert await holder.fetchval("SELECT pg_advisory_unlock($1)", LOCK_KEY) is True
        codes = [await run.wait(timeout=30) for run in runs]
    finally:
        await holder.close()

    assert codes == [0, 0], [run.describe() for run in runs]
    schema = await pg_schema(empty_pg_database)
    assert schema.versions == [HEAD]
    assert "users" in schema.tables
    # One of them migrated; the other waited, found the schema at head and did nothing.
    upgraded = [run for run in runs if "Running upgrade" in run.stdout()]
    assert len(upgraded) == 1, [run.describe() for run in runs]
    for run in runs:
        applied = [e for e in run.events() if e.get("event") == "migrations_applied"]
        assert [e["revision"] for e in applied] == [HEAD]


def test_naming_convention_names_every_kind_of_constraint() -> None:
    """Pure SQLAlchemy metadata: the names Alembic will emit, including a foreign key."""
    users = CONTROL_PLANE_METADATA.tables["users"]
    names = {constraint.name for constraint in users.constraints}
    assert names == set(HEAD_USERS_CONSTRAINTS)
    assert {index.name for index in users.indexes} == HEAD_USERS_INDEXES

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    Table("tenants", metadata, Column("id", Integer, primary_key=True))
    memberships = Table(
        "memberships",
        metadata,
        Column("id", Integer, primary_key=True),
        Column("tenant_id", Integer, ForeignKey("tenants.id"), index=True),
        Column("code", String(8), unique=True),
        CheckConstraint("id > 0", name="positive"),
    )
    names = {constraint.name for constraint in memberships.constraints}
    assert names == {
        "pk_memberships",
        "fk_memberships_tenant_id_tenants",
        "uq_memberships_code",
        "ck_memberships_positive",
    }
    assert {index.name for index in memberships.indexes} == {"ix_memberships_tenant_id"}


def _differences(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return list(compare_metadata(context, CONTROL_PLANE_METADATA))


async def test_models_match_the_migrated_postgres_schema(pg_database: str) -> None:
    """Real PostgreSQL migrated to head; alembic's autogenerate comparison finds nothing."""
    assert await run_sync_on(pg_database, _differences) == []


async def test_models_match_the_migrated_sqlite_schema(migrated_sqlite: str) -> None:
    """Real SQLite file migrated to head; alembic's autogenerate comparison finds nothing."""
    assert await run_sync_on(migrated_sqlite, _differences) == []


async def test_at_head_an_email_is_unique_per_tenant_and_among_platform_admins(
    empty_pg_database: str,
) -> None:
    """0003 on the real PostgreSQL: one address may be in several tenants (and be a platform
    admin's too), never twice in one tenant or twice among platform admins."""
    await migrate.upgrade(empty_pg_database)
    connection = await asyncpg.connect(asyncpg_dsn(empty_pg_database), timeout=5)
    insert = (
        "INSERT INTO users (id, email, password_hash, role, tenant_slug, is_active, "
        "token_version) VALUES ($1, 'a@example.com', 'x', $2, $3, true, 0)"
    )
    try:
        for role, tenant in (("member", "acme"), ("member", "globex"), ("platform_admin", None)):
            await connection.execute(insert, uuid.uuid4(), role, tenant)
        with pytest.raises(asyncpg.UniqueViolationError, match="uq_users_tenant_email"):
            await connection.execute(insert, uuid.uuid4(), "admin", "acme")
        with pytest.raises(asyncpg.UniqueViolationError, match="uq_users_platform_admin_email"):
            await connection.execute(insert, uuid.uuid4(), "platform_admin", None)
    finally:
        await connection.close()
    # Back to one address per user while one is shared: refused, and nothing is half done.
    with pytest.raises(IntegrityError, match="uq_users_email"):
        await migrate.downgrade(empty_pg_database, "0002")
    assert await migrate.current_revision(empty_pg_database) == HEAD
