"""Database errors as domain errors: a unique-constraint clash is a 409 and an outage a 503
with Retry-After, never a 500."""

from __future__ import annotations

import errno
import socket
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.responses import Response
from sqlalchemy import Index, Table, UniqueConstraint
from sqlalchemy.exc import DBAPIError, DisconnectionError, IntegrityError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase

from service.core.dependencies import CORE
from service.core.error_handlers import error_response
from service.core.errors import Conflict, DomainError, exception_chain
from service.core.logging import get_logger
from service.core.metrics import DbErrorKind

log = get_logger(__name__)

# PostgreSQL's SQLSTATE for unique_violation.
UNIQUE_VIOLATION = "23505"


Unique = UniqueConstraint | Index


def unique_on(model: type[DeclarativeBase], *columns: str) -> Unique:
    """The unique constraint or index of `model`'s table on exactly `columns`."""
    table = model.__table__
    assert isinstance(table, Table)
    candidates: list[Unique] = [c for c in table.constraints if isinstance(c, UniqueConstraint)]
    candidates += [index for index in table.indexes if index.unique]
    for candidate in candidates:
        if [column.name for column in candidate.columns] == list(columns):
            return candidate
    raise LookupError(f"no unique constraint on {table.name}({', '.join(columns)})")


def violates_unique(exc: IntegrityError, *uniques: Unique) -> bool:
    """Whether `exc` is one of `uniques` refusing a row.

    PostgreSQL names the constraint or index; SQLite says "UNIQUE constraint failed:
    <table>.<column>, ..." (for a partial unique index too).
    """
    cause = exc.orig
    constraint = getattr(getattr(cause, "__cause__", None), "constraint_name", None)
    postgres = getattr(cause, "sqlstate", None) == UNIQUE_VIOLATION or constraint is not None
    for unique in uniques:
        assert unique.table is not None
        if postgres and constraint == unique.name:
            return True
        columns = ", ".join(f"{unique.table.name}.{column.name}" for column in unique.columns)
        if not postgres and f"UNIQUE constraint failed: {columns}" in str(cause):
            return True
    return False


async def flush_unique(session: AsyncSession, message: str, *uniques: Unique) -> None:
    """Flush now, so that a clash on one of `uniques` is a Conflict here (409) and not an
    error at commit. The session is unusable afterwards: the request rolls back."""
    try:
        await session.flush()
    except IntegrityError as exc:
        if not violates_unique(exc, *uniques):
            raise
        raise Conflict(message) from None


RETRY_AFTER_SECONDS = 2
# What a route that uses a database may answer besides its own codes (an outage).
DATABASE_ERRORS = (HTTPStatus.SERVICE_UNAVAILABLE,)


class DatabaseUnavailable(DomainError):
    """The database did not answer, refused or dropped the connection: 503, worth a retry."""

    status_code = HTTPStatus.SERVICE_UNAVAILABLE
    message = "The database is unavailable; retry shortly"

    def __init__(self) -> None:
        super().__init__(headers={"Retry-After": str(RETRY_AFTER_SECONDS)})


# SQLSTATEs of a server that is not there for us: connection exceptions (class 08), shutting
# down or starting up (57P01-57P03), out of connection slots (53300).
_UNAVAILABLE_SQLSTATES = ("08", "57P01", "57P02", "57P03", "53300")
# What a refused, unreachable or reset TCP connection looks like below the driver.
_NETWORK_ERRNOS = frozenset(
    {
        errno.ECONNREFUSED,
        errno.ECONNRESET,
        errno.ECONNABORTED,
        errno.EHOSTUNREACH,
        errno.ENETUNREACH,
        errno.ETIMEDOUT,
        errno.EPIPE,
    }
)
# The exception types whose handler asks `is_unavailable`; the rest is a 500 as before.
UNAVAILABILITY_CANDIDATES: tuple[type[Exception], ...] = (
    OSError,
    TimeoutError,
    DBAPIError,
    PoolTimeoutError,
    DisconnectionError,
)


def is_unavailable(exc: BaseException) -> bool:
    """Whether `exc`, or an error it was raised from, says the database cannot be reached
    (rather than that a statement was wrong)."""
    return any(_says_unavailable(error) for error in exception_chain(exc))


def _says_unavailable(error: BaseException) -> bool:
    if isinstance(error, ConnectionError | TimeoutError | socket.gaierror):
        return True
    if type(error) is OSError:
        # asyncpg reports every address it tried in one plain OSError, without an errno.
        return error.errno is None or error.errno in _NETWORK_ERRNOS
    if isinstance(error, PoolTimeoutError | DisconnectionError):
        return True
    if isinstance(error, DBAPIError) and error.connection_invalidated:
        return True
    sqlstate = getattr(error, "sqlstate", None)
    return isinstance(sqlstate, str) and sqlstate.startswith(_UNAVAILABLE_SQLSTATES)


def error_kind(exc: BaseException) -> DbErrorKind | None:
    """The `kind` label of berth_db_errors_total for `exc`; None when not the database's."""
    if is_unavailable(exc):
        return (
            DbErrorKind.POOL_TIMEOUT
            if any(isinstance(e, PoolTimeoutError) for e in exception_chain(exc))
            else DbErrorKind.CONNECTION
        )
    return DbErrorKind.STATEMENT if isinstance(exc, DBAPIError) else None


async def _handle_database_error(request: Request, exc: Exception) -> Response:
    kind = error_kind(exc)
    if kind is not None:
        CORE.of(request).metrics.db_errors.labels(kind=kind.value).inc()
    if kind not in (DbErrorKind.CONNECTION, DbErrorKind.POOL_TIMEOUT):
        raise exc  # not an outage: the unexpected-error path answers (500) and logs it
    log.warning("database_unavailable", path=request.url.path, error=type(exc).__name__)
    unavailable = DatabaseUnavailable()
    return error_response(
        request, unavailable.status_code, unavailable.message, headers=unavailable.headers
    )


def install_database_error_handlers(app: FastAPI) -> None:
    """Answer a database outage, wherever a route or dependency meets it, with the 503."""
    for candidate in UNAVAILABILITY_CANDIDATES:
        app.add_exception_handler(candidate, _handle_database_error)
