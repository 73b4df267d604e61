"""A tenant's MongoDB user and database: ensured, checked, repaired and dropped.

One database (default `berth_<slug>`, the name the service gives a tenant's documents when
its registry entry names none) and one user `berth_<slug>` defined in that database (so the
database is its authSource) with the single role `readWrite` on it: the user can neither
read another tenant's database nor manage users. The database carries the ownership mark
(`service.tenants.postgres.Owner`, the PostgreSQL objects' mark) as the document
`{_id: "owner", mark: "berth:<owner>"}` in its collection `berth_owner`; MongoDB has no
comments on databases or users, and the user lives in the database, so that one mark covers
both. A database with another mark, or with data and no mark, is never adopted or dropped
(the CLI's owner adopts unmarked ones, as in PostgreSQL).

`ensure_mongo_user` looks before it writes, like `ensure_postgres`: a second call on a
healthy tenant writes nothing and reports nothing, and the same call repairs drift (a dropped
user, roles granted or revoked by hand, a password changed behind the operator's back).

Passwords are chosen by the caller and never printed, logged or put in an exception. MongoDB
hashes SCRAM-SHA-256 credentials on the server (it cannot take a client-side digest for
SHA-256), so the password travels in the createUser/updateUser command: use TLS to the admin
URL's server; MongoDB redacts those commands' arguments in its own logs.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from enum import StrEnum
from typing import Any
from urllib.parse import quote, unquote, urlencode

from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import ConfigurationError, ConnectionFailure, ExecutionTimeout, OperationFailure
from pymongo.uri_parser import parse_uri

from service.core.commands import first_line
from service.core.config import MongoSettings
from service.core.tenancy import is_valid_tenant_slug
from service.tenants.postgres import Owner, OwnershipConflict, ProvisioningError

Document = dict[str, Any]

USER_PREFIX = "berth_"
# The service's own name for a tenant's database when its entry has none: the same database.
DATABASE_PREFIX = MongoSettings().database_prefix
MAX_DATABASE_LENGTH = 63
# A portable subset of MongoDB's rules (no `/\. "$` or NUL, < 64 bytes) that needs no quoting.
DATABASE_PATTERN = rf"^[A-Za-z0-9_-]{{1,{MAX_DATABASE_LENGTH}}}$"
SYSTEM_DATABASES = ("admin", "local", "config")
TENANT_ROLE = "readWrite"
MARK_COLLECTION = "berth_owner"
MARK_ID = "owner"
MECHANISM = "SCRAM-SHA-256"
TIMEOUT_SECONDS = 10
# Admin URL options that describe the admin's login, not the server: not the tenant's.
_ADMIN_ONLY_OPTIONS = frozenset({"authsource", "authmechanism", "authmechanismproperties"})
_URL = re.compile(
    r"^(?P<scheme>mongodb(?:\+srv)?)://(?:[^@/?]*@)?(?P<hosts>[^/?@]+)/?[^?]*(?:\?(?P<query>.*))?$"
)
_TIMEOUT_OPTIONS = ("serverSelectionTimeoutMS", "connectTimeoutMS", "timeoutMS")
_AUTHENTICATION_FAILED = 18
_USER_NOT_FOUND = 11
_USER_EXISTS = 51003


class MongoChange(StrEnum):
    """What `ensure_mongo_user` had to change (on a healthy tenant: nothing)."""

    MONGO_DATABASE_MARKED = "MongoDB database marked as this tenant's"
    MONGO_USER_CREATED = "MongoDB user created"
    MONGO_USER_ROLES_SET = "MongoDB user's roles set back to readWrite on its own database"
    MONGO_PASSWORD_ROTATED = "MongoDB password rotated"  # noqa: S105 - a message, not a password
    MONGO_PASSWORD_RESET = "MongoDB password reset to the tenant's own"  # noqa: S105


class MongoUnreachable(ProvisioningError):
    """The MongoDB server cannot be reached now; trying again later may work."""


class InvalidMongoUrl(ValueError):
    """The admin URL is not a MongoDB URL (its text is never shown: it holds a password)."""


@dataclass(frozen=True)
class MongoNames:
    """A tenant's MongoDB user and the database it is defined in (its authSource)."""

    user: str
    database: str


def check_database_name(name: str) -> str:
    """`name` if it may be a tenant's database; ValueError (safe to show) otherwise."""
    if not re.fullmatch(DATABASE_PATTERN, name):
        raise ValueError(f"not a MongoDB database name for a tenant: {name!r}")
    if name in SYSTEM_DATABASES:
        raise ValueError(f"{name!r} is a MongoDB system database")
    return name


def mongo_names(slug: str, database: str | None = None) -> MongoNames:
    """The tenant's user and database (`database`, else `berth_<slug>`)."""
    if not is_valid_tenant_slug(slug):
        raise ProvisioningError(f"not a valid tenant slug: {slug!r}")
    try:
        chosen = check_database_name(database or DATABASE_PREFIX + slug)
    except ValueError as exc:
        raise ProvisioningError(str(exc)) from None
    return MongoNames(user=USER_PREFIX + slug, database=chosen)


