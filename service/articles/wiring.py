"""The articles part of the app's container: the service, its caches and cursor signer."""

from __future__ import annotations

from service.articles.cache import (
    ARTICLE_CACHE,
    ARTICLE_PAGE_CACHE,
    TENANT_KEY_PREFIX,
    ArticleCache,
    ArticlePageCache,
)
from service.articles.metrics import ArticleMetrics
from service.articles.service import ArticleService
from service.core.config import Settings
from service.core.metrics import Metrics
from service.core.pagination import CursorSigner
from service.core.slots import AppSlot
from service.core.store import KeyValueStore

ARTICLES_CURSOR_KIND = "articles"
# The keys the coherent in-process cache may answer (service/core/local_cache.py).
ARTICLE_LOCAL_PREFIXES = (TENANT_KEY_PREFIX,)


def build_articles(settings: Settings, store: KeyValueStore, metrics: Metrics) -> ArticleService:
    ttl, enabled = settings.cache.article_ttl_seconds, settings.cache.enabled
    cache = ArticleCache(store, ttl, enabled, metrics.cache_lookups_of(ARTICLE_CACHE))
    pages = ArticlePageCache(store, ttl, enabled, metrics.cache_lookups_of(ARTICLE_PAGE_CACHE))
    cursors = CursorSigner(
        settings.pagination.cursor_secret.get_secret_value().encode(), ARTICLES_CURSOR_KIND
    )
    return ArticleService(cache, pages, cursors, ArticleMetrics(metrics.registry))


ARTICLES: AppSlot[ArticleService] = AppSlot("articles")
