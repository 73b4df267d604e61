"""List pages are cached per tenant under a generation every committed write replaces."""

from __future__ import annotations

from service.container import container_of
from service.main import create_app
from tests.conftest import ClientFactory
from tests.service.articles.conftest import ARTICLES, ArticlesApi, ArticlesApiFactory
from tests.support import metric_value

PAGE_CACHE = "article_page"


def _page_hits(api: ArticlesApi) -> float:
    return metric_value(api.app, "berth_cache_lookups_total", cache=PAGE_CACHE, result="hit")


async def _titles(client: object, headers: dict[str, str], **params: object) -> list[str]:
    response = await client.get(ARTICLES, params=params, headers=headers)  # type: ignore[attr-defined]
    assert response.status_code == 200, response.text
    return [item["title"] for item in response.json()["items"]]


async def test_a_repeated_list_is_served_from_the_page_cache(api: ArticlesApi) -> None:
    headers = await api.user()
    await api.create(headers, title="First")

    first = await api.client.get(ARTICLES, headers=headers)
    again = await api.client.get(ARTICLES, headers=headers)

    assert again.content == first.content
    assert _page_hits(api) == 1


async def test_every_write_is_in_the_next_list_however_warm_the_cache(api: ArticlesApi) -> None:
    headers = await api.user(role="admin")
    created = await api.create(headers, title="First")
    assert await _titles(api.client, headers) == ["First"]
    assert await _titles(api.client, headers) == ["First"]  # warm

    await api.create(headers, title="Second")
    after_create = await _titles(api.client, headers)
    await api.client.patch(f"{ARTICLES}/{created['slug']}", json={"title": "Renamed"},
                           headers=headers)  # fmt: skip
    after_update = await _titles(api.client, headers)
    await api.client.delete(f"{ARTICLES}/{created['slug']}", headers=headers)
    after_delete = await _titles(api.client, headers)

    assert after_create == ["First", "Second"]
    assert after_update == ["Renamed", "Second"]
    assert after_delete == ["Second"]


async def test_filters_cursors_and_limits_are_pages_of_their_own(api: ArticlesApi) -> None:
    headers = await api.user()
    for title in ("A", "B", "C"):
        await api.create(headers, title=title, status="published" if title != "B" else "draft")

    everything = await _titles(api.client, headers)
    published = await _titles(api.client, headers, status="published")
    one = await _titles(api.client, headers, limit=1)

    assert everything == ["A", "B", "C"]
    assert published == ["A", "C"]
    assert one == ["A"]


async def test_tenants_never_share_a_page(api: ArticlesApi) -> None:
    acme = await api.user(tenant="acme")
    beta = await api.user(tenant="beta")
    await api.create(acme, title="Acme only")

    assert await _titles(api.client, acme) == ["Acme only"]
    assert await _titles(api.client, beta) == []


async def test_with_the_cache_off_nothing_is_cached(articles_api_for: ArticlesApiFactory) -> None:
    api = await articles_api_for(cache={"enabled": False})
    headers = await api.user()
    await api.create(headers, title="First")

    await _titles(api.client, headers)
    await _titles(api.client, headers)

    assert _page_hits(api) == 0


async def test_a_write_on_one_replica_is_in_the_next_list_on_another(
    articles_api_for: ArticlesApiFactory, redis_server: str, client_for: ClientFactory
) -> None:
    """Two apps on one Redis and one tenant database: replica B's warm page goes stale the
    moment replica A's write commits."""
    replica_a = await articles_api_for(redis={"url": redis_server})
    replica_b_app = create_app(container_of(replica_a.app).settings)
    replica_b = await client_for(replica_b_app)
    headers = await replica_a.user()
    await replica_a.create(headers, title="First")
    assert await _titles(replica_b, headers) == ["First"]
    assert await _titles(replica_b, headers) == ["First"]  # warm on B
    assert metric_value(replica_b_app, "berth_cache_lookups_total", cache=PAGE_CACHE,
                        result="hit") == 1  # fmt: skip

    await replica_a.create(headers, title="Second")

    assert await _titles(replica_b, headers) == ["First", "Second"]
