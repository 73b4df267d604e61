"""Why a reconcile failed: a reason, a message fit for a status, and whether to retry."""

from __future__ import annotations

from collections.abc import Iterable

import asyncpg
import httpx2
import psycopg
import pymongo.errors
from lightkube import ApiError
from sqlalchemy.exc import ArgumentError, DBAPIError, OperationalError, SQLAlchemyError

from berth_operator.kube import CredentialsConflict, is_temporary
from berth_operator.registry import RegistryWriteFailed
from berth_operator.resource import InvalidTenant
from berth_operator.status import Failure, Step
from service.core.commands import first_line
from service.core.logging import REDACTED
from service.tenants.mongo_users import InvalidMongoUrl, MongoUnreachable
from service.tenants.postgres import OwnershipConflict, ProvisioningError, ServerUnreachable

OWNERSHIP_HELP = "see operator/README.md, 'An ownership clash'"


class ReconcileFailed(RuntimeError):
    """A run stopped at a step; `failure` says why (already in the status and an Event)."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.text)
        self.failure = failure


class NoServer(InvalidTenant):
    """Neither the Tenant nor the operator's configuration names a server."""


class NoMongoServer(InvalidTenant):
    """spec.mongo.enabled, but neither the Tenant nor the operator names a MongoDB server."""


class ServerSecretMissing(RuntimeError):
    """The Secret with the admin URL (or its key) is not there (yet)."""


class InvalidServerUrl(ValueError):
    """The admin URL in the server Secret is not a URL (its text is never shown)."""


# The first match wins: subclasses before their bases.
_RULES: tuple[tuple[type[BaseException] | tuple[type[BaseException], ...], str, bool], ...] = (
    (NoServer, "NoServer", False),
    (NoMongoServer, "NoMongoServer", False),
    (InvalidTenant, "InvalidSpec", False),
    (ServerSecretMissing, "ServerSecretMissing", True),
    (ServerUnreachable, "ServerUnreachable", True),
    ((MongoUnreachable, pymongo.errors.ConnectionFailure), "MongoUnavailable", True),
    (OwnershipConflict, "OwnershipConflict", False),
    (ProvisioningError, "ProvisioningFailed", False),
    (CredentialsConflict, "SecretConflict", True),
    (RegistryWriteFailed, "RegistryConflict", True),
    ((InvalidServerUrl, ArgumentError), "InvalidServerUrl", False),
    ((InvalidMongoUrl, pymongo.errors.ConfigurationError), "InvalidMongoUrl", False),
    (pymongo.errors.PyMongoError, "MongoError", False),
    (
        (
            psycopg.OperationalError,
            OSError,
            asyncpg.PostgresConnectionError,
            asyncpg.CannotConnectNowError,
            asyncpg.TooManyConnectionsError,
            OperationalError,
        ),
        "DatabaseUnavailable",
        True,
    ),
    ((psycopg.Error, asyncpg.PostgresError), "DatabaseError", False),
    (SQLAlchemyError, "MigrationFailed", False),
)
# Errors whose messages berth wrote itself: shown in full. Others: their first line only.
_OWN_MESSAGES = (
    InvalidTenant,
    ProvisioningError,
    ServerSecretMissing,
    InvalidServerUrl,
    InvalidMongoUrl,
    CredentialsConflict,
    RegistryWriteFailed,
)


def classify(step: Step, exc: BaseException) -> tuple[str, str, bool]:
    """(reason, message, temporary) of a failure. Unknown errors are temporary (kopf backs
    off) and named by type only, so no unknown text reaches a status."""
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return "DatabaseUnavailable", first_line(exc), True
    for kinds, reason, temporary in _RULES:
        if not isinstance(exc, kinds):
            continue
        message = str(exc) if isinstance(exc, _OWN_MESSAGES) else first_line(exc)
        if isinstance(exc, OwnershipConflict):
            message = f"{message}; {OWNERSHIP_HELP}"
        return reason, message, temporary
    if isinstance(exc, ApiError | httpx2.HTTPStatusError | httpx2.TransportError):
        return "KubernetesApiError", first_line(exc), is_temporary(exc)
    return "InternalError", f"{type(exc).__name__} in step {step}", True


def scrub(text: str, secrets: Iterable[str]) -> str:
    """`text` with every secret replaced: the last guard before a status, Event or log."""
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    return text
