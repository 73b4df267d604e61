"""A tenant's PostgreSQL role and database: ensured, checked, repaired and dropped.

One database `tenant_<slug>` owned by one login role `tenant_<slug>` (dashes become
underscores), with CONNECT revoked from PUBLIC and granted to that role only, so one
tenant's role cannot even connect to another tenant's database. Both carry an ownership
mark (`COMMENT ON ROLE/DATABASE`, `berth:<owner>`): the operator marks them with the
Tenant's uid, the CLI with `berth:cli`, and nothing is adopted, changed or dropped for an
owner whose mark it does not carry.

`ensure_postgres` looks before it writes: each step reads the catalog and runs a statement
only where the server differs from what is wanted, and reports it, so a second call on a
healthy tenant runs no DDL and reports nothing, and the same call repairs drift (a dropped
role, a grant undone by hand, a password changed behind the operator's back).

Passwords are chosen by the caller (the operator keeps one in the tenant's Secret), sent
SCRAM-hashed (hashed client-side by libpq: never in clear on the wire or in the server log)
and never printed, logged or put in an exception.
"""

from __future__ import annotations

import re
import secrets
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from enum import StrEnum

import asyncpg
import psycopg
from psycopg import sql
from sqlalchemy import make_url

from service.core.commands import first_line
from service.core.tenancy import is_valid_tenant_slug

NAME_PREFIX = "tenant_"
# What a slug becomes: well inside PostgreSQL's 63-byte identifier limit (slugs are <= 40).
_NAME_PATTERN = re.compile(r"^tenant_[a-z][a-z0-9_]{1,38}[a-z0-9]$")
PASSWORD_BYTES = 32
CONNECT_TIMEOUT_SECONDS = 10
MARK_PREFIX = "berth:"
UNLIMITED_CONNECTIONS = -1
# The admin URL's options that hold for the tenant's connections too (the same server's
# TLS); asyncpg understands them as well. Others (application_name, options) are the admin's.
TLS_OPTIONS = frozenset({"sslmode", "sslrootcert", "sslcert", "sslkey", "sslcrl"})

Connection = psycopg.AsyncConnection[tuple[object, ...]]


class Change(StrEnum):
    """What `ensure_postgres` had to change (on a healthy tenant: nothing)."""

    ROLE_CREATED = "role created"
    ROLE_MARKED = "role marked as this tenant's"
    ROLE_LOGIN = "role allowed to log in again"
    CONNECTION_LIMIT = "role connection limit set"
    PASSWORD_ROTATED = "password rotated"  # noqa: S105 - a message, not a password
    PASSWORD_RESET = "password reset to the tenant's own"  # noqa: S105
    ADMIN_MEMBERSHIP = "admin made a member of the role"
    DATABASE_CREATED = "database created"
    DATABASE_OWNER = "database owner set back to the role"
    DATABASE_MARKED = "database marked as this tenant's"
    PUBLIC_CONNECT_REVOKED = "CONNECT revoked from PUBLIC"
    ROLE_CONNECT_GRANTED = "CONNECT granted to the role"
    PUBLIC_SCHEMA_CLOSED = "schema public closed to PUBLIC"
    ROLE_SCHEMA_OPENED = "schema public opened to the role"


class ProvisioningError(RuntimeError):
    """A tenant cannot be created or deleted as asked (the message is safe to print)."""


class OwnershipConflict(ProvisioningError):
    """The role or database exists but belongs to someone else: never adopted or dropped."""


class ServerUnreachable(ProvisioningError):
    """The PostgreSQL server cannot be reached now; trying again later may work."""


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


