"""Create and drop a tenant's database and login role, the way the operator does.

PostgreSQL: one database `tenant_<slug>` owned by one login role `tenant_<slug>` (dashes
become underscores), with CONNECT revoked from PUBLIC and granted to that role only, so one
tenant's role cannot even connect to another tenant's database. The password is generated
with `secrets`, sent already SCRAM-hashed (it never crosses the wire or lands in the server
log in clear), and never printed or logged. Every step is safe to repeat: a rerun after a
crash finishes the job, and an existing role gets a new password.

Locally (no admin URL) a tenant is one SQLite file under `TenantSettings.sqlite_dir`.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql
from sqlalchemy import make_url

from service.core.config import TenantSettings
from service.core.logging import get_logger
from service.core.tenancy import is_valid_tenant_slug
from service.tenants.migrate import upgrade_tenant
from service.tenants.registry import (
    backend_of,
    entry_path,
    remove_entry,
    write_entry,
)
from service.tenants.schemas import TenantEntry, TenantStatus

log = get_logger(__name__)

NAME_PREFIX = "tenant_"
# What a slug becomes: well inside PostgreSQL's 63-byte identifier limit (slugs are <= 40).
_NAME_PATTERN = re.compile(r"^tenant_[a-z][a-z0-9_]{1,38}[a-z0-9]$")
PASSWORD_BYTES = 32
SQLITE_SUFFIX = ".db"
CONNECT_TIMEOUT_SECONDS = 10


class ProvisioningError(RuntimeError):
    """A tenant cannot be created or deleted as asked (the message is safe to print)."""


@dataclass(frozen=True)
class TenantNames:
    """The PostgreSQL role and database of a tenant (the same name for both)."""

    role: str
    database: str


def tenant_names(slug: str) -> TenantNames:
    if not is_valid_tenant_slug(slug):
        raise ProvisioningError(f"not a valid tenant slug: {slug!r}")
    name = NAME_PREFIX + slug.replace("-", "_")
    if not _NAME_PATTERN.fullmatch(name):
        raise ProvisioningError(f"not a valid tenant slug: {slug!r}")
    return TenantNames(role=name, database=name)


def _libpq_url(url: str, database: str | None = None) -> str:
    """A SQLAlchemy or libpq URL as a libpq URL psycopg accepts (optionally another db)."""
    parsed = make_url(url).set(drivername="postgresql")
    if database is not None:
        parsed = parsed.set(database=database)
    return parsed.render_as_string(hide_password=False)


def tenant_database_url(admin_url: str, names: TenantNames, password: str) -> str:
    """The URL the service uses: same server, the tenant's role and database, asyncpg.

    The admin URL's query (libpq options such as sslmode) is for the admin connection only;
    asyncpg spells its options differently.
    """
    url = make_url(admin_url).set(
        drivername="postgresql+asyncpg",
        username=names.role,
        password=password,
        database=names.database,
        query={},
    )
    return url.render_as_string(hide_password=False)


async def _fetch_bool(
    conn: psycopg.AsyncConnection[tuple[object, ...]], query: str, *args: str
) -> bool:
    cursor = await conn.execute(query, args)
    row = await cursor.fetchone()
    return bool(row and row[0])


async def _ensure_role(
    conn: psycopg.AsyncConnection[tuple[object, ...]], names: TenantNames, password: str
) -> None:
    """Create the login role, or rotate the password of the existing one."""
    role = sql.Identifier(names.role)
    # Hashed client-side: the clear password is never sent, so never in a server log.
    hashed = conn.pgconn.encrypt_password(
        password.encode(), names.role.encode(), b"scram-sha-256"
    ).decode()
    alter = sql.SQL("ALTER ROLE {} WITH LOGIN PASSWORD {}").format(role, sql.Literal(hashed))
    if await _fetch_bool(conn, "SELECT 1 FROM pg_roles WHERE rolname = %s", names.role):
        await conn.execute(alter)
        return
    try:
        await conn.execute(
            sql.SQL("CREATE ROLE {} WITH LOGIN PASSWORD {}").format(role, sql.Literal(hashed))
        )
    except psycopg.errors.DuplicateObject:  # created concurrently: rotate instead
        await conn.execute(alter)


async def _ensure_membership(
    conn: psycopg.AsyncConnection[tuple[object, ...]], names: TenantNames
) -> None:
    """A non-superuser admin must be a member of the role to give it a database (and later
    to drop that database): grant it to ourselves. Superusers need nothing."""
    if await _fetch_bool(conn, "SELECT rolsuper FROM pg_roles WHERE rolname = current_user"):
        return
    if await _fetch_bool(conn, "SELECT pg_has_role(current_user, %s, 'MEMBER')", names.role):
        return
    await conn.execute(sql.SQL("GRANT {} TO CURRENT_USER").format(sql.Identifier(names.role)))


async def _ensure_database(
    conn: psycopg.AsyncConnection[tuple[object, ...]], names: TenantNames
) -> None:
    role, database = sql.Identifier(names.role), sql.Identifier(names.database)
    exists = await _fetch_bool(conn, "SELECT 1 FROM pg_database WHERE datname = %s", names.database)
    if not exists:
        try:
            # Autocommit: CREATE DATABASE cannot run inside a transaction.
            await conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(database, role))
        except psycopg.errors.DuplicateDatabase:
            exists = True
    if exists:
        await conn.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(database, role))
    await conn.execute(sql.SQL("REVOKE CONNECT ON DATABASE {} FROM PUBLIC").format(database))
    await conn.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(database, role))


async def _lock_down_public_schema(admin_url: str, names: TenantNames) -> None:
    """Inside the new database: nobody but the tenant's role uses schema public."""
    role = sql.Identifier(names.role)
    async with await psycopg.AsyncConnection.connect(
        _libpq_url(admin_url, names.database),
        autocommit=True,
        connect_timeout=CONNECT_TIMEOUT_SECONDS,
    ) as conn:
        await conn.execute("REVOKE ALL ON SCHEMA public FROM PUBLIC")
        # PostgreSQL 15+ makes the database owner own `public`; before 15 the bootstrap
        # superuser owned it and the role needs the grant to create its tables.
        await conn.execute(sql.SQL("GRANT USAGE, CREATE ON SCHEMA public TO {}").format(role))


