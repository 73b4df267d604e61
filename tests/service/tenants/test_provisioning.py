"""Provisioning on the real PostgreSQL (and SQLite files): what the catalog says afterwards,
idempotency after a crash or a rerun, a non-superuser admin, and the registry entry."""

from __future__ import annotations

import stat
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy import make_url

from service.core.config import TenantSettings
from service.tenants import postgres, provisioning
from service.tenants.postgres import ProvisioningError, tenant_names
from service.tenants.provisioning import create_tenant, delete_tenant
from service.tenants.registry import TenantRegistry, entry_path, write_entry
from service.tenants.schemas import TenantStatus
from tests.service.tenants.conftest import ProvisionFactory, sqlite_entry, unique_slug
from tests.support import asyncpg_dsn

CONNECT = "CONNECT"


async def admin_connection(url: str, database: str | None = None) -> asyncpg.Connection:
    target = make_url(url)
    if database is not None:
        target = target.set(database=database)
    return await asyncpg.connect(asyncpg_dsn(target.render_as_string(False)), timeout=5)


async def database_facts(admin_url: str, slug: str) -> dict[str, object]:
    """Role, database and schema facts as the catalog reports them (PUBLIC is grantee 0)."""
    names = tenant_names(slug)
    admin = await admin_connection(admin_url)
    try:
        role = await admin.fetchrow(
            "SELECT r.rolcanlogin, r.rolsuper, r.rolcreatedb, r.rolcreaterole, a.rolpassword "
            "FROM pg_roles r JOIN pg_authid a ON a.oid = r.oid WHERE r.rolname = $1",
            names.role,
        )
        database = await admin.fetchrow(
            "SELECT pg_get_userbyid(datdba) AS owner, "
            "array(SELECT (e.grantee::regrole)::text || ':' || e.privilege_type "
            "      FROM aclexplode(datacl) e WHERE e.grantee <> 0 ORDER BY 1) AS grants, "
            "EXISTS (SELECT 1 FROM aclexplode(datacl) e WHERE e.grantee = 0 "
            "        AND e.privilege_type = 'CONNECT') AS public_connect "
            "FROM pg_database WHERE datname = $1",
            names.database,
        )
    finally:
        await admin.close()
    inside = await admin_connection(admin_url, names.database)
    try:
        public_schema = await inside.fetchval(
            "SELECT EXISTS (SELECT 1 FROM pg_namespace n, aclexplode(n.nspacl) e "
            "WHERE n.nspname = 'public' AND e.grantee = 0)"
        )
        owners = await inside.fetch("SELECT DISTINCT tableowner FROM pg_tables "
                                    "WHERE schemaname = 'public'")  # fmt: skip
    finally:
        await inside.close()
    return {
        "login": role["rolcanlogin"],
        "powers": (role["rolsuper"], role["rolcreatedb"], role["rolcreaterole"]),
        "password": role["rolpassword"],
        "owner": database["owner"],
        "grants": list(database["grants"]),
        "public_connect": database["public_connect"],
        "public_uses_schema": public_schema,
        "table_owners": {row["tableowner"] for row in owners},
    }


def assert_locked_down(facts: dict[str, object], role: str) -> None:
    assert facts["login"] is True
    assert facts["powers"] == (False, False, False)
    assert str(facts["password"]).startswith("SCRAM-SHA-256$")  # sent hashed, stored hashed
    assert facts["owner"] == role
    assert f"{role}:{CONNECT}" in facts["grants"]  # type: ignore[operator]
    assert facts["public_connect"] is False
    assert facts["public_uses_schema"] is False


async def test_a_tenant_gets_a_login_role_owning_a_database_nobody_else_may_connect_to(
    pg_server: str, provision: ProvisionFactory
) -> None:
    entry = await provision("own")
    names = tenant_names(entry.slug)
    url = make_url(entry.database_url.get_secret_value())

    facts = await database_facts(pg_server, entry.slug)

    assert_locked_down(facts, names.role)
    assert facts["table_owners"] == {names.role}  # migrated as the tenant's own role
    assert (url.drivername, url.username, url.database) == (
        "postgresql+asyncpg", names.role, names.database,
    )  # fmt: skip
    assert url.password is not None
    assert len(url.password) >= 40  # secrets.token_urlsafe(32)


async def test_provisioning_again_rotates_the_password_and_keeps_the_data(
    pg_server: str, provision: ProvisionFactory
) -> None:
    entry = await provision("rot")
    before = await database_facts(pg_server, entry.slug)
    tenant = await asyncpg.connect(asyncpg_dsn(entry.database_url.get_secret_value()))
    try:
        await tenant.execute(
            "INSERT INTO tags (id, name) VALUES ($1, 'kept')", uuid.uuid4()
        )  # fmt: skip
    finally:
        await tenant.close()

    new_url = await provisioning.provision_postgres(pg_server, entry.slug)

    after = await database_facts(pg_server, entry.slug)
    assert make_url(new_url).password != make_url(entry.database_url.get_secret_value()).password
    assert after["password"] != before["password"]
    assert {k: v for k, v in after.items() if k != "password"} == {
        k: v for k, v in before.items() if k != "password"
    }
    tenant = await asyncpg.connect(asyncpg_dsn(new_url))
    try:
        assert await tenant.fetchval("SELECT name FROM tags") == "kept"
    finally:
        await tenant.close()


