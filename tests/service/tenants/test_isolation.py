"""Isolation groundwork on the real PostgreSQL, with two tenants made by the provisioning code.

This server trusts every local connection (pg_hba `trust`), so passwords are not checked
here; CONNECT privileges are, and they are what keeps one tenant's role out of another
tenant's database.
"""

from __future__ import annotations

import asyncio
import random
import uuid

import asyncpg
import psycopg
import pytest
from sqlalchemy import make_url, select, text

from service.articles.models import Article
from service.core.config import DatabaseSettings, TenantSettings
from service.db import migrate
from service.db.engine import session_scope
from service.tenants.engines import TenantEngines
from service.tenants.postgres import tenant_names
from service.tenants.schemas import TenantEntry
from tests.service.tenants.conftest import ProvisionFactory
from tests.support import PG_ADMIN_URL, asyncpg_dsn

INSUFFICIENT_PRIVILEGE = "42501"
session_of = session_scope


def as_role_of(owner: TenantEntry, database_of: TenantEntry) -> str:
    """`owner`'s credentials, pointed at `database_of`'s database (a libpq URL)."""
    url = make_url(owner.database_url.get_secret_value())
    target = url.set(drivername="postgresql", database=tenant_names(database_of.slug).database)
    return target.render_as_string(hide_password=False)


async def test_a_tenant_role_cannot_connect_to_another_tenant_database(
    provision: ProvisionFactory,
) -> None:
    a, b = await provision("iso-a", migrate=False), await provision("iso-b", migrate=False)

    own = await asyncpg.connect(as_role_of(a, a), timeout=5)  # the control case
    try:
        assert await own.fetchval("SELECT current_user") == tenant_names(a.slug).role
    finally:
        await own.close()

    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied"):
        await asyncpg.connect(as_role_of(a, b), timeout=5)
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await asyncpg.connect(as_role_of(b, a), timeout=5)
    with pytest.raises(psycopg.OperationalError, match="permission denied for database") as raised:
        await psycopg.AsyncConnection.connect(as_role_of(a, b), connect_timeout=5)
    assert raised.value.sqlstate in (None, INSUFFICIENT_PRIVILEGE)


async def test_a_tenant_role_cannot_connect_to_the_control_plane(
    provision: ProvisionFactory, empty_pg_database: str
) -> None:
    """The control-plane migrations (0004) take CONNECT away from PUBLIC and give it to the
    role that runs them, the service's: no tenant reaches users and tokens, nor their names."""
    await migrate.upgrade(empty_pg_database)
    tenant = await provision("iso-cp", migrate=False)
    control_plane = make_url(empty_pg_database).database
    as_tenant = (
        make_url(tenant.database_url.get_secret_value())
        .set(drivername="postgresql", database=control_plane)
        .render_as_string(hide_password=False)
    )

    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied"):
        await asyncpg.connect(as_tenant, timeout=5)
    service = await asyncpg.connect(asyncpg_dsn(empty_pg_database), timeout=5)
    try:
        assert await service.fetchval("SELECT count(*) FROM users") == 0
    finally:
        await service.close()


async def test_a_role_with_no_grants_can_connect_to_no_tenant_database(
    provision: ProvisionFactory,
) -> None:
    """CONNECT is revoked from PUBLIC: any other login role on the server is kept out too."""
    a = await provision("iso-p", migrate=False)
    stranger = f"stranger_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(asyncpg_dsn(PG_ADMIN_URL), timeout=5)
    try:
        await admin.execute(f'CREATE ROLE "{stranger}" LOGIN')
        url = make_url(PG_ADMIN_URL).set(
            drivername="postgresql", username=stranger, database=tenant_names(a.slug).database
        )
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await asyncpg.connect(url.render_as_string(hide_password=False), timeout=5)
    finally:
        await admin.execute(f'DROP ROLE IF EXISTS "{stranger}"')
        await admin.close()


async def test_interleaved_sessions_of_two_tenants_never_see_each_other(
    provision: ProvisionFactory,
) -> None:
    """300 sessions at once through the engine cache, A and B interleaved at random, each
    inserting a row and reading the table back in its transaction: every session sees only
    its own tenant's rows, runs as its own role, and each database ends with exactly its
    own rows."""
    a, b = await provision("mix-a"), await provision("mix-b")
    engines = TenantEngines(
        TenantSettings(engine_cache_size=2, engine_pool_size=2, engine_max_overflow=2),
        DatabaseSettings(),
    )
    rng = random.Random(3)
    plan = [rng.choice((a, b)) for _ in range(300)]

    async def work(index: int, entry: TenantEntry) -> tuple[str, str, set[str]]:
        async with engines.lease(entry) as sessions, session_of(sessions.write) as session:
            session.add(Article(slug=f"s-{index}", title=f"{entry.slug}:{index}",
                                author_id=uuid.uuid4()))  # fmt: skip
            await session.flush()
            await asyncio.sleep(0)  # let the other tenant's sessions run in between
            role = await session.scalar(text("SELECT current_user"))
            titles = set((await session.scalars(select(Article.title))).all())
            return entry.slug, str(role), {title.split(":")[0] for title in titles}

    try:
        results = await asyncio.gather(*(work(i, entry) for i, entry in enumerate(plan)))
    finally:
        await engines.close()

    for slug, role, seen in results:
        assert role == tenant_names(slug).role
        assert seen == {slug}
    for entry in (a, b):
        connection = await asyncpg.connect(asyncpg_dsn(entry.database_url.get_secret_value()))
        try:
            titles = [row[0] for row in await connection.fetch("SELECT title FROM articles")]
        finally:
            await connection.close()
        assert len(titles) == sum(1 for e in plan if e is entry)
        assert {title.split(":")[0] for title in titles} == {entry.slug}