async def provision_postgres(admin_url: str, slug: str) -> str:
    """Create (or repair) the tenant's role and database; returns the tenant's database URL
    with a freshly generated password."""
    names = tenant_names(slug)
    password = secrets.token_urlsafe(PASSWORD_BYTES)
    async with await psycopg.AsyncConnection.connect(
        _libpq_url(admin_url), autocommit=True, connect_timeout=CONNECT_TIMEOUT_SECONDS
    ) as conn:
        await _ensure_role(conn, names, password)
        await _ensure_membership(conn, names)
        await _ensure_database(conn, names)
    await _lock_down_public_schema(admin_url, names)
    log.info("tenant_database_provisioned", tenant=slug, database=names.database)
    return tenant_database_url(admin_url, names, password)


async def drop_postgres(admin_url: str, slug: str) -> None:
    """Drop the tenant's database (open connections are terminated) and role, if present."""
    names = tenant_names(slug)
    role, database = sql.Identifier(names.role), sql.Identifier(names.database)
    async with await psycopg.AsyncConnection.connect(
        _libpq_url(admin_url), autocommit=True, connect_timeout=CONNECT_TIMEOUT_SECONDS
    ) as conn:
        if await _fetch_bool(conn, "SELECT 1 FROM pg_roles WHERE rolname = %s", names.role):
            await _ensure_membership(conn, names)  # ownership is what lets us drop it
        await conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(database))
        await conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(role))
    log.info("tenant_database_dropped", tenant=slug, database=names.database)


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
        await drop_postgres(admin_url, slug)
        return Deletion(entry_removed=removed, dropped=f"database {tenant_names(slug).database}")
    path = (_sqlite_file_of(existing) if existing else None) or sqlite_path(settings, slug)
    for stale in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        stale.unlink(missing_ok=True)
    return Deletion(entry_removed=removed, dropped=f"file {path}")