@dataclass(frozen=True)
class _UrlParts:
    scheme: str
    hosts: str
    options: tuple[tuple[str, str], ...]


def _split(url: str) -> _UrlParts:
    match = _URL.fullmatch(url.strip())
    if match is None:
        raise InvalidMongoUrl("not a mongodb:// or mongodb+srv:// URL")
    query = match.group("query") or ""
    options = tuple(
        (unquote(key), unquote(value))
        for key, _, value in (pair.partition("=") for pair in query.split("&") if pair)
    )
    return _UrlParts(match.group("scheme"), match.group("hosts"), options)


def check_mongo_url(url: str) -> str:
    """`url` if it is a MongoDB URL pymongo accepts; InvalidMongoUrl (no text) otherwise."""
    if _split(url).scheme != "mongodb":
        return url  # +srv: parsing it resolves DNS; the client checks it when it connects
    try:
        parse_uri(url)
    except (ConfigurationError, ValueError):
        raise InvalidMongoUrl("not a MongoDB URL pymongo accepts") from None
    return url


def tenant_mongo_url(admin_url: str, names: MongoNames, password: str) -> str:
    """The URL the service uses: the admin URL's hosts and options (TLS, replica set), the
    tenant's user and password (URL-quoted), its database, `authSource=<database>`."""
    parts = _split(admin_url)
    options = [(k, v) for k, v in parts.options if k.lower() not in _ADMIN_ONLY_OPTIONS]
    options.append(("authSource", names.database))
    credentials = f"{quote(names.user, safe='')}:{quote(password, safe='')}"
    query = urlencode(options, quote_via=quote)
    return f"{parts.scheme}://{credentials}@{parts.hosts}/{quote(names.database, safe='')}?{query}"


def hosts_of(url: str) -> str:
    """The host list of a MongoDB URL, for messages (never the credentials)."""
    return _split(url).hosts


@dataclass(frozen=True)
class DesiredMongoUser:
    """What a tenant's MongoDB user and database should look like."""

    names: MongoNames
    password: str
    owner: Owner

    def __repr__(self) -> str:  # the password stays out of every log and traceback
        return f"DesiredMongoUser(names={self.names!r}, owner={self.owner.label!r})"


@dataclass(frozen=True)
class MongoProvisioned:
    """The outcome of `ensure_mongo_user`: the URL the service uses and what had to change."""

    names: MongoNames
    url: str
    password: str
    changes: tuple[MongoChange, ...]

    def __repr__(self) -> str:
        return f"MongoProvisioned(names={self.names!r}, changes={self.changes!r})"


@asynccontextmanager
async def _client(url: str) -> AsyncIterator[AsyncMongoClient[Document]]:
    """A short-lived client; an unreachable server is MongoUnreachable within the timeout."""
    check_mongo_url(url)
    timeout_ms = TIMEOUT_SECONDS * 1000
    defaults: dict[str, Any] = dict.fromkeys(_TIMEOUT_OPTIONS, timeout_ms)
    # Timeouts the URL sets itself win: the admin tuned them for that server.
    given = {key.lower() for key, _ in _split(url).options}
    options = {key: value for key, value in defaults.items() if key.lower() not in given}
    client: AsyncMongoClient[Document] = AsyncMongoClient(
        url, appname="berth-provisioning", **options
    )
    try:
        yield client
    except (ConnectionFailure, ExecutionTimeout) as exc:  # selection, network, timeouts
        message = f"cannot reach MongoDB at {hosts_of(url)}: {first_line(exc)}"
        raise MongoUnreachable(message) from None
    finally:
        await client.close()


async def mongo_password_works(admin_url: str, names: MongoNames, password: str) -> bool:
    """Whether the user logs in to its database with this password (a real login).

    Only a refusal of the credentials counts as False; an unreachable server raises, so an
    outage is never mistaken for a password to reset.
    """
    async with _client(tenant_mongo_url(admin_url, names, password)) as client:
        try:
            await client[names.database].command("ping")
        except OperationFailure as exc:
            if exc.code == _AUTHENTICATION_FAILED:
                return False
            raise
    return True


def _refuse(names: MongoNames, mark: str | None) -> OwnershipConflict:
    held_by = f"it is marked {mark!r}" if mark else "it holds data and carries no berth mark"
    return OwnershipConflict(
        f"MongoDB database {names.database} exists and is not this tenant's ({held_by})"
    )


async def _user(database: AsyncDatabase[Document], names: MongoNames) -> Document | None:
    found = await database.command("usersInfo", {"user": names.user, "db": names.database})
    users: list[Document] = found.get("users") or []
    return users[0] if users else None


async def _mark(database: AsyncDatabase[Document]) -> str | None:
    found = await database[MARK_COLLECTION].find_one({"_id": MARK_ID})
    mark = found.get("mark") if found else None
    return mark if isinstance(mark, str) else None


async def _holds_data(database: AsyncDatabase[Document]) -> bool:
    names = await database.list_collection_names()
    return any(name != MARK_COLLECTION for name in names)


