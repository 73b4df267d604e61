"""Rendered articles and list pages in the key-value store, by tenant, always with a TTL."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from service.core.metrics import CacheLookups
from service.core.store import KeyValueStore

ARTICLE_CACHE = "article"  # its `cache` label on berth_cache_lookups_total
# Every key of this module starts with it (the tenant next), so tenants never share entries
# even on one Redis; the coherent local cache tracks it (service/core/local_cache.py).
TENANT_KEY_PREFIX = "berth:t:"


@dataclass(frozen=True, slots=True)
class RenderedArticle:
    """An article as sent: its slug, ETag and JSON body."""

    slug: str
    etag: str
    body: bytes


def _key(tenant_slug: str, slug: str) -> str:
    return f"{TENANT_KEY_PREFIX}{tenant_slug}:article:{slug}"


@dataclass
class _StoreCache:
    """A cache in the key-value store; `enabled=False` makes every read a miss and every
    write a no-op."""

    store: KeyValueStore
    ttl_seconds: int
    enabled: bool
    lookups: CacheLookups


class ArticleCache(_StoreCache):
    """Rendered articles by tenant and slug; one per app."""

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


ARTICLE_PAGE_CACHE = "article_page"  # its `cache` label on berth_cache_lookups_total
# A tenant's generation outlives every page cached under it by far (pages: the article TTL).
GENERATION_TTL_SECONDS = 7 * 86_400


def _generation_key(tenant_slug: str) -> str:
    return f"{TENANT_KEY_PREFIX}{tenant_slug}:articles:generation"


def _page_key(tenant_slug: str, generation: str, listing: str) -> str:
    digest = hashlib.sha256(listing.encode()).hexdigest()[:32]
    return f"{TENANT_KEY_PREFIX}{tenant_slug}:articles:{generation}:{digest}"


class ArticlePageCache(_StoreCache):
    """Rendered list pages by tenant, under the tenant's current generation.

    Every committed article write gives the tenant a new generation (a random token, so one
    never comes back), and pages are keyed by it: a write makes every earlier page of the
    tenant unreachable at once, with no scan and no delete. The generation is read before the
    database, so a page computed while a write commits is stored under the generation it
    read, which the write has already replaced.
    """

    async def generation(self, tenant_slug: str) -> str | None:
        """The tenant's current generation (made when it has none); None when disabled."""
        if not self.enabled:
            return None
        current = await self.store.get(_generation_key(tenant_slug))
        if current is not None:
            return current.decode()
        return await self._new_generation(tenant_slug)

    async def get(self, tenant_slug: str, generation: str | None, listing: str) -> bytes | None:
        if generation is None:
            return None
        cached = await self.store.get(_page_key(tenant_slug, generation, listing))
        (self.lookups.miss if cached is None else self.lookups.hit).inc()
        return cached

    async def put(
        self, tenant_slug: str, generation: str | None, listing: str, body: bytes
    ) -> None:
        if generation is not None:
            key = _page_key(tenant_slug, generation, listing)
            await self.store.set(key, body, self.ttl_seconds)

    async def bump(self, tenant_slug: str) -> None:
        """A new generation for the tenant (after a write commits): every page goes stale."""
        if self.enabled:
            await self._new_generation(tenant_slug)

    async def _new_generation(self, tenant_slug: str) -> str:
        generation = secrets.token_hex(8)
        await self.store.set(
            _generation_key(tenant_slug), generation.encode(), GENERATION_TTL_SECONDS
        )
        return generation
