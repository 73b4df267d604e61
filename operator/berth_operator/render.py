"""What the operator writes for a tenant: its credentials Secret and its registry entry.

With spec.mongo.enabled both also hold the tenant's MongoDB URL and database; without it
they hold no MongoDB key at all (the service then gives the tenant no MongoDB of its own).
"""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

from sqlalchemy import make_url
from sqlalchemy.exc import ArgumentError

from berth_operator.resource import Tenant
from service.tenants.mongo_users import MongoNames, MongoProvisioned
from service.tenants.postgres import TenantNames, tenant_libpq_url
from service.tenants.schemas import TenantEntry, TenantStatus

CREDENTIALS_SECRET_PREFIX = "berth-tenant-"  # noqa: S105 - a name
DEFAULT_PORT = 5432
CREDENTIAL_KEYS = ("url", "host", "port", "database", "username", "password")
MONGO_CREDENTIAL_KEYS = ("mongo_url", "mongo_database", "mongo_username", "mongo_password")


def credentials_secret_name(slug: str) -> str:
    return f"{CREDENTIALS_SECRET_PREFIX}{slug}"


def credentials_data(
    admin_url: str, names: TenantNames, password: str, mongo: MongoProvisioned | None = None
) -> dict[str, str]:
    """The tenant's Secret: a libpq URL and its parts, for clients other than berth, and
    with `mongo` the MongoDB URL (authSource included) and its parts."""
    server = make_url(admin_url)
    values = (
        tenant_libpq_url(admin_url, names, password),
        server.host or "localhost",
        str(server.port or DEFAULT_PORT),
        names.database,
        names.role,
        password,
    )
    data = dict(zip(CREDENTIAL_KEYS, values, strict=True))
    if mongo is None:
        return data
    parts = (mongo.url, mongo.names.database, mongo.names.user, mongo.password)
    return data | dict(zip(MONGO_CREDENTIAL_KEYS, parts, strict=True))


def registry_entry(
    tenant: Tenant,
    database_url: str,
    schema_version: str | None,
    mongo: MongoProvisioned | None = None,
) -> TenantEntry:
    """The tenant's registry entry once everything below it is in place."""
    return TenantEntry.model_validate(
        {
            "slug": tenant.ref.slug,
            "status": TenantStatus.SUSPENDED if tenant.spec.suspended else TenantStatus.READY,
            "self_signup": tenant.spec.self_signup,
            "database_url": database_url,
            "schema_version": schema_version,
            "mongo_url": mongo.url if mongo else None,
            "mongo_database": mongo.names.database if mongo else None,
        }
    )


def registered_password(entry_value: str | None, names: TenantNames) -> str | None:
    """The password in a registry entry the operator wrote for this role, if any."""
    if not entry_value:
        return None
    try:
        url = make_url(TenantEntry.model_validate_json(entry_value).database_url.get_secret_value())
    except (ValueError, ArgumentError):  # not ours to trust: no password from it
        return None
    return url.password if url.username == names.role and url.password else None


def registered_mongo_password(entry_value: str | None, names: MongoNames) -> str | None:
    """The MongoDB password in a registry entry the operator wrote for this user, if any."""
    if not entry_value:
        return None
    try:
        mongo_url = TenantEntry.model_validate_json(entry_value).mongo_url
    except ValueError:  # not ours to trust: no password from it
        return None
    if mongo_url is None:
        return None
    url = urlsplit(mongo_url.get_secret_value())
    user = unquote(url.username or "")
    return unquote(url.password) if user == names.user and url.password else None
