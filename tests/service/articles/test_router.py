"""Articles over HTTP: CRUD, ETags, the cache, permissions and pages (SQLite tenants)."""

from __future__ import annotations

import uuid

import pytest

from tests.service.articles.conftest import ARTICLES, ArticlesApi, ArticlesApiFactory
from tests.support import assert_envelope


async def test_create_returns_201_with_location_etag_and_normalised_tags(api: ArticlesApi) -> None:
    author = await api.user()

    response = await api.client.post(
        ARTICLES,
        json={"title": "  Hello, World!  ", "body": "text", "tags": ["News", "news", "tech"]},
        headers=author,
    )

    assert response.status_code == 201, response.text
    body = response.json()
    assert body["slug"] == "hello-world"
    assert body["title"] == "Hello, World!"
    assert body["tags"] == ["news", "tech"]
    assert body["status"] == "draft"
    assert body["version"] == 1
    assert body["author_id"] == author["X-Test-User-Id"]
    assert response.headers["location"] == f"{ARTICLES}/hello-world"
    assert response.headers["etag"] == f'"{uuid.UUID(body["id"]).hex}.1"'


async def test_an_explicit_slug_that_exists_is_a_409(api: ArticlesApi) -> None:
    author = await api.user()
    await api.create(author, slug="taken")

    response = await api.client.post(
        ARTICLES, json={"title": "Other", "slug": "taken"}, headers=author
    )

    assert_envelope(response, 409, "Conflict", ARTICLES)


async def test_a_derived_slug_that_exists_gets_a_suffix(api: ArticlesApi) -> None:
    author = await api.user()
    first = await api.create(author, title="Same title")

    second = await api.create(author, title="Same title")

    assert first["slug"] == "same-title"
    assert second["slug"].startswith("same-title-")


@pytest.mark.parametrize(
    "body",
    [{"title": ""}, {"title": "x", "slug": "Not A Slug"}, {"title": "x", "tags": ["a"] * 21},
     {"title": "x", "unknown": 1}, {"title": "x", "status": "archived"}],
    ids=["empty-title", "bad-slug", "too-many-tags", "unknown-field", "bad-status"],
)  # fmt: skip
async def test_invalid_articles_are_422(api: ArticlesApi, body: dict) -> None:
    response = await api.client.post(ARTICLES, json=body, headers=await api.user())

    assert_envelope(response, 422, "ValidationError", ARTICLES)


async def test_get_by_slug_with_if_none_match_is_a_304(api: ArticlesApi) -> None:
    reader = await api.user()
    await api.create(reader, slug="cached")
    first = await api.client.get(f"{ARTICLES}/cached", headers=reader)

    again = await api.client.get(
        f"{ARTICLES}/cached", headers={**reader, "If-None-Match": first.headers["etag"]}
    )

    assert first.status_code == 200
    assert again.status_code == 304
    assert again.content == b""
    assert again.headers["etag"] == first.headers["etag"]


async def test_unknown_slug_is_a_404(api: ArticlesApi) -> None:
    response = await api.client.get(f"{ARTICLES}/nope", headers=await api.user())

    assert_envelope(response, 404, "NotFound", f"{ARTICLES}/nope")


async def test_patch_changes_only_the_fields_sent_and_bumps_the_version(api: ArticlesApi) -> None:
    author = await api.user()
    created = await api.create(author, slug="p", body="keep me", tags=["a"])

    response = await api.client.patch(
        f"{ARTICLES}/p", json={"title": "New title", "status": "published"}, headers=author
    )

    body = response.json()
    assert response.status_code == 200
    assert (body["title"], body["status"], body["body"], body["tags"]) == (
        "New title", "published", "keep me", ["a"]
    )  # fmt: skip
    assert body["version"] == created["version"] + 1


async def test_patch_with_null_is_a_422(api: ArticlesApi) -> None:
    author = await api.user()
    await api.create(author, slug="n")

    response = await api.client.patch(f"{ARTICLES}/n", json={"title": None}, headers=author)

    assert_envelope(response, 422, "ValidationError", f"{ARTICLES}/n")


async def test_stale_if_match_is_a_412_and_changes_nothing(api: ArticlesApi) -> None:
    author = await api.user()
    await api.create(author, slug="c")
    read = await api.client.get(f"{ARTICLES}/c", headers=author)
    await api.client.patch(f"{ARTICLES}/c", json={"title": "First edit"}, headers=author)

    stale = {**author, "If-Match": read.headers["etag"]}
    patched = await api.client.patch(f"{ARTICLES}/c", json={"title": "Lost"}, headers=stale)
    deleted = await api.client.delete(f"{ARTICLES}/c", headers=stale)

    assert_envelope(patched, 412, "PreconditionFailed", f"{ARTICLES}/c")
    assert_envelope(deleted, 412, "PreconditionFailed", f"{ARTICLES}/c")
    current = (await api.client.get(f"{ARTICLES}/c", headers=author)).json()
    assert current["title"] == "First edit"


