"""Articles are rendered straight from records (orjson), in `ArticleOut`'s shape: the bytes
must be exactly those `ArticleOut` and `ArticlePage` would send, for every source of values
(PostgreSQL's UUIDs and aware datetimes, SQLite's naive ones, entities after a write)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from asyncpg.pgproto import pgproto

from service.articles.repository import ArticleRecord
from service.articles.schemas import ArticleOut, ArticlePage
from service.articles.service import article_json, render, render_page
from service.core.pagination import CursorSigner, PagePosition, keyset_page

# Every ASCII control character, quotes, backslashes, and characters outside the BMP.
AWKWARD = "".join(chr(n) for n in range(0x80)) + "\u2028\u2029é😀\ufeff\U0010ffff</script>"


def record(
    tags: list[str], stamp: datetime, text: str = "Hello", as_pg: bool = False
) -> ArticleRecord:
    article_id = uuid.uuid4()
    return ArticleRecord(
        id=pgproto.UUID(str(article_id)) if as_pg else article_id,
        slug="hello",
        title=text,
        body=text,
        status="published",
        author_id=uuid.uuid4(),
        created_at=stamp,
        updated_at=stamp + timedelta(microseconds=1),
        version=3,
        tags=tags,
    )


def pydantic_bytes(item: ArticleRecord) -> bytes:
    return ArticleOut.model_validate(item, from_attributes=True).model_dump_json().encode()


STAMPS = [
    pytest.param(datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC), id="utc"),
    pytest.param(datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC), id="utc-whole-second"),
    pytest.param(datetime(2026, 1, 2, 3, 4, 5, 6789), id="naive-sqlite"),
    pytest.param(datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=timezone(timedelta(hours=2))), id="+02"),
]


@pytest.mark.parametrize("stamp", STAMPS)
@pytest.mark.parametrize("tags", [[], ["news"], ["a", AWKWARD]], ids=["no-tags", "tag", "awkward"])
@pytest.mark.parametrize("as_pg", [False, True], ids=["uuid", "asyncpg-uuid"])
def test_the_fast_render_is_byte_for_byte_what_article_out_sends(
    tags: list[str], stamp: datetime, as_pg: bool
) -> None:
    item = record(tags, stamp, text=AWKWARD if tags else "Hello", as_pg=as_pg)

    fast = render(item)

    assert fast.body == pydantic_bytes(item)
    assert fast.body.count(b'Z"') == 2  # both timestamps in UTC with a Z


@pytest.mark.parametrize("limit", [1, 2, 5], ids=["more", "exact", "short"])
async def test_a_page_renders_as_article_page_would(limit: int) -> None:
    stamp = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    items = [record([], stamp), record(["x", "y"], stamp.replace(tzinfo=None), as_pg=True)]
    signer = CursorSigner(b"secret", "articles")

    async def fetch(after: PagePosition | None, count: int) -> list[ArticleRecord]:
        return items[:count]

    def page_of(render_item: Callable[[ArticleRecord], Any]) -> Any:
        return keyset_page(
            fetch, render_item, signer=signer, scope="acme|{}", cursor=None, limit=limit
        )

    fast = render_page(await page_of(article_json))
    expected = ArticlePage.model_validate(
        (await page_of(lambda i: ArticleOut.model_validate(i, from_attributes=True))).model_dump()
    )

    assert fast == expected.model_dump_json().encode()


def test_article_out_names_the_shape_once() -> None:
    """The fast render follows ArticleOut: a field added there is rendered (or fails here)."""
    item = record(["news"], datetime(2026, 1, 2, tzinfo=UTC))

    assert list(article_json(item)) == list(ArticleOut.model_fields)