@dataclass(frozen=True)
class Owner:
    """Whose a tenant's role and database are, written on both as a comment.

    `adopts_unmarked`: whether a role or database without any berth mark may be taken over
    (the CLI's, for tenants made before marks existed); the operator never does.
    """

    label: str
    adopts_unmarked: bool = False

    @classmethod
    def tenant_resource(cls, uid: str) -> Owner:
        """The owner mark of a Kubernetes `Tenant` with this uid."""
        return cls(label=f"tenant-uid={uuid.UUID(uid)}")

    @property
    def mark(self) -> str:
        return MARK_PREFIX + self.label

    def may_take(self, mark: str | None) -> bool:
        return mark == self.mark or (mark is None and self.adopts_unmarked)


LOCAL_OWNER = Owner(label="cli", adopts_unmarked=True)


def new_password() -> str:
    """A fresh tenant password (URL-safe, so it goes into a URL unencoded)."""
    return secrets.token_urlsafe(PASSWORD_BYTES)


@dataclass(frozen=True)
class DesiredTenant:
    """What a tenant's PostgreSQL objects should look like."""

    slug: str
    password: str
    owner: Owner
    connection_limit: int = UNLIMITED_CONNECTIONS

    def __repr__(self) -> str:  # the password stays out of every log and traceback
        return f"DesiredTenant(slug={self.slug!r}, owner={self.owner.label!r})"


@dataclass(frozen=True)
class Provisioned:
    """The outcome of `ensure_postgres`: the URL the service uses and what had to change."""

    names: TenantNames
    database_url: str
    changes: tuple[Change, ...]

    def __repr__(self) -> str:
        return f"Provisioned(names={self.names!r}, changes={self.changes!r})"


def libpq_url(url: str, database: str | None = None) -> str:
    """A SQLAlchemy or libpq URL as a libpq URL psycopg accepts (optionally another db)."""
    parsed = make_url(url).set(drivername="postgresql")
    if database is not None:
        parsed = parsed.set(database=database)
    return parsed.render_as_string(hide_password=False)


def tenant_database_url(admin_url: str, names: TenantNames, password: str) -> str:
    """The URL the service uses: same server, the tenant's role and database, asyncpg.

    Of the admin URL's query only `sslmode` carries over, as asyncpg's `ssl` (the same
    values); the rest (application_name, options) is for the admin connection. asyncpg
    finds a CA for verify-ca/verify-full in PGSSLROOTCERT or ~/.postgresql/root.crt.
    """
    admin = make_url(admin_url)
    sslmode = admin.query.get("sslmode")
    url = admin.set(
        drivername="postgresql+asyncpg",
        username=names.role,
        password=password,
        database=names.database,
        query={"ssl": sslmode} if isinstance(sslmode, str) else {},
    )
    return url.render_as_string(hide_password=False)


def tenant_libpq_url(admin_url: str, names: TenantNames, password: str) -> str:
    """The tenant's URL for libpq clients (psql, psycopg, asyncpg): `postgresql://...`."""
    url = make_url(libpq_url(admin_url, names.database))
    tls = {key: value for key, value in url.query.items() if key in TLS_OPTIONS}
    tenant = url.set(username=names.role, password=password, query=tls)
    return tenant.render_as_string(hide_password=False)


@asynccontextmanager
async def _connect(url: str, *, database: str | None = None) -> AsyncIterator[Connection]:
    target = make_url(url)
    where = f"{target.host or 'localhost'}:{target.port or 5432}"
    try:
        conn = await psycopg.AsyncConnection.connect(
            libpq_url(url, database), autocommit=True, connect_timeout=CONNECT_TIMEOUT_SECONDS
        )
    except psycopg.OperationalError as exc:
        # libpq's message names host, port and user, never the password.
        message = f"cannot connect to PostgreSQL at {where}: {first_line(exc)}"
        raise ServerUnreachable(message) from None
    async with conn:
        yield conn


async def _row(conn: Connection, query: str, *args: object) -> tuple[object, ...] | None:
    cursor = await conn.execute(query, args)
    return await cursor.fetchone()


async def _is_true(conn: Connection, query: str, *args: object) -> bool:
    row = await _row(conn, query, *args)
    return bool(row and row[0])


