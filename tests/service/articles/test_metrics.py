"""Articles' metrics: writes by operation (counted once committed), cache hits and misses,
and requests per tenant where the configuration names the tenant."""

from __future__ import annotations

from service.articles.cache import ARTICLE_CACHE
from service.articles.metrics import ARTICLE_WRITES, ArticleOperation
from service.core.metrics import CACHE_LOOKUPS, CacheResult
from service.identity.auth_state import AUTH_STATE_CACHE
from service.tenants.metrics import OTHER_TENANTS, TENANT_REQUESTS
from tests.service.articles.conftest import ARTICLES, ArticlesApi, ArticlesApiFactory
from tests.support import metric_value


def writes(api: ArticlesApi, operation: ArticleOperation) -> float:
    return metric_value(api.app, ARTICLE_WRITES, operation=operation.value)


def lookups(api: ArticlesApi, cache: str, result: CacheResult) -> float:
    return metric_value(api.app, CACHE_LOOKUPS, cache=cache, result=result.value)


async def test_writes_are_counted_by_operation(api: ArticlesApi) -> None:
    author = await api.user()
    created = await api.create(author, slug="counted")
    url = f"{ARTICLES}/{created['slug']}"

    await api.client.patch(url, json={"title": "Again"}, headers=author)
    await api.client.delete(url, headers=author)

    counts = {operation: writes(api, operation) for operation in ArticleOperation}
    assert counts == dict.fromkeys(ArticleOperation, 1.0)


async def test_a_write_that_fails_is_not_counted(api: ArticlesApi) -> None:
    author = await api.user()
    await api.create(author, slug="taken")

    clash = await api.client.post(ARTICLES, json={"title": "x", "slug": "taken"}, headers=author)
    stale = await api.client.patch(
        f"{ARTICLES}/taken", json={"title": "y"}, headers={**author, "If-Match": '"stale"'}
    )

    assert (clash.status_code, stale.status_code) == (409, 412)
    assert writes(api, ArticleOperation.CREATE) == 1
    assert writes(api, ArticleOperation.UPDATE) == 0


async def test_article_reads_count_cache_misses_then_hits(api: ArticlesApi) -> None:
    author = await api.user()
    await api.create(author, slug="cached")

    for _ in range(3):
        assert (await api.client.get(f"{ARTICLES}/cached", headers=author)).status_code == 200

    assert lookups(api, ARTICLE_CACHE, CacheResult.MISS) == 1
    assert lookups(api, ARTICLE_CACHE, CacheResult.HIT) == 2


async def test_token_checks_count_auth_state_cache_misses_then_hits(api: ArticlesApi) -> None:
    author = await api.user()

    for _ in range(3):
        await api.client.get(f"{ARTICLES}/nothing-here", headers=author)

    assert lookups(api, AUTH_STATE_CACHE, CacheResult.MISS) == 1
    assert lookups(api, AUTH_STATE_CACHE, CacheResult.HIT) == 2


async def test_only_configured_tenants_get_a_label_of_their_own(
    articles_api_for: ArticlesApiFactory,
) -> None:
    api = await articles_api_for(observability={"metrics_tenants": ["acme"]})
    acme, beta = await api.user(tenant="acme"), await api.user(tenant="beta")

    await api.client.get(ARTICLES, headers=acme)
    for _ in range(2):
        await api.client.get(ARTICLES, headers=beta)

    assert metric_value(api.app, TENANT_REQUESTS, tenant="acme") == 1
    assert metric_value(api.app, TENANT_REQUESTS, tenant=OTHER_TENANTS) == 2
    assert metric_value(api.app, TENANT_REQUESTS, tenant="beta") == 0
