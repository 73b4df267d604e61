"""Article rules: who may write what, slugs, versions, ETags and the cache. No FastAPI here."""

from __future__ import annotations

import re
import secrets
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

from service.articles.cache import ArticleCache, RenderedArticle
from service.articles.models import Article
from service.articles.repository import ArticleRecord, ArticleRepository
from service.articles.schemas import (
    ArticleCreate,
    ArticleFilters,
    ArticleOut,
    ArticlePage,
    ArticlePatch,
)
from service.core.errors import Conflict, Forbidden, NotFound, PreconditionFailed
from service.core.pagination import PagePosition, encode_cursor, position_after
from service.users.models import Role

ARTICLE_NOT_FOUND = "Article not found"
EDITORS = frozenset({Role.OWNER, Role.ADMIN, Role.PLATFORM_ADMIN})
_NOT_SLUG = re.compile(r"[^a-z0-9]+")


@dataclass(frozen=True, slots=True)
class Actor:
    user_id: uuid.UUID
    role: Role

    def may_edit(self, article: Article) -> bool:
        return self.role in EDITORS or article.author_id == self.user_id


def slugify(title: str, max_length: int = 120) -> str:
    slug = _NOT_SLUG.sub("-", title.lower()).strip("-")[:max_length].strip("-")
    return slug or "article"


def etag_of(article: Article | ArticleRecord) -> str:
    return f'"{article.id.hex}.{article.version}"'


def etag_matches(header: str | None, etag: str) -> bool:
    """RFC 9110 list matching; weak comparison (W/ ignored), `*` matches any."""
    if header is None:
        return False
    candidates = {part.strip().removeprefix("W/") for part in header.split(",")}
    return "*" in candidates or etag in candidates


def to_out(article: ArticleRecord) -> ArticleOut:
    return ArticleOut.model_validate(article, from_attributes=True)


def render(article: Article | ArticleRecord) -> RenderedArticle:
    record = (
        ArticleRecord.of(article, [tag.name for tag in article.tags])
        if isinstance(article, Article)
        else article
    )
    body = to_out(record).model_dump_json().encode()
    return RenderedArticle(slug=record.slug, etag=etag_of(record), body=body)


def _distinct(names: Iterable[str]) -> list[str]:
    return sorted(set(names))


class ArticleService:
    def __init__(
        self, repository: ArticleRepository, cache: ArticleCache, *, cursor_key: bytes
    ) -> None:
        self.repository = repository
        self.cache = cache
        self.cursor_key = cursor_key

    async def get(self, slug: str) -> RenderedArticle:
        """The article as sent, from the cache when it is there."""
        cached = await self.cache.get(slug)
        if cached is not None:
            return cached
        article = await self.repository.get_record(slug)
        if article is None:
            raise NotFound(ARTICLE_NOT_FOUND)
        rendered = render(article)
        await self.cache.put(slug, rendered)
        return rendered

    async def list_page(
        self, filters: ArticleFilters, cursor: str | None, limit: int
    ) -> ArticlePage:
        scope = filters.model_dump_json()
        after = position_after(cursor, key=self.cursor_key, scope=scope)
        rows = await self.repository.list_page(filters, after, limit + 1)
        has_more = len(rows) > limit
        page = rows[:limit]
        next_cursor = None
        if has_more:
            last = page[-1]
            position = PagePosition(created_at=last.created_at, id=last.id)
            next_cursor = encode_cursor(position, key=self.cursor_key, scope=scope)
        items = [to_out(article) for article in page]
        return ArticlePage(items=items, next_cursor=next_cursor, has_more=has_more)

    async def create(self, actor: Actor, data: ArticleCreate) -> RenderedArticle:
        slug = await self._free_slug(data)
        article = Article(
            id=uuid.uuid4(),
            slug=slug,
            title=data.title,
            body=data.body,
            status=data.status.value,
            author_id=actor.user_id,
            version=1,
        )
        article.tags = await self.repository.tags_named(_distinct(data.tags))
        await self.repository.add(article)
        return render(article)

    async def update(
        self, actor: Actor, slug: str, patch: ArticlePatch, if_match: str | None
    ) -> RenderedArticle:
        article = await self._writable(actor, slug, if_match)
        changes = patch.changes()
        new_slug = changes.get("slug", slug)
        if new_slug != slug and await self.repository.slug_taken(new_slug):
            raise Conflict(f"An article with slug '{new_slug}' exists")
        for field in ("title", "body", "slug"):
            if field in changes:
                setattr(article, field, changes[field])
        if "status" in changes:
            article.status = changes["status"].value
        if "tags" in changes:
            article.tags = await self.repository.tags_named(_distinct(changes["tags"]))
        article.version += 1
        await self.repository.save(article)
        self._forget_after_commit(slug, new_slug)
        return render(article)

    async def delete(self, actor: Actor, slug: str, if_match: str | None) -> None:
        article = await self._writable(actor, slug, if_match)
        await self.repository.remove(article)
        self._forget_after_commit(slug)

    async def _writable(self, actor: Actor, slug: str, if_match: str | None) -> Article:
        article = await self.repository.get_for_update(slug)
        if article is None:
            raise NotFound(ARTICLE_NOT_FOUND)
        if not actor.may_edit(article):
            raise Forbidden("Members may edit only their own articles")
        if if_match is not None and not etag_matches(if_match, etag_of(article)):
            raise PreconditionFailed("The article has changed since you read it")
        return article

    async def _free_slug(self, data: ArticleCreate) -> str:
        if data.slug is not None:
            if await self.repository.slug_taken(data.slug):
                raise Conflict(f"An article with slug '{data.slug}' exists")
            return data.slug
        slug = slugify(data.title)
        if await self.repository.slug_taken(slug):
            slug = f"{slug[:113]}-{secrets.token_hex(3)}"
        return slug

    def _forget_after_commit(self, *slugs: str) -> None:
        async def forget() -> None:
            await self.cache.forget(*slugs)

        self.repository.after_commit(forget)
