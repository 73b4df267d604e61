"""The keyset predicate and order of every listing: (created_at, id), strictly after a cursor."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import Select, and_, or_
from sqlalchemy.orm import InstrumentedAttribute

from service.core.pagination import PagePosition

AnySelect = TypeVar("AnySelect", bound=Select[*tuple[Any, ...]])


def page_after(
    statement: AnySelect,
    created_at: InstrumentedAttribute[datetime],
    id_: InstrumentedAttribute[uuid.UUID],
    after: PagePosition | None,
    limit: int,
) -> AnySelect:
    """`statement` limited to `limit` rows after `after`, in (created_at, id) order (an index
    on those two columns serves both the order and the predicate)."""
    if after is not None:
        statement = statement.where(
            or_(created_at > after.created_at, and_(created_at == after.created_at, id_ > after.id))
        )
    return statement.order_by(created_at, id_).limit(limit)
