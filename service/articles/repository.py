"""Every articles query. Reads (`ArticleReads`) run on a request's read connection, writes
(`ArticleRepository`) on its session, which commits; both build on the statements here."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import Select, bindparam, delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import joinedload

from service.articles.models import Article, ArticleTag, Tag
from service.articles.schemas import ArticleFilters
from service.core.pagination import PagePosition
from service.db.engine import ReadRow, RowReader
from service.db.errors import flush_unique, unique_on
from service.db.keyset import page_after

SLUG_UNIQUE = unique_on(Article, "slug")


def slug_taken_message(slug: str) -> str:
    return f"An article with slug '{slug}' exists"


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


AnySelect = TypeVar("AnySelect", bound=Select[*tuple[Any, ...]])


def _filtered(statement: AnySelect, filters: ArticleFilters) -> AnySelect:
    if filters.status is not None:
        statement = statement.where(Article.status == filters.status.value)
    if filters.author_id is not None:
        statement = statement.where(Article.author_id == filters.author_id)
    if filters.q is not None:
        pattern = f"%{_escape_like(filters.q)}%"
        statement = statement.where(Article.title.ilike(pattern, escape="\\"))
    if filters.tag is not None:
        tagged = (
            select(ArticleTag.article_id)
            .join(Tag, Tag.id == ArticleTag.tag_id)
            .where(Tag.name == filters.tag)
        )
        statement = statement.where(Article.id.in_(tagged))
    return statement


@dataclass(frozen=True, slots=True)
class ArticleRecord:
    """An article as read: plain columns and tag names, no ORM entity (reads are hot)."""

    id: uuid.UUID
    slug: str
    title: str
    body: str
    status: str
    author_id: uuid.UUID
    created_at: datetime
    updated_at: datetime
    version: int
    tags: list[str]

    @classmethod
    def of(cls, article: Article, tags: list[str]) -> ArticleRecord:
        """From an entity (writes)."""
        return cls(*[*(getattr(article, name) for name in _RECORD_COLUMNS), tags])

    @classmethod
    def of_row(cls, row: ReadRow, tags: list[str]) -> ArticleRecord:
        """From a row starting with `_COLUMNS` (reads)."""
        return cls(*[*row[:_COLUMN_COUNT], tags])


# The record's fields but its tags, in order: every read selects these columns first.
_RECORD_COLUMNS = tuple(field.name for field in fields(ArticleRecord) if field.name != "tags")
_COLUMNS = tuple(getattr(Article, name) for name in _RECORD_COLUMNS)
_COLUMN_COUNT = len(_COLUMNS)
_ID = _RECORD_COLUMNS.index("id")
# Built once: constructing a statement cost more per request than running it (profile).
# Reads select columns, not entities: ORM identity-map loading was the largest part of a
# list page's time (docs/benchmarks.md).
_RECORD_BY_SLUG = (
    select(*_COLUMNS, Tag.name)
    .outerjoin(ArticleTag, ArticleTag.article_id == Article.id)
    .outerjoin(Tag, Tag.id == ArticleTag.tag_id)
    .where(Article.slug == bindparam("slug"))
    .order_by(Tag.name)
)
_TAGS_OF = (
    select(ArticleTag.article_id, Tag.name)
    .join(Tag, Tag.id == ArticleTag.tag_id)
    .where(ArticleTag.article_id.in_(bindparam("ids", expanding=True)))
    .order_by(Tag.name)
)
_ENTITY_FOR_UPDATE = (
    select(Article)
    .options(joinedload(Article.tags))
    .where(Article.slug == bindparam("slug"))
    .with_for_update(of=Article)
)


class ArticleReads:
    """The reads of GET routes, on the request's read connection (no session, no entity)."""

    def __init__(self, reader: RowReader) -> None:
        self.reader = reader

    async def get_record(self, slug: str) -> ArticleRecord | None:
        """One statement: the article's columns joined to its tag names (a row per tag)."""
        rows = await self.reader.all(_RECORD_BY_SLUG, {"slug": slug})
        if not rows:
            return None
        return ArticleRecord.of_row(rows[0], [row[-1] for row in rows if row[-1] is not None])

    async def list_page(
        self, filters: ArticleFilters, after: PagePosition | None, limit: int
    ) -> list[ArticleRecord]:
        """Up to `limit` articles in (created_at, id) order after `after`, tags included.

        Two statements whatever the page size: the page, then the tags of all its articles.
        """
        statement = _filtered(select(*_COLUMNS), filters)
        statement = page_after(statement, Article.created_at, Article.id, after, limit)
        rows = await self.reader.all(statement)
        if not rows:
            return []
        tags: dict[uuid.UUID, list[str]] = {row[_ID]: [] for row in rows}
        for article_id, name in await self.reader.all(_TAGS_OF, {"ids": list(tags)}):
            tags[article_id].append(name)
        return [ArticleRecord.of_row(row, tags[row[_ID]]) for row in rows]


class ArticleRepository:
    """The writes, on the request's session (POST, PATCH, DELETE)."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def get_for_update(self, slug: str) -> Article | None:
        """The entity with its tags, row-locked until the transaction ends (writes)."""
        result = await self.session.execute(_ENTITY_FOR_UPDATE, {"slug": slug})
        return result.unique().scalar_one_or_none()

    async def slug_taken(self, slug: str) -> bool:
        result = await self.session.execute(select(Article.id).where(Article.slug == slug))
        return result.first() is not None

    async def tags_named(self, names: Sequence[str]) -> list[Tag]:
        """The tags with these names, created when missing (safe under concurrent writers)."""
        if not names:
            return []
        insert = postgresql.insert if self._dialect == "postgresql" else sqlite.insert
        await self.session.execute(
            insert(Tag)
            .values([{"id": uuid.uuid4(), "name": name} for name in names])
            .on_conflict_do_nothing(index_elements=["name"])
        )
        result = await self.session.execute(select(Tag).where(Tag.name.in_(names)))
        by_name = {tag.name: tag for tag in result.scalars()}
        return [by_name[name] for name in names]

    async def add(self, article: Article) -> Article:
        """Insert; a slug taken meanwhile by a concurrent writer is a Conflict, not a 500."""
        self.session.add(article)
        await flush_unique(self.session, slug_taken_message(article.slug), SLUG_UNIQUE)
        return article

    async def save(self, article: Article) -> Article:
        await self.session.flush()
        return article

    async def remove(self, article: Article) -> None:
        await self.session.execute(delete(Article).where(Article.id == article.id))

    @property
    def _dialect(self) -> str:
        return self.session.get_bind().dialect.name
