"""Every articles query. Repositories never commit: the request's session does."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Sequence

from sqlalchemy import Select, and_, bindparam, delete, or_, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import joinedload, selectinload

from service.articles.models import Article, ArticleTag, Tag
from service.articles.schemas import ArticleFilters
from service.core.errors import Conflict
from service.core.pagination import PagePosition
from service.db.engine import after_commit


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _filtered(statement: Select[Article], filters: ArticleFilters) -> Select[Article]:
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


# Built once: constructing the statement cost more per request than running it (profile).
_BY_SLUG = (
    select(Article).options(joinedload(Article.tags)).where(Article.slug == bindparam("slug"))
)
_BY_SLUG_FOR_UPDATE = _BY_SLUG.with_for_update(of=Article)


class ArticleRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def get_by_slug(self, slug: str, *, for_update: bool = False) -> Article | None:
        """One statement: the article joined to its tags (one row per tag)."""
        statement = _BY_SLUG_FOR_UPDATE if for_update else _BY_SLUG
        result = await self.session.execute(statement, {"slug": slug})
        return result.unique().scalar_one_or_none()

    async def slug_taken(self, slug: str) -> bool:
        result = await self.session.execute(select(Article.id).where(Article.slug == slug))
        return result.first() is not None

    async def list_page(
        self, filters: ArticleFilters, after: PagePosition | None, limit: int
    ) -> Sequence[Article]:
        """Up to `limit` articles in (created_at, id) order after `after`, tags included.

        Two statements whatever the page size: the page, then all its tags (selectinload).
        """
        statement = _filtered(select(Article), filters)
        if after is not None:
            statement = statement.where(
                or_(
                    Article.created_at > after.created_at,
                    and_(Article.created_at == after.created_at, Article.id > after.id),
                )
            )
        statement = (
            statement.options(selectinload(Article.tags))
            .order_by(Article.created_at, Article.id)
            .limit(limit)
        )
        result = await self.session.execute(statement)
        return result.scalars().all()

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
        try:
            await self.session.flush()
        except IntegrityError:
            raise Conflict(f"An article with slug '{article.slug}' exists") from None
        return article

    async def save(self, article: Article) -> Article:
        await self.session.flush()
        return article

    async def remove(self, article: Article) -> None:
        await self.session.execute(delete(Article).where(Article.id == article.id))

    def after_commit(self, hook: Callable[[], Awaitable[None]]) -> None:
        after_commit(self.session, hook)

    @property
    def _dialect(self) -> str:
        return self.session.get_bind().dialect.name