async def test_fresh_if_match_is_accepted(api: ArticlesApi) -> None:
    author = await api.user()
    await api.create(author, slug="f")
    etag = (await api.client.get(f"{ARTICLES}/f", headers=author)).headers["etag"]

    response = await api.client.patch(
        f"{ARTICLES}/f", json={"body": "x"}, headers={**author, "If-Match": etag}
    )

    assert response.status_code == 200


@pytest.fixture(params=["memory", "redis"])
def store_settings(request: pytest.FixtureRequest) -> dict[str, str]:
    if request.param == "memory":
        return {}
    return {"url": request.getfixturevalue("redis_server")}


async def test_no_stale_read_after_a_patch_or_delete(
    articles_api_for: ArticlesApiFactory, store_settings: dict[str, str]
) -> None:
    api = await articles_api_for(redis=store_settings)
    author = await api.user()
    slug = f"s-{uuid.uuid4().hex[:8]}"
    await api.create(author, slug=slug, title="Before")
    assert (await api.client.get(f"{ARTICLES}/{slug}", headers=author)).json()["title"] == "Before"

    await api.client.patch(f"{ARTICLES}/{slug}", json={"title": "After"}, headers=author)
    after_patch = await api.client.get(f"{ARTICLES}/{slug}", headers=author)
    await api.client.delete(f"{ARTICLES}/{slug}", headers=author)
    after_delete = await api.client.get(f"{ARTICLES}/{slug}", headers=author)

    assert after_patch.json()["title"] == "After"
    assert after_delete.status_code == 404


async def test_cache_entries_are_keyed_by_tenant_and_expire(
    articles_api_for: ArticlesApiFactory, redis_server: str
) -> None:
    from redis.asyncio import Redis

    api = await articles_api_for(redis={"url": redis_server})
    author = await api.user()
    slug = f"k-{uuid.uuid4().hex[:8]}"
    await api.create(author, slug=slug)
    await api.client.get(f"{ARTICLES}/{slug}", headers=author)

    client = Redis.from_url(redis_server)
    try:
        ttl = await client.ttl(f"berth:t:acme:article:{slug}")
    finally:
        await client.aclose()
    assert 0 < ttl <= 60


async def test_members_edit_their_own_articles_only(api: ArticlesApi) -> None:
    author, other = await api.user(), await api.user()
    await api.create(author, slug="mine")

    patched = await api.client.patch(f"{ARTICLES}/mine", json={"body": "x"}, headers=other)
    deleted = await api.client.delete(f"{ARTICLES}/mine", headers=other)

    assert_envelope(patched, 403, "Forbidden", f"{ARTICLES}/mine")
    assert_envelope(deleted, 403, "Forbidden", f"{ARTICLES}/mine")


@pytest.mark.parametrize("role", ["admin", "owner"])
async def test_admins_and_owners_edit_every_article_of_their_tenant(
    api: ArticlesApi, role: str
) -> None:
    await api.create(await api.user(), slug="any")

    response = await api.client.patch(
        f"{ARTICLES}/any", json={"body": "edited"}, headers=await api.user(role)
    )

    assert response.status_code == 200


async def test_platform_admins_act_on_the_tenant_they_name(api: ArticlesApi) -> None:
    await api.create(await api.user(), slug="pa")
    admin = await api.user("platform_admin", tenant=None)

    named = await api.client.get(f"{ARTICLES}/pa", headers={**admin, "X-Tenant-ID": "acme"})
    other = await api.client.get(f"{ARTICLES}/pa", headers={**admin, "X-Tenant-ID": "beta"})

    assert named.status_code == 200
    assert other.status_code == 404


async def test_delete_is_204_then_404(api: ArticlesApi) -> None:
    author = await api.user()
    await api.create(author, slug="gone")

    deleted = await api.client.delete(f"{ARTICLES}/gone", headers=author)
    again = await api.client.get(f"{ARTICLES}/gone", headers=author)

    assert deleted.status_code == 204
    assert again.status_code == 404


async def test_requests_without_a_token_are_401(api: ArticlesApi) -> None:
    response = await api.client.get(ARTICLES)

    assert_envelope(response, 401, "Unauthorized", ARTICLES)
