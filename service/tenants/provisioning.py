"""Create and delete a tenant from the CLI: database, migrations, then the registry entry.

PostgreSQL roles and databases are `service/tenants/postgres.py` (shared with the operator);
the CLI marks what it creates `berth:cli` and gives the role a new password on every run.
Locally (no admin URL) a tenant is one SQLite file under `TenantSettings.sqlite_dir`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import make_url

from service.core.config import TenantSettings
from service.core.logging import get_logger
from service.tenants.migrate import upgrade_tenant
from service.tenants.postgres import (
    LOCAL_OWNER,
    DesiredTenant,
    ProvisioningError,
    drop_postgres,
    ensure_postgres,
    new_password,
    tenant_names,
)
from service.tenants.registry import (
    backend_of,
    entry_path,
    remove_entry,
    write_entry,
)
from service.tenants.schemas import TenantEntry, TenantStatus

log = get_logger(__name__)

SQLITE_SUFFIX = ".db"


async def provision_postgres(admin_url: str, slug: str) -> str:
    """Create (or repair) the tenant's role and database for the CLI; returns the tenant's
    database URL with a freshly generated password (a rerun rotates it)."""
    desired = DesiredTenant(slug=slug, password=new_password(), owner=LOCAL_OWNER)
    provisioned = await ensure_postgres(admin_url, desired, rotate=True)
    log.info("tenant_database_provisioned", tenant=slug, database=provisioned.names.database)
    return provisioned.database_url


def sqlite_path(settings: TenantSettings, slug: str) -> Path:
    tenant_names(slug)  # validates the slug before it becomes a file name
    return (settings.sqlite_dir / f"{slug}{SQLITE_SUFFIX}").resolve()


def sqlite_database_url(path: Path) -> str:
    # Absolute: the service may run from another working directory than the CLI.
    return f"sqlite+aiosqlite:///{path}"


def _sqlite_file_of(entry: TenantEntry) -> Path | None:
    url = make_url(entry.database_url.get_secret_value())
    if url.get_backend_name() != "sqlite" or not url.database:
        return None
    return Path(url.database)


def _existing_entry(settings: TenantSettings, slug: str) -> TenantEntry | None:
    path = entry_path(settings.registry_dir, slug)
    try:
        return TenantEntry.model_validate_json(path.read_bytes())
    except (OSError, ValueError):
        return None


async def create_tenant(
    settings: TenantSettings,
    slug: str,
    *,
    admin_url: str | None = None,
    self_signup: bool = False,
) -> TenantEntry:
    """Provision the database, migrate it to head, then write the registry entry (last, so
    the service only ever sees a tenant whose schema is there)."""
    tenant_names(slug)
    backend = "postgresql" if admin_url else "sqlite"
    existing = _existing_entry(settings, slug)
    if existing is not None and backend_of(existing) != backend:
        raise ProvisioningError(
            f"tenant {slug} is registered on {backend_of(existing)}; delete it first "
            f"to move it to {backend}"
        )
    if admin_url:
        database_url = await provision_postgres(admin_url, slug)
    else:
        path = sqlite_path(settings, slug)
        path.parent.mkdir(parents=True, exist_ok=True)
        database_url = sqlite_database_url(path)
    entry = TenantEntry(
        slug=slug,
        status=TenantStatus.PROVISIONING,
        self_signup=self_signup,
        database_url=database_url,  # validated into SecretStr
    )
    revision = await upgrade_tenant(entry)
    if not admin_url:
        sqlite_path(settings, slug).chmod(0o600)
    ready = entry.model_copy(update={"status": TenantStatus.READY, "schema_version": revision})
    write_entry(settings.registry_dir, ready)
    log.info("tenant_created", tenant=slug, backend=backend, revision=revision)
    return ready


@dataclass(frozen=True)
class Deletion:
    entry_removed: bool
    dropped: str | None = None  # what was dropped, for the CLI's message


async def delete_tenant(
    settings: TenantSettings, slug: str, *, drop: bool = False, admin_url: str | None = None
) -> Deletion:
    """Remove the registry entry first (the service stops serving the tenant), then, with
    `drop`, its database: PostgreSQL with `admin_url`, else the SQLite file."""
    tenant_names(slug)
    existing = _existing_entry(settings, slug)
    if drop and not admin_url and existing and backend_of(existing) == "postgresql":
        raise ProvisioningError(
            f"tenant {slug} is on postgresql: give --postgres-admin-url to drop its database"
        )
    removed = remove_entry(settings.registry_dir, slug)
    if not drop:
        return Deletion(entry_removed=removed)
    if admin_url:
        dropped = await drop_postgres(admin_url, slug)
        return Deletion(entry_removed=removed, dropped=" and ".join(dropped) or None)
    path = (_sqlite_file_of(existing) if existing else None) or sqlite_path(settings, slug)
    for stale in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        stale.unlink(missing_ok=True)
    return Deletion(entry_removed=removed, dropped=f"file {path}")
