"""Rendered articles in the key-value store, by tenant and slug, always with a TTL."""

from __future__ import annotations

from dataclasses import dataclass

from service.core.store import KeyValueStore


@dataclass(frozen=True, slots=True)
class RenderedArticle:
    """An article as sent: its slug, ETag and JSON body."""

    slug: str
    etag: str
    body: bytes


class ArticleCache:
    """Keys carry the tenant, so tenants never share entries even on one Redis."""

    def __init__(self, store: KeyValueStore, tenant_slug: str, ttl_seconds: int, *, enabled: bool):
        self.store = store
        self.prefix = f"berth:t:{tenant_slug}:article:"
        self.ttl_seconds = ttl_seconds
        self.enabled = enabled

    async def get(self, slug: str) -> RenderedArticle | None:
        if not self.enabled:
            return None
        cached = await self.store.get(self.prefix + slug)
        if cached is None:
            return None
        etag, _, body = cached.partition(b"\n")
        return RenderedArticle(slug=slug, etag=etag.decode(), body=body)

    async def put(self, slug: str, article: RenderedArticle) -> None:
        if self.enabled:
            value = article.etag.encode() + b"\n" + article.body
            await self.store.set(self.prefix + slug, value, self.ttl_seconds)

    async def forget(self, *slugs: str) -> None:
        if self.enabled and slugs:
            await self.store.delete(*(self.prefix + slug for slug in slugs))
