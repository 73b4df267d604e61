"""Cursors: opaque, signed per listing kind and scope; the page algorithm cuts and links pages."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

import pytest

from service.core.errors import BadRequest
from service.core.pagination import CursorSigner, InvalidCursor, PagePosition, keyset_page

SECRET = b"a cursor secret of at least thirty-two bytes"


class Row(NamedTuple):
    created_at: datetime
    id: uuid.UUID


ROWS = [
    Row(datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=n), uuid.UUID(int=n)) for n in range(5)
]


async def fetch(after: PagePosition | None, limit: int) -> list[Row]:
    """ROWS in keyset order after `after`, as a repository would answer."""
    rows = [r for r in ROWS if after is None or (r.created_at, r.id) > (after.created_at, after.id)]
    return rows[:limit]


def test_a_cursor_continues_only_its_own_kind_scope_and_secret() -> None:
    signer = CursorSigner(SECRET, "articles")
    position = PagePosition.of(ROWS[2])
    cursor = signer.encode(position, "acme|{}")

    assert signer.decode(cursor, "acme|{}") == position
    for other, scope in (
        (signer, "beta|{}"),
        (CursorSigner(SECRET, "users"), "acme|{}"),
        (CursorSigner(b"another secret of thirty-two bytes or more", "articles"), "acme|{}"),
    ):
        with pytest.raises(InvalidCursor):
            other.decode(cursor, scope)


def test_a_foreign_cursor_is_a_400_in_the_envelope() -> None:
    with pytest.raises(BadRequest):
        CursorSigner(SECRET, "articles").position_after("not.a-cursor", "scope")


async def test_keyset_page_walks_every_row_once_and_says_when_there_is_more() -> None:
    signer = CursorSigner(SECRET, "rows")
    seen: list[Row] = []
    cursor: str | None = None
    pages = 0
    while True:
        page = await keyset_page(fetch, lambda r: r, signer=signer, scope="s", cursor=cursor,
                                 limit=2)  # fmt: skip
        pages += 1
        seen += page.items
        if not page.has_more:
            assert page.next_cursor is None
            break
        cursor = page.next_cursor

    assert seen == ROWS
    assert pages == 3