def _hashed(conn: Connection, names: TenantNames, password: str) -> sql.Literal:
    # Hashed client-side: the clear password is never sent, so never in a server log.
    hashed = conn.pgconn.encrypt_password(
        password.encode(), names.role.encode(), b"scram-sha-256"
    ).decode()
    return sql.Literal(hashed)


def _refuse(kind: str, name: str, mark: str | None) -> OwnershipConflict:
    held_by = f"it is marked {mark!r}" if mark else "it carries no berth mark"
    return OwnershipConflict(f"{kind} {name} exists and is not this tenant's ({held_by})")


class _Steps:
    """One `ensure_postgres` run on one admin connection; `changes` is what it changed."""

    def __init__(self, conn: Connection, desired: DesiredTenant, names: TenantNames) -> None:
        self.conn = conn
        self.desired = desired
        self.names = names
        self.role = sql.Identifier(names.role)
        self.database = sql.Identifier(names.database)
        self.changes: list[Change] = []

    async def run(self, query: sql.Composed, change: Change) -> None:
        await self.conn.execute(query)
        self.changes.append(change)

    async def role_step(self, *, rotate: bool) -> bool:
        """Create or repair the login role; True when it was there before."""
        row = await _row(
            self.conn,
            "SELECT rolcanlogin, rolconnlimit, shobj_description(oid, 'pg_authid') "
            "FROM pg_roles WHERE rolname = %s",
            self.names.role,
        )
        if row is None and await self._create_role():
            return False
        if row is None:  # created concurrently: look again
            return await self.role_step(rotate=rotate)
        can_login, connection_limit, mark = row
        if not self.desired.owner.may_take(mark if isinstance(mark, str) else None):
            raise _refuse("role", self.names.role, mark if isinstance(mark, str) else None)
        if mark != self.desired.owner.mark:
            await self._mark("ROLE", self.role, Change.ROLE_MARKED)
        if not can_login:
            await self.run(sql.SQL("ALTER ROLE {} WITH LOGIN").format(self.role), Change.ROLE_LOGIN)
        if connection_limit != self.desired.connection_limit:
            await self.run(
                sql.SQL("ALTER ROLE {} CONNECTION LIMIT {}").format(
                    self.role, sql.Literal(self.desired.connection_limit)
                ),
                Change.CONNECTION_LIMIT,
            )
        if rotate:
            await self.set_password(Change.PASSWORD_ROTATED)
        return True

    async def _create_role(self) -> bool:
        create = sql.SQL("CREATE ROLE {} WITH LOGIN CONNECTION LIMIT {} PASSWORD {}").format(
            self.role,
            sql.Literal(self.desired.connection_limit),
            _hashed(self.conn, self.names, self.desired.password),
        )
        try:
            # One transaction: a role never exists without its mark, so a crash here cannot
            # leave one that the next run would refuse as somebody else's.
            async with self.conn.transaction():
                await self.conn.execute(create)
                await self.conn.execute(self._comment("ROLE", self.role))
        except psycopg.errors.DuplicateObject:
            return False
        self.changes.append(Change.ROLE_CREATED)
        return True

    def _comment(self, kind: str, name: sql.Identifier) -> sql.Composed:
        return sql.SQL("COMMENT ON {} {} IS {}").format(
            sql.SQL(kind), name, sql.Literal(self.desired.owner.mark)
        )

    async def _mark(self, kind: str, name: sql.Identifier, change: Change) -> None:
        await self.run(self._comment(kind, name), change)

    async def set_password(self, change: Change) -> None:
        await self.run(
            sql.SQL("ALTER ROLE {} WITH PASSWORD {}").format(
                self.role, _hashed(self.conn, self.names, self.desired.password)
            ),
            change,
        )

    async def membership_step(self) -> None:
        """A non-superuser admin must be a member of the role to give it a database (and
        later to drop that database): grant it to ourselves. Superusers need nothing."""
        if await _is_true(self.conn, "SELECT rolsuper FROM pg_roles WHERE rolname = current_user"):
            return
        if await _is_true(
            self.conn, "SELECT pg_has_role(current_user, %s, 'MEMBER')", self.names.role
        ):
            return
        await self.run(
            sql.SQL("GRANT {} TO CURRENT_USER").format(self.role), Change.ADMIN_MEMBERSHIP
        )

    async def database_step(self) -> None:
        row = await _row(
            self.conn,
            "SELECT pg_get_userbyid(datdba), shobj_description(oid, 'pg_database') "
            "FROM pg_database WHERE datname = %s",
            self.names.database,
        )
        if row is None:
            if not await self._create_database():  # created concurrently: look again
                await self.database_step()
            return
        owner, mark = row
        mark = mark if isinstance(mark, str) else None
        # Unmarked but owned by our role: a crash came between CREATE and COMMENT.
        if not self.desired.owner.may_take(mark) and not (
            mark is None and owner == self.names.role
        ):
            raise _refuse("database", self.names.database, mark)
        if owner != self.names.role:
            await self.run(
                sql.SQL("ALTER DATABASE {} OWNER TO {}").format(self.database, self.role),
                Change.DATABASE_OWNER,
            )
        if mark != self.desired.owner.mark:
            await self._mark("DATABASE", self.database, Change.DATABASE_MARKED)

    async def _create_database(self) -> bool:
        try:
            # Autocommit: CREATE DATABASE cannot run inside a transaction.
            await self.conn.execute(
                sql.SQL("CREATE DATABASE {} OWNER {}").format(self.database, self.role)
            )
        except psycopg.errors.DuplicateDatabase:
            return False
        self.changes.append(Change.DATABASE_CREATED)
        await self.conn.execute(self._comment("DATABASE", self.database))
        return True

    async def connect_step(self) -> None:
        # PUBLIC first: while it may connect, every role seems to have CONNECT.
        if await _is_true(
            self.conn, "SELECT has_database_privilege('public', %s, 'CONNECT')", self.names.database
        ):
            await self.run(
                sql.SQL("REVOKE CONNECT ON DATABASE {} FROM PUBLIC").format(self.database),
                Change.PUBLIC_CONNECT_REVOKED,
            )
        if not await _is_true(
            self.conn,
            "SELECT has_database_privilege(%s, %s, 'CONNECT')",
            self.names.role,
            self.names.database,
        ):
            await self.run(
                sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(self.database, self.role),
                Change.ROLE_CONNECT_GRANTED,
            )


