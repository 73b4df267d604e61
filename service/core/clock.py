"""Time: one UTC "now" and one way to write a timestamp, on every backend and path.

Every timestamp berth stores is UTC; every one it sends is ISO-8601 with a `Z`
("2026-01-02T03:04:05.678901Z", no fraction when it is zero), the form pydantic and the
log timestamper write. SQLite hands datetimes back without a zone: `UtcDateTime` puts UTC
back on them, so a row read from SQLite is sent exactly like one read from PostgreSQL.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from pydantic import AfterValidator


def utc_now() -> datetime:
    """The current time, timezone-aware, in UTC."""
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """`value` in UTC; a naive datetime (SQLite) is taken to be UTC already."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def isoformat_z(value: datetime) -> str:
    """`value` as berth writes timestamps: ISO-8601, UTC, `Z`."""
    return as_utc(value).isoformat().replace("+00:00", "Z")


def utc_timestamp() -> str:
    """Now, as berth writes timestamps."""
    return isoformat_z(utc_now())


# Response models declare their timestamps with this type: aware UTC in, `...Z` out.
UtcDateTime = Annotated[datetime, AfterValidator(as_utc)]
