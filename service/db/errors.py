"""Database errors as domain errors: a unique-constraint clash is a 409, never a 500."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Column
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

from service.core.errors import Conflict

# PostgreSQL's SQLSTATE for unique_violation.
UNIQUE_VIOLATION = "23505"


def violates_unique(exc: IntegrityError, column: InstrumentedAttribute[Any]) -> bool:
    """Whether `exc` is the unique constraint on `column` refusing a row.

    PostgreSQL names the constraint (`uq_<table>_<column>` by the naming convention);
    SQLite says "UNIQUE constraint failed: <table>.<column>".
    """
    table, name = _table_and_name(column)
    cause = exc.orig
    constraint = getattr(getattr(cause, "__cause__", None), "constraint_name", None)
    if getattr(cause, "sqlstate", None) == UNIQUE_VIOLATION or constraint is not None:
        return constraint == f"uq_{table}_{name}"
    return f"UNIQUE constraint failed: {table}.{name}" in str(cause)


async def flush_unique(
    session: AsyncSession, column: InstrumentedAttribute[Any], message: str
) -> None:
    """Flush now, so that a clash on `column`'s unique constraint is a Conflict here (409)
    and not an error at commit. The session is unusable afterwards: the request rolls back."""
    try:
        await session.flush()
    except IntegrityError as exc:
        if not violates_unique(exc, column):
            raise
        raise Conflict(message) from None


def _table_and_name(column: InstrumentedAttribute[Any]) -> tuple[str, str]:
    expression = column.expression
    assert isinstance(expression, Column)
    return expression.table.name, expression.name