async def _schema_step(admin_url: str, names: TenantNames) -> list[Change]:
    """Inside the tenant's database: nobody but the tenant's role uses schema public."""
    role = sql.Identifier(names.role)
    changes: list[Change] = []
    async with _connect(admin_url, database=names.database) as conn:
        row = await _row(
            conn,
            "SELECT has_schema_privilege('public', 'public', 'USAGE') "
            "OR has_schema_privilege('public', 'public', 'CREATE'), "
            "has_schema_privilege(%s, 'public', 'USAGE') "
            "AND has_schema_privilege(%s, 'public', 'CREATE')",
            names.role,
            names.role,
        )
        public_uses, role_uses = row or (True, False)
        if public_uses:
            await conn.execute("REVOKE ALL ON SCHEMA public FROM PUBLIC")
            changes.append(Change.PUBLIC_SCHEMA_CLOSED)
        if not role_uses:
            # PostgreSQL 15+ makes the database owner own `public`; before 15 the bootstrap
            # superuser owned it and the role needs the grant to create its tables.
            await conn.execute(sql.SQL("GRANT USAGE, CREATE ON SCHEMA public TO {}").format(role))
            changes.append(Change.ROLE_SCHEMA_OPENED)
    return changes


# A login that failed for the server's state, not the credentials: try again later.
_UNAVAILABLE = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.TooManyConnectionsError,
    asyncpg.CannotConnectNowError,
)


