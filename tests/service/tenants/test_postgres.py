"""A tenant's role and database on the real PostgreSQL: looked at before written (a second
run changes nothing), marked with their owner (never adopted, changed or dropped for
another), repaired when changed by hand, and passwords that really stop working when
rotated (on a scram-sha-256 cluster: the main server trusts local logins)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
from sqlalchemy import make_url

from service.tenants import postgres
from service.tenants.postgres import (
    LOCAL_OWNER,
    Change,
    DesiredTenant,
    Owner,
    OwnershipConflict,
    ServerUnreachable,
    drop_postgres,
    ensure_postgres,
    new_password,
    password_works,
    tenant_database_url,
    tenant_names,
)
from tests.pg_cluster import ScramCluster
from tests.service.tenants.conftest import unique_slug
from tests.support import asyncpg_dsn

pytestmark = pytest.mark.postgres


async def execute(admin_url: str, *statements: str, database: str | None = None) -> None:
    url = make_url(admin_url)
    if database is not None:
        url = url.set(database=database)
    connection = await asyncpg.connect(asyncpg_dsn(url.render_as_string(False)), timeout=5)
    try:
        for statement in statements:
            await connection.execute(statement)
    finally:
        await connection.close()


async def fetchval(admin_url: str, query: str, *args: object) -> object:
    connection = await asyncpg.connect(asyncpg_dsn(admin_url), timeout=5)
    try:
        return await connection.fetchval(query, *args)
    finally:
        await connection.close()


def operator_owner() -> Owner:
    return Owner.tenant_resource(str(uuid.uuid4()))


@pytest.fixture
async def slug(pg_server: str) -> AsyncIterator[str]:
    """A fresh tenant slug; whatever was made for it is dropped at the end."""
    value = unique_slug("pg")
    yield value
    names = tenant_names(value)
    await execute(
        pg_server,
        f'DROP DATABASE IF EXISTS "{names.database}" WITH (FORCE)',
        f'DROP ROLE IF EXISTS "{names.role}"',
    )


def desired(
    slug: str, owner: Owner, password: str = "first-password", **fields: int
) -> DesiredTenant:
    return DesiredTenant(slug=slug, password=password, owner=owner, **fields)


async def test_a_first_run_creates_and_marks_everything_a_second_changes_nothing(
    pg_server: str, slug: str
) -> None:
    owner = operator_owner()

    first = await ensure_postgres(pg_server, desired(slug, owner))
    second = await ensure_postgres(pg_server, desired(slug, owner))

    assert {Change.ROLE_CREATED, Change.DATABASE_CREATED, Change.PUBLIC_CONNECT_REVOKED} <= set(
        first.changes
    )
    assert second.changes == ()
    names = tenant_names(slug)
    marks = await fetchval(
        pg_server,
        "SELECT array["
        " shobj_description((SELECT oid FROM pg_roles WHERE rolname = $1), 'pg_authid'),"
        " shobj_description((SELECT oid FROM pg_database WHERE datname = $1), 'pg_database')]",
        names.role,
    )
    assert marks == [owner.mark, owner.mark]


async def test_another_owners_role_is_refused_and_left_as_it_is(pg_server: str, slug: str) -> None:
    first, second = operator_owner(), operator_owner()
    await ensure_postgres(pg_server, desired(slug, first))

    with pytest.raises(OwnershipConflict, match=first.mark):
        await ensure_postgres(pg_server, desired(slug, second, password="other"))
    with pytest.raises(OwnershipConflict):
        await drop_postgres(pg_server, slug, second)
    with pytest.raises(OwnershipConflict):
        await ensure_postgres(pg_server, desired(slug, LOCAL_OWNER))  # nor the CLI

    assert (await ensure_postgres(pg_server, desired(slug, first))).changes == ()
    assert await drop_postgres(pg_server, slug, first) == (
        f"database {tenant_names(slug).database}",
        f"role {tenant_names(slug).role}",
    )


async def test_the_operator_never_adopts_an_unmarked_role_the_cli_does(
    pg_server: str, slug: str
) -> None:
    await execute(pg_server, f'CREATE ROLE "{tenant_names(slug).role}" LOGIN')

    with pytest.raises(OwnershipConflict, match="carries no berth mark"):
        await ensure_postgres(pg_server, desired(slug, operator_owner()))
    adopted = await ensure_postgres(pg_server, desired(slug, LOCAL_OWNER))

    assert Change.ROLE_MARKED in adopted.changes


async def test_a_database_left_unmarked_by_a_crash_is_adopted_by_its_roles_owner(
    pg_server: str, slug: str
) -> None:
    owner = operator_owner()
    await ensure_postgres(pg_server, desired(slug, owner))
    await execute(pg_server, f'COMMENT ON DATABASE "{tenant_names(slug).database}" IS NULL')

    repaired = await ensure_postgres(pg_server, desired(slug, owner))

    assert repaired.changes == (Change.DATABASE_MARKED,)


async def test_grants_ownership_login_and_limits_changed_by_hand_are_put_back(
    pg_server: str, slug: str
) -> None:
    owner = operator_owner()
    await ensure_postgres(pg_server, desired(slug, owner, connection_limit=5))
    names = tenant_names(slug)
    await execute(
        pg_server,
        f'GRANT CONNECT ON DATABASE "{names.database}" TO PUBLIC',
        f'ALTER ROLE "{names.role}" NOLOGIN CONNECTION LIMIT 1',
        f'ALTER DATABASE "{names.database}" OWNER TO CURRENT_USER',
    )
    await execute(pg_server, "GRANT ALL ON SCHEMA public TO PUBLIC", database=names.database)

    repaired = await ensure_postgres(pg_server, desired(slug, owner, connection_limit=5))

    assert set(repaired.changes) == {
        Change.PUBLIC_CONNECT_REVOKED,
        Change.ROLE_LOGIN,
        Change.CONNECTION_LIMIT,
        Change.DATABASE_OWNER,
        Change.PUBLIC_SCHEMA_CLOSED,
    }
    assert (
        await ensure_postgres(pg_server, desired(slug, owner, connection_limit=5))
    ).changes == ()
    assert (
        await fetchval(
            pg_server, "SELECT rolconnlimit FROM pg_roles WHERE rolname = $1", names.role
        )
        == 5
    )


async def test_an_unreachable_server_says_so_without_the_password(slug: str) -> None:
    admin = "postgresql://admin:s3cret-admin@127.0.0.1:1/postgres"

    with pytest.raises(ServerUnreachable) as refused:
        await ensure_postgres(admin, desired(slug, operator_owner()))

    assert "127.0.0.1:1" in str(refused.value)
    assert "s3cret-admin" not in str(refused.value)


async def scram_admin_role(cluster: ScramCluster) -> str:
    """A CREATEDB CREATEROLE admin (not a superuser) on the scram cluster, as managed
    PostgreSQL offers; its URL."""
    name, password = f"admin_{uuid.uuid4().hex[:8]}", new_password()
    await execute(
        cluster.admin_url, f"CREATE ROLE \"{name}\" LOGIN CREATEDB CREATEROLE PASSWORD '{password}'"
    )
    return cluster.url(name, password, "postgres")


async def test_rotation_makes_the_old_password_stop_working(scram_server: ScramCluster) -> None:
    admin = await scram_admin_role(scram_server)
    slug, owner = unique_slug("rot"), operator_owner()
    names = tenant_names(slug)
    await ensure_postgres(admin, desired(slug, owner, password="old-password"))

    rotated = await ensure_postgres(
        admin, desired(slug, owner, password="new-password"), rotate=True
    )

    assert rotated.changes == (Change.PASSWORD_ROTATED,)
    assert not await password_works(admin, names, "old-password")
    assert await password_works(admin, names, "new-password")
    assert make_url(rotated.database_url).password == "new-password"
    assert await drop_postgres(admin, slug, owner)


async def test_a_password_changed_behind_the_operators_back_is_reset(
    scram_server: ScramCluster,
) -> None:
    admin = await scram_admin_role(scram_server)
    slug, owner = unique_slug("pw"), operator_owner()
    names = tenant_names(slug)
    await ensure_postgres(admin, desired(slug, owner, password="the-tenants-own"))
    await execute(scram_server.admin_url, f"ALTER ROLE \"{names.role}\" PASSWORD 'changed-by-hand'")

    repaired = await ensure_postgres(admin, desired(slug, owner, password="the-tenants-own"))

    assert repaired.changes == (Change.PASSWORD_RESET,)
    assert await password_works(admin, names, "the-tenants-own")
    assert (
        await ensure_postgres(admin, desired(slug, owner, password="the-tenants-own"))
    ).changes == ()
    await drop_postgres(admin, slug, owner)


def test_the_desired_state_never_shows_its_password() -> None:
    shown = repr(desired("acme", LOCAL_OWNER, password="hunter2-secret"))

    assert "hunter2-secret" not in shown
    assert postgres.PASSWORD_BYTES >= 32


def test_the_services_url_keeps_the_admin_urls_sslmode_and_nothing_else_of_its_query() -> None:
    admin = "postgresql://admin:pw@db.example:6432/postgres?sslmode=verify-full&application_name=a"

    url = make_url(tenant_database_url(admin, tenant_names("acme"), "tenant-pw"))

    assert (url.drivername, url.host, url.port) == ("postgresql+asyncpg", "db.example", 6432)
    assert (url.username, url.password, url.database) == ("tenant_acme", "tenant-pw", "tenant_acme")
    assert dict(url.query) == {"ssl": "verify-full"}
    plain = make_url(
        tenant_database_url("postgresql://admin@db/postgres", tenant_names("acme"), "x")
    )
    assert dict(plain.query) == {}
