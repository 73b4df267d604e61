"""Article rules: who may write what, slugs, versions, ETags and the cache. No FastAPI here.

Built once per app; reads are handed the request's `TenantReader` (the tenant and reads on
its own database), writes its `TenantScope` (the tenant and a session there).
"""

from __future__ import annotations

import re
import secrets
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from functools import partial
from typing import Any

import orjson

from service.articles.cache import ArticleCache, ArticlePageCache, RenderedArticle
from service.articles.metrics import ArticleMetrics, ArticleOperation
from service.articles.models import Article
from service.articles.repository import (
    ArticleReads,
    ArticleRecord,
    ArticleRepository,
    slug_taken_message,
)
from service.articles.schemas import (
    ARTICLE_OUT_FIELDS,
    ARTICLE_OUT_STAMPS,
    ArticleCreate,
    ArticleFilters,
    ArticlePatch,
)
from service.core.clock import as_utc
from service.core.errors import Conflict, Forbidden, NotFound, PreconditionFailed
from service.core.pagination import CursorSigner, Page, keyset_page
from service.db.engine import after_commit
from service.identity.principal import TENANT_WIDE_ROLES, Role
from service.tenants.engines import TenantReader
from service.tenants.service import TenantScope

ARTICLE_NOT_FOUND = "Article not found"
_NOT_SLUG = re.compile(r"[^a-z0-9]+")


@dataclass(frozen=True, slots=True)
class Actor:
    user_id: uuid.UUID
    role: Role

    def may_edit(self, article: Article) -> bool:
        return self.role in TENANT_WIDE_ROLES or article.author_id == self.user_id


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


# UTC with a `Z`, as pydantic writes `UtcDateTime` (naive ones are UTC: SQLite).
_JSON_OPTIONS = orjson.OPT_UTC_Z | orjson.OPT_NAIVE_UTC


def _json_default(value: object) -> str:
    if isinstance(value, uuid.UUID):  # asyncpg's UUID subclass, which orjson does not take
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def to_json(value: object) -> bytes:
    return orjson.dumps(value, default=_json_default, option=_JSON_OPTIONS)


def article_json(record: ArticleRecord) -> dict[str, Any]:
    """The record in `ArticleOut`'s shape, for `to_json`: the bytes `ArticleOut` would send,
    at a fifth of a model's cost per item (docs/benchmarks.md)."""
    item = {name: getattr(record, name) for name in ARTICLE_OUT_FIELDS}
    for name in ARTICLE_OUT_STAMPS:
        item[name] = as_utc(item[name])
    return item


def render_page(page: Page[dict[str, Any]]) -> bytes:
    """A page of `article_json` items as `ArticlePage` would send it (its fields, in order)."""
    return to_json(dict(page))


def render(article: Article | ArticleRecord) -> RenderedArticle:
    record = (
        ArticleRecord.of(article, [tag.name for tag in article.tags])
        if isinstance(article, Article)
        else article
    )
    body = to_json(article_json(record))
    return RenderedArticle(slug=record.slug, etag=etag_of(record), body=body)


def _distinct(names: Iterable[str]) -> list[str]:
    return sorted(set(names))


