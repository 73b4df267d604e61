"""Keyset pagination for every list endpoint: one page algorithm, one `Page[T]`, one cursor.

A page is the first `limit` rows strictly after a position in `(created_at, id)` order; the
repository fetches `limit + 1` so that `has_more` needs no count. A cursor is
base64url(JSON position) + "." + base64url(HMAC-SHA256, 16 bytes). The MAC covers the
listing's scope (who lists, in which tenant, with which filters), so a cursor only continues
the listing that produced it: an edited cursor, or one replayed with other filters or in
another tenant, is refused. Cursors are signed with `BERTH_PAGINATION__CURSOR_SECRET`, a key of
their own, derived per listing kind so that one kind's cursor is never another's.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Generic, Protocol, TypeVar

from fastapi import Query
from pydantic import BaseModel, Field

from service.core.clock import as_utc
from service.core.errors import BadRequest

CURSOR_VERSION = 1
MAC_BYTES = 16
MAX_CURSOR_LENGTH = 512
MAX_PAGE_SIZE = 100
DEFAULT_PAGE_SIZE = 20

ItemT = TypeVar("ItemT")
RowT = TypeVar("RowT", bound="Positioned")
PageSize = Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE, description="Items per page")]
CursorParam = Annotated[
    str | None, Query(max_length=MAX_CURSOR_LENGTH, description="`next_cursor` of the last page")
]


class InvalidCursor(Exception):
    """Not a cursor this service issued for this listing."""


class Positioned(Protocol):
    """A row a keyset listing can continue after."""

    @property
    def created_at(self) -> datetime: ...

    @property
    def id(self) -> uuid.UUID: ...


@dataclass(frozen=True, slots=True)
class PagePosition:
    """Where a page ended: the (created_at, id) of its last item."""

    created_at: datetime
    id: uuid.UUID

    @classmethod
    def of(cls, row: Positioned) -> PagePosition:
        return cls(created_at=row.created_at, id=row.id)


class Page(BaseModel, Generic[ItemT]):
    """Every list endpoint answers with this object, never a bare array."""

    items: list[ItemT]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page")
    has_more: bool


def _b64encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _b64decode(text: str) -> bytes:
    raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    # The last character may carry unused bits: accept only the canonical spelling, so
    # that no edit of a cursor goes unnoticed.
    if _b64encode(raw) != text:
        raise ValueError("non-canonical base64")
    return raw


class CursorSigner:
    """Signs and reads the cursors of one listing kind ("users", "articles")."""

    def __init__(self, secret: bytes, kind: str) -> None:
        self._key = hashlib.sha256(b"berth:cursor:" + kind.encode() + b":" + secret).digest()

    def _mac(self, payload: bytes, scope: str) -> bytes:
        digest = hmac.new(self._key, payload + b"|" + scope.encode(), hashlib.sha256).digest()
        return digest[:MAC_BYTES]

    def encode(self, position: PagePosition, scope: str) -> str:
        body = {
            "v": CURSOR_VERSION,
            "c": as_utc(position.created_at).isoformat(),
            "i": str(position.id),
        }
        payload = json.dumps(body, separators=(",", ":")).encode()
        return f"{_b64encode(payload)}.{_b64encode(self._mac(payload, scope))}"

    def decode(self, cursor: str, scope: str) -> PagePosition:
        """The position a cursor names; InvalidCursor unless issued here for `scope`."""
        if len(cursor) > MAX_CURSOR_LENGTH or cursor.count(".") != 1:
            raise InvalidCursor("malformed")
        encoded_payload, encoded_mac = cursor.split(".")
        try:
            payload, mac = _b64decode(encoded_payload), _b64decode(encoded_mac)
        except (binascii.Error, ValueError) as exc:
            raise InvalidCursor("not base64url") from exc
        if not hmac.compare_digest(mac, self._mac(payload, scope)):
            raise InvalidCursor("signature mismatch")
        try:
            body = json.loads(payload)
            if body["v"] != CURSOR_VERSION:
                raise InvalidCursor("unknown version")
            return PagePosition(
                created_at=as_utc(datetime.fromisoformat(body["c"])), id=uuid.UUID(body["i"])
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise InvalidCursor("malformed payload") from exc

    def position_after(self, cursor: str | None, scope: str) -> PagePosition | None:
        """Where the next page starts; a 400 in the envelope for a cursor we did not issue."""
        if cursor is None:
            return None
        try:
            return self.decode(cursor, scope)
        except InvalidCursor:
            raise BadRequest("The cursor is not valid for this listing") from None


FetchAfter = Callable[[PagePosition | None, int], Awaitable[Sequence[RowT]]]


async def keyset_page(
    fetch: FetchAfter[RowT],
    render: Callable[[RowT], ItemT],
    *,
    signer: CursorSigner,
    scope: str,
    cursor: str | None,
    limit: int,
) -> Page[ItemT]:
    """One page of a listing: `fetch(after, n)` returns up to n rows in (created_at, id)
    order strictly after `after`; `render` turns a row into what the page carries."""
    after = signer.position_after(cursor, scope)
    rows = await fetch(after, limit + 1)
    has_more = len(rows) > limit
    shown = rows[:limit]
    next_cursor = signer.encode(PagePosition.of(shown[-1]), scope) if has_more else None
    items = [render(row) for row in shown]
    return Page(items=items, next_cursor=next_cursor, has_more=has_more)
