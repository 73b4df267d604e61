"""MongoDB clients (PyMongo's async client; Motor is deprecated) and what an outage means.

One client per server URL and credentials, created without I/O (PyMongo connects in the
background on first use), with a bounded pool and timeouts: an unreachable server is a 503
in `timeout_seconds`, never a hung request.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from pymongo import AsyncMongoClient
from pymongo.errors import (
    AutoReconnect,
    ConnectionFailure,
    ExecutionTimeout,
    NetworkTimeout,
    OperationFailure,
    PyMongoError,
    ServerSelectionTimeoutError,
    WTimeoutError,
)

from service.core.config import MongoSettings, env_name
from service.core.errors import DomainError, exception_chain

RETRY_AFTER_SECONDS = 2
# Server error codes that mean "these credentials cannot be used": AuthenticationFailed and
# Unauthorized. Locally they are a misconfiguration; in a cluster a password being rotated.
_CREDENTIAL_CODES = frozenset({13, 18})
_OUTAGES = (
    AutoReconnect,
    ConnectionFailure,
    ExecutionTimeout,
    NetworkTimeout,
    ServerSelectionTimeoutError,
    WTimeoutError,
)

MongoDocument = dict[str, Any]


class MongoUnavailable(DomainError):
    """The MongoDB server did not answer, dropped the connection or refused the tenant's
    credentials: 503, worth a retry."""

    status_code = HTTPStatus.SERVICE_UNAVAILABLE
    message = "The document database is unavailable; retry shortly"

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message, headers={"Retry-After": str(RETRY_AFTER_SECONDS)})


class MongoNotConfigured(DomainError):
    """No MongoDB server is configured: the document features cannot work here."""

    status_code = HTTPStatus.SERVICE_UNAVAILABLE

    def __init__(self) -> None:
        super().__init__(
            f"Submissions need MongoDB, which is not configured (set {env_name('mongo', 'url')})"
        )


def create_client(url: str, settings: MongoSettings) -> AsyncMongoClient[MongoDocument]:
    """A client with a bounded pool; no I/O until first used."""
    timeout_ms = int(settings.timeout_seconds * 1000)
    return AsyncMongoClient(
        url,
        maxPoolSize=settings.pool_size,
        connectTimeoutMS=int(settings.connect_timeout_seconds * 1000),
        serverSelectionTimeoutMS=timeout_ms,
        timeoutMS=timeout_ms,
        tz_aware=True,
        uuidRepresentation="standard",
        appname="berth",
    )


def is_outage(exc: BaseException) -> bool:
    """Whether `exc` (or what it was raised from) says the server cannot serve us now,
    rather than that a command was wrong."""
    for error in exception_chain(exc):
        if isinstance(error, _OUTAGES):
            return True
        if isinstance(error, OperationFailure) and error.code in _CREDENTIAL_CODES:
            return True
    return False


def as_domain_error(exc: PyMongoError) -> DomainError | None:
    """The 503 for an outage; None for anything else (a bug: the 500 path logs it)."""
    return MongoUnavailable() if is_outage(exc) else None