def _wanted_roles(names: MongoNames) -> list[Document]:
    return [{"role": TENANT_ROLE, "db": names.database}]


def _roles_of(user: Document) -> list[Document]:
    roles = [{"role": r.get("role"), "db": r.get("db")} for r in user.get("roles") or []]
    return sorted(roles, key=lambda role: (str(role["db"]), str(role["role"])))


class _Steps:
    """One `ensure_mongo_user` run on one admin client; `changes` is what it changed."""

    def __init__(
        self, client: AsyncMongoClient[Document], admin_url: str, desired: DesiredMongoUser
    ):
        self.admin_url = admin_url
        self.desired = desired
        self.names = desired.names
        self.database = client[desired.names.database]
        self.changes: list[MongoChange] = []

    async def mark_step(self, user: Document | None) -> None:
        """The database is ours (marked so), or new (mark it), or refused."""
        mark = await _mark(self.database)
        owner = self.desired.owner
        if mark == owner.mark:
            return
        if mark is not None or not await self._may_mark(user):
            raise _refuse(self.names, mark)
        await self.database[MARK_COLLECTION].update_one(
            {"_id": MARK_ID}, {"$set": {"mark": owner.mark}}, upsert=True
        )
        self.changes.append(MongoChange.MONGO_DATABASE_MARKED)

    async def _may_mark(self, user: Document | None) -> bool:
        if self.desired.owner.adopts_unmarked:
            return True
        if user is None:
            return not await _holds_data(self.database)
        # The mark is written before the user, so only our own user can be in an unmarked
        # database when its mark was deleted afterwards: it logs in with our password.
        return await mongo_password_works(self.admin_url, self.names, self.desired.password)

    async def user_step(self, user: Document | None, *, rotate: bool) -> None:
        if user is None:
            if await self._create_user():
                return
            user = await _user(self.database, self.names)  # created concurrently: look again
            if user is None:
                raise ProvisioningError(f"MongoDB user {self.names.user} vanished while created")
        if _roles_of(user) != _wanted_roles(self.names):
            await self.database.command(
                "updateUser", self.names.user, roles=_wanted_roles(self.names)
            )
            self.changes.append(MongoChange.MONGO_USER_ROLES_SET)
        if rotate:
            await self.set_password(MongoChange.MONGO_PASSWORD_ROTATED)
        elif not await mongo_password_works(self.admin_url, self.names, self.desired.password):
            await self.set_password(MongoChange.MONGO_PASSWORD_RESET)

    async def _create_user(self) -> bool:
        try:
            await self.database.command(
                "createUser",
                self.names.user,
                pwd=self.desired.password,
                roles=_wanted_roles(self.names),
                mechanisms=[MECHANISM],
            )
        except OperationFailure as exc:
            if exc.code == _USER_EXISTS:
                return False
            raise
        self.changes.append(MongoChange.MONGO_USER_CREATED)
        return True

    async def set_password(self, change: MongoChange) -> None:
        await self.database.command(
            "updateUser", self.names.user, pwd=self.desired.password, mechanisms=[MECHANISM]
        )
        self.changes.append(change)


async def ensure_mongo_user(
    admin_url: str, desired: DesiredMongoUser, *, rotate: bool = False
) -> MongoProvisioned:
    """Make the tenant's database mark and user what `desired` says, changing only what
    differs. `rotate` sets the password even if the old one still works; otherwise an
    existing user keeps its password unless a real login with `desired.password` fails."""
    async with _client(admin_url) as client:
        steps = _Steps(client, admin_url, desired)
        user = await _user(steps.database, desired.names)
        await steps.mark_step(user)
        await steps.user_step(user, rotate=rotate)
    return MongoProvisioned(
        names=desired.names,
        url=tenant_mongo_url(admin_url, desired.names, desired.password),
        password=desired.password,
        changes=tuple(steps.changes),
    )


async def drop_mongo(
    admin_url: str, names: MongoNames, owner: Owner, *, drop_database: bool
) -> tuple[str, ...]:
    """Drop the tenant's user and, with `drop_database`, its database, if the database is
    `owner`'s (or holds nothing); returns what was dropped. Another owner's raise and stay."""
    dropped: list[str] = []
    async with _client(admin_url) as client:
        database = client[names.database]
        user, mark = await _user(database, names), await _mark(database)
        holds_data = await _holds_data(database)
        ours = mark == owner.mark or (mark is None and owner.adopts_unmarked)
        if not ours and (mark is not None or holds_data or user is not None):
            raise _refuse(names, mark)
        if user is not None:
            await _drop_user(database, names)
            dropped.append(f"MongoDB user {names.user}")
        if drop_database and (mark is not None or holds_data):
            await client.drop_database(names.database)
            dropped.append(f"MongoDB database {names.database}")
    return tuple(dropped)


async def _drop_user(database: AsyncDatabase[Document], names: MongoNames) -> None:
    try:
        await database.command("dropUser", names.user)
    except OperationFailure as exc:
        if exc.code != _USER_NOT_FOUND:  # dropped meanwhile: what was asked for
            raise
