"""Keyset pagination shared by every list endpoint: positions, opaque cursors, pages.

A cursor is base64url(JSON position) + "." + base64url(HMAC-SHA256, 16 bytes). The MAC also
covers the listing's scope (who lists, with which filters), so a cursor only continues the
listing that produced it: an edited cursor, or one replayed with other filters, is refused.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Generic, TypeVar

from fastapi import Query
from pydantic import BaseModel

from service.core.errors import BadRequest

CURSOR_VERSION = 1
MAC_BYTES = 16
MAX_CURSOR_LENGTH = 512
MAX_PAGE_SIZE = 100
DEFAULT_PAGE_SIZE = 20

ItemT = TypeVar("ItemT")
PageSize = Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE, description="Items per page")]
CursorParam = Annotated[
    str | None, Query(max_length=MAX_CURSOR_LENGTH, description="`next_cursor` of the last page")
]


class InvalidCursor(Exception):
    """Not a cursor this service issued for this listing."""


@dataclass(frozen=True, slots=True)
class PagePosition:
    """Where a page ended: the (created_at, id) of its last item."""

    created_at: datetime
    id: uuid.UUID


class Page(BaseModel, Generic[ItemT]):
    """Every list endpoint answers with this object, never a bare array."""

    items: list[ItemT]
    next_cursor: str | None
    has_more: bool


def cursor_key(secret: bytes, purpose: str) -> bytes:
    """A key of its own per listing kind, derived from the signing secret, so cursors can
    never act as tokens nor one listing's cursor as another's."""
    return hashlib.sha256(b"berth:cursor:" + purpose.encode() + b":" + secret).digest()


def _b64encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _b64decode(text: str) -> bytes:
    raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    # The last character may carry unused bits: accept only the canonical spelling, so
    # that no edit of a cursor goes unnoticed.
    if _b64encode(raw) != text:
        raise ValueError("non-canonical base64")
    return raw


def _mac(key: bytes, payload: bytes, scope: str) -> bytes:
    return hmac.new(key, payload + b"|" + scope.encode(), hashlib.sha256).digest()[:MAC_BYTES]


def as_utc(value: datetime) -> datetime:
    # SQLite hands back naive datetimes; everything is stored in UTC.
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def encode_cursor(position: PagePosition, *, key: bytes, scope: str) -> str:
    body = {
        "v": CURSOR_VERSION,
        "c": as_utc(position.created_at).isoformat(),
        "i": str(position.id),
    }
    payload = json.dumps(body, separators=(",", ":")).encode()
    return f"{_b64encode(payload)}.{_b64encode(_mac(key, payload, scope))}"


def position_after(cursor: str | None, *, key: bytes, scope: str) -> PagePosition | None:
    """Where the next page starts; a 400 in the envelope for a cursor we did not issue."""
    if cursor is None:
        return None
    try:
        return decode_cursor(cursor, key=key, scope=scope)
    except InvalidCursor:
        raise BadRequest("The cursor is not valid for this listing") from None


def decode_cursor(cursor: str, *, key: bytes, scope: str) -> PagePosition:
    """The position a cursor names; InvalidCursor unless this service issued it for `scope`."""
    if len(cursor) > MAX_CURSOR_LENGTH or cursor.count(".") != 1:
        raise InvalidCursor("malformed")
    encoded_payload, encoded_mac = cursor.split(".")
    try:
        payload, mac = _b64decode(encoded_payload), _b64decode(encoded_mac)
    except (binascii.Error, ValueError) as exc:
        raise InvalidCursor("not base64url") from exc
    if not hmac.compare_digest(mac, _mac(key, payload, scope)):
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