async def password_works(admin_url: str, names: TenantNames, password: str) -> bool:
    """Whether the role logs in to its database with this password (a real login).

    Only a refusal of the credentials counts as False; any other failure raises, so a full
    connection slot or a restart is never mistaken for a password to reset. asyncpg, not
    psycopg: libpq's connection errors carry no SQLSTATE to tell those apart.
    """
    try:
        conn = await asyncpg.connect(
            tenant_libpq_url(admin_url, names, password), timeout=CONNECT_TIMEOUT_SECONDS
        )
    except asyncpg.InvalidAuthorizationSpecificationError:  # includes a wrong password
        return False
    except _UNAVAILABLE as exc:
        message = f"cannot log in as {names.role}: {first_line(exc)}"
        raise ServerUnreachable(message) from None
    await conn.close()
    return True


async def ensure_postgres(
    admin_url: str, desired: DesiredTenant, *, rotate: bool = False
) -> Provisioned:
    """Make the tenant's role and database what `desired` says, changing only what differs.

    `rotate` sets the password even if the old one still works; otherwise an existing role
    keeps its password unless a real login with `desired.password` is refused.
    """
    names = tenant_names(desired.slug)
    async with _connect(admin_url) as conn:
        steps = _Steps(conn, desired, names)
        existed = await steps.role_step(rotate=rotate)
        await steps.membership_step()
        await steps.database_step()
        await steps.connect_step()
        changes = steps.changes
        changes += await _schema_step(admin_url, names)
        if existed and not rotate and not await password_works(admin_url, names, desired.password):
            await steps.set_password(Change.PASSWORD_RESET)
    return Provisioned(
        names=names,
        database_url=tenant_database_url(admin_url, names, desired.password),
        changes=tuple(changes),
    )


async def drop_postgres(admin_url: str, slug: str, owner: Owner = LOCAL_OWNER) -> tuple[str, ...]:
    """Drop the tenant's database (open sessions are terminated) and role, if they are
    `owner`'s; returns what was dropped. Another owner's objects raise and stay."""
    names = tenant_names(slug)
    role, database = sql.Identifier(names.role), sql.Identifier(names.database)
    dropped: list[str] = []
    async with _connect(admin_url) as conn:
        steps = _Steps(conn, DesiredTenant(slug=slug, password="", owner=owner), names)
        role_row = await _row(
            conn,
            "SELECT shobj_description(oid, 'pg_authid') FROM pg_roles WHERE rolname = %s",
            names.role,
        )
        database_row = await _row(
            conn,
            "SELECT shobj_description(oid, 'pg_database'), pg_get_userbyid(datdba) "
            "FROM pg_database WHERE datname = %s",
            names.database,
        )
        _check_droppable(owner, names, role_row, database_row)
        if role_row is not None:
            await steps.membership_step()  # ownership is what lets us drop the database
        if database_row is not None:
            await conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(database))
            dropped.append(f"database {names.database}")
        if role_row is not None:
            await conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(role))
            dropped.append(f"role {names.role}")
    return tuple(dropped)


def _mark_of(row: tuple[object, ...] | None) -> str | None:
    return row[0] if row is not None and isinstance(row[0], str) else None


def _check_droppable(
    owner: Owner,
    names: TenantNames,
    role_row: tuple[object, ...] | None,
    database_row: tuple[object, ...] | None,
) -> None:
    if role_row is not None and not owner.may_take(_mark_of(role_row)):
        raise _refuse("role", names.role, _mark_of(role_row))
    if database_row is None:
        return
    mark = _mark_of(database_row)
    crashed_before_mark = mark is None and database_row[1] == names.role and role_row is not None
    if not owner.may_take(mark) and not crashed_before_mark:
        raise _refuse("database", names.database, mark)