async def test_provisioning_finishes_the_job_after_a_crash_left_only_the_role(
    pg_server: str,
) -> None:
    slug = unique_slug("crash")
    role = tenant_names(slug).role
    admin = await admin_connection(pg_server)
    try:
        await admin.execute(f'CREATE ROLE "{role}" LOGIN')  # the crash came right after this
    finally:
        await admin.close()
    try:
        await provisioning.provision_postgres(pg_server, slug)
        assert_locked_down(await database_facts(pg_server, slug), role)
    finally:
        await postgres.drop_postgres(pg_server, slug)


@pytest.fixture
async def non_superuser_admin(pg_server: str) -> AsyncIterator[str]:
    """An admin with CREATEDB and CREATEROLE only, as a managed PostgreSQL gives."""
    name = f"berth_admin_{uuid.uuid4().hex[:10]}"
    admin = await admin_connection(pg_server)
    try:
        await admin.execute(f'CREATE ROLE "{name}" LOGIN CREATEDB CREATEROLE')
    finally:
        await admin.close()
    yield make_url(pg_server).set(username=name).render_as_string(hide_password=False)
    admin = await admin_connection(pg_server)
    try:
        await admin.execute(f'DROP ROLE IF EXISTS "{name}"')
    finally:
        await admin.close()


async def test_a_non_superuser_admin_provisions_and_drops_a_tenant(
    pg_server: str, non_superuser_admin: str
) -> None:
    slug = unique_slug("nsu")
    names = tenant_names(slug)
    try:
        url = await provisioning.provision_postgres(non_superuser_admin, slug)
        assert make_url(url).username == names.role
        assert_locked_down(await database_facts(pg_server, slug), names.role)

        await postgres.drop_postgres(non_superuser_admin, slug)
    finally:
        await postgres.drop_postgres(pg_server, slug)  # whatever happened above
    admin = await admin_connection(pg_server)
    try:
        assert await admin.fetchval(
            "SELECT count(*) FROM pg_database WHERE datname = $1", names.database
        ) == 0  # fmt: skip
        assert await admin.fetchval(
            "SELECT count(*) FROM pg_roles WHERE rolname = $1", names.role
        ) == 0  # fmt: skip
    finally:
        await admin.close()


NAMES = [
    ("acme", "tenant_acme"),
    ("big-co-2", "tenant_big_co_2"),
    ("a" * 40, "tenant_" + "a" * 40),  # the longest slug: 47 bytes, under PostgreSQL's 63
]


@pytest.mark.parametrize(("slug", "name"), NAMES)
def test_names_come_from_the_slug(slug: str, name: str) -> None:
    assert tenant_names(slug) == postgres.TenantNames(role=name, database=name)


@pytest.mark.parametrize(
    "slug", ['acme"; DROP DATABASE x; --', "Acme", "a", "-acme", "acme-", "a" * 41, "ac me"]
)
def test_anything_but_a_slug_is_refused_before_it_reaches_sql(slug: str) -> None:
    with pytest.raises(ProvisioningError):
        tenant_names(slug)


def settings_in(tmp_path: Path) -> TenantSettings:
    return TenantSettings(registry_dir=tmp_path / "registry", sqlite_dir=tmp_path / "dbs")


async def test_a_sqlite_tenant_is_migrated_then_registered_and_deleted_with_its_file(
    tmp_path: Path,
) -> None:
    settings = settings_in(tmp_path)

    entry = await create_tenant(settings, "acme", self_signup=True)

    path = entry_path(settings.registry_dir, "acme")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    database = settings.sqlite_dir.resolve() / "acme.db"
    assert stat.S_IMODE(database.stat().st_mode) == 0o600
    registry = TenantRegistry(settings.registry_dir)
    registry.refresh()
    assert registry.get("acme") == entry
    assert (entry.status, entry.self_signup, entry.schema_version) == (
        TenantStatus.READY, True, "0001",
    )  # fmt: skip
    assert entry.database_url.get_secret_value() == f"sqlite+aiosqlite:///{database}"

    assert await create_tenant(settings, "acme", self_signup=True) == entry  # rerun: same

    deletion = await delete_tenant(settings, "acme", drop=True)
    assert deletion.entry_removed
    assert not path.exists()
    assert not database.exists()
    again = await delete_tenant(settings, "acme", drop=True)
    assert not again.entry_removed  # nothing left to do, and no error


async def test_a_postgres_tenant_is_registered_with_its_own_role_and_dropped(
    tmp_path: Path, pg_server: str
) -> None:
    settings = settings_in(tmp_path)
    slug = unique_slug("reg")
    try:
        entry = await create_tenant(settings, slug, admin_url=pg_server)
        registry = TenantRegistry(settings.registry_dir)
        registry.refresh()
        assert registry.get(slug) == entry
        assert make_url(entry.database_url.get_secret_value()).username == tenant_names(slug).role

        with pytest.raises(ProvisioningError, match="postgres-admin-url"):
            await delete_tenant(settings, slug, drop=True)  # cannot drop without the admin
        assert entry_path(settings.registry_dir, slug).exists()

        deletion = await delete_tenant(settings, slug, drop=True, admin_url=pg_server)
        names = tenant_names(slug)
        assert deletion.dropped == f"database {names.database} and role {names.role}"
    finally:
        await postgres.drop_postgres(pg_server, slug)


async def test_a_tenant_is_not_moved_between_backends_silently(
    tmp_path: Path, pg_server: str
) -> None:
    settings = settings_in(tmp_path)
    write_entry(settings.registry_dir, sqlite_entry(tmp_path / "acme.db", "acme"))

    with pytest.raises(ProvisioningError, match="registered on sqlite"):
        await create_tenant(settings, "acme", admin_url=pg_server)