class ArticleService:
    def __init__(
        self,
        cache: ArticleCache,
        pages: ArticlePageCache,
        cursors: CursorSigner,
        metrics: ArticleMetrics,
    ) -> None:
        self.cache = cache
        self.pages = pages
        self.cursors = cursors
        self.metrics = metrics

    async def get(self, reader: TenantReader, slug: str) -> RenderedArticle:
        """The article as sent, from the cache when it is there."""
        tenant = reader.tenant.slug
        cached = await self.cache.get(tenant, slug)
        if cached is not None:
            return cached
        article = await ArticleReads(reader).get_record(slug)
        if article is None:
            raise NotFound(ARTICLE_NOT_FOUND)
        rendered = render(article)
        await self.cache.put(tenant, rendered)
        return rendered

    async def list_page(
        self, reader: TenantReader, filters: ArticleFilters, cursor: str | None, limit: int
    ) -> bytes:
        """The page as sent (JSON), from the page cache when this tenant's articles have not
        changed since it was rendered."""
        tenant = reader.tenant.slug
        listing = f"{filters.model_dump_json()}|{cursor}|{limit}"
        generation = await self.pages.generation(tenant)  # before the database: see the cache
        cached = await self.pages.get(tenant, generation, listing)
        if cached is not None:
            return cached
        page = await keyset_page(
            partial(ArticleReads(reader).list_page, filters),
            article_json,
            signer=self.cursors,
            # A cursor continues only this tenant's listing with these filters.
            scope=f"{tenant}|{filters.model_dump_json()}",
            cursor=cursor,
            limit=limit,
        )
        body = render_page(page)
        await self.pages.put(tenant, generation, listing, body)
        return body

    async def create(
        self, scope: TenantScope, actor: Actor, data: ArticleCreate
    ) -> RenderedArticle:
        repository = ArticleRepository(scope.session)
        slug = await self._free_slug(repository, data)
        article = Article(
            id=uuid.uuid4(),
            slug=slug,
            title=data.title,
            body=data.body,
            status=data.status.value,
            author_id=actor.user_id,
            version=1,
        )
        article.tags = await repository.tags_named(_distinct(data.tags))
        await repository.add(article)
        self._pages_stale_after_commit(scope)
        after_commit(scope.session, self.metrics.committed(ArticleOperation.CREATE))
        return render(article)

    async def update(
        self, scope: TenantScope, actor: Actor, slug: str, patch: ArticlePatch, if_match: str | None
    ) -> RenderedArticle:
        repository = ArticleRepository(scope.session)
        article = await self._writable(repository, actor, slug, if_match)
        changes = patch.changes()
        new_slug = changes.get("slug", slug)
        if new_slug != slug and await repository.slug_taken(new_slug):
            raise Conflict(slug_taken_message(new_slug))
        for field in ("title", "body", "slug"):
            if field in changes:
                setattr(article, field, changes[field])
        if "status" in changes:
            article.status = changes["status"].value
        if "tags" in changes:
            article.tags = await repository.tags_named(_distinct(changes["tags"]))
        article.version += 1
        await repository.save(article)
        self._forget_after_commit(scope, slug, new_slug)
        after_commit(scope.session, self.metrics.committed(ArticleOperation.UPDATE))
        return render(article)

    async def delete(
        self, scope: TenantScope, actor: Actor, slug: str, if_match: str | None
    ) -> None:
        repository = ArticleRepository(scope.session)
        article = await self._writable(repository, actor, slug, if_match)
        await repository.remove(article)
        self._forget_after_commit(scope, slug)
        after_commit(scope.session, self.metrics.committed(ArticleOperation.DELETE))

    async def _writable(
        self, repository: ArticleRepository, actor: Actor, slug: str, if_match: str | None
    ) -> Article:
        article = await repository.get_for_update(slug)
        if article is None:
            raise NotFound(ARTICLE_NOT_FOUND)
        if not actor.may_edit(article):
            raise Forbidden("Members may edit only their own articles")
        if if_match is not None and not etag_matches(if_match, etag_of(article)):
            raise PreconditionFailed("The article has changed since you read it")
        return article

    async def _free_slug(self, repository: ArticleRepository, data: ArticleCreate) -> str:
        if data.slug is not None:
            if await repository.slug_taken(data.slug):
                raise Conflict(slug_taken_message(data.slug))
            return data.slug
        slug = slugify(data.title)
        if await repository.slug_taken(slug):
            slug = f"{slug[:113]}-{secrets.token_hex(3)}"
        return slug

    def _forget_after_commit(self, scope: TenantScope, *slugs: str) -> None:
        after_commit(scope.session, partial(self.cache.forget, scope.tenant.slug, *slugs))
        self._pages_stale_after_commit(scope)

    def _pages_stale_after_commit(self, scope: TenantScope) -> None:
        after_commit(scope.session, partial(self.pages.bump, scope.tenant.slug))
