"""Rendered articles in the key-value store, by tenant and slug, always with a TTL."""

from __future__ import annotations

from dataclasses import dataclass

from service.core.metrics import CacheLookups
from service.core.store import KeyValueStore

ARTICLE_CACHE = "article"  # its `cache` label on berth_cache_lookups_total


@dataclass(frozen=True, slots=True)
class RenderedArticle:
    """An article as sent: its slug, ETag and JSON body."""

    slug: str
    etag: str
    body: bytes


def _key(tenant_slug: str, slug: str) -> str:
    # The tenant is part of every key, so tenants never share entries even on one Redis.
    return f"berth:t:{tenant_slug}:article:{slug}"


class ArticleCache:
    """One per app; `enabled=False` makes every read a miss and every write a no-op."""

    def __init__(
        self, store: KeyValueStore, ttl_seconds: int, *, enabled: bool, lookups: CacheLookups
    ) -> None:
        self.store = store
        self.ttl_seconds = ttl_seconds
        self.enabled = enabled
        self.lookups = lookups

    async def get(self, tenant_slug: str, slug: str) -> RenderedArticle | None:
        if not self.enabled:
            return None
        cached = await self.store.get(_key(tenant_slug, slug))
        if cached is None:
            self.lookups.miss.inc()
            return None
        self.lookups.hit.inc()
        etag, _, body = cached.partition(b"\n")
        return RenderedArticle(slug=slug, etag=etag.decode(), body=body)

    async def put(self, tenant_slug: str, article: RenderedArticle) -> None:
        if self.enabled:
            value = article.etag.encode() + b"\n" + article.body
            await self.store.set(_key(tenant_slug, article.slug), value, self.ttl_seconds)

    async def forget(self, tenant_slug: str, *slugs: str) -> None:
        if self.enabled and slugs:
            await self.store.delete(*(_key(tenant_slug, slug) for slug in slugs))
