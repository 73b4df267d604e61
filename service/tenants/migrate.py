"""Tenant-database migrations: their own Alembic history, run with the shared runner.

Each tenant migrates under its own advisory lock (`berth:migrations:tenant:<slug>`), so the
CLI, the operator and a second Job can run at once; the later ones wait and find head.
Migrations connect with the tenant's own role, so the tables belong to that role.
"""

from __future__ import annotations

from service.db import migrate
from service.db.migrate import TENANT_MIGRATIONS_DIR, MigrationHistory
from service.tenants.schemas import TenantEntry


def tenant_lock_name(slug: str) -> str:
    return f"berth:migrations:tenant:{slug}"


def tenant_history(slug: str) -> MigrationHistory:
    return MigrationHistory(TENANT_MIGRATIONS_DIR, tenant_lock_name(slug))


def tenant_head() -> str | None:
    """The head revision of the tenant history (the same for every tenant)."""
    return tenant_history("head").head()


async def upgrade_tenant(entry: TenantEntry, revision: str = "head") -> str | None:
    """Upgrade the tenant's database; returns the revision it is at afterwards."""
    url = entry.database_url.get_secret_value()
    await migrate.upgrade(url, revision, history=tenant_history(entry.slug))
    return await migrate.current_revision(url)


async def downgrade_tenant(entry: TenantEntry, revision: str) -> str | None:
    url = entry.database_url.get_secret_value()
    await migrate.downgrade(url, revision, history=tenant_history(entry.slug))
    return await migrate.current_revision(url)
