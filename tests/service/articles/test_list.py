"""Article pages: filters, keyset cursors, bounds, and a constant number of SQL statements."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from service.articles.schemas import ArticleFilters
from service.core.config import DEFAULT_JWT_SECRET
from service.core.pagination import CursorSigner
from tests.service.articles.conftest import ARTICLES, ArticlesApi, ArticlesApiFactory
from tests.service.identity.helpers import write_key_pair
from tests.support import assert_envelope


async def seed(api: ArticlesApi, headers: dict[str, str], count: int, **fields: object) -> None:
    for index in range(count):
        await api.create(headers, title=f"Article {index:03d}", **fields)


async def all_pages(api: ArticlesApi, headers: dict[str, str], **params: object) -> list[dict]:
    items: list[dict] = []
    cursor = None
    while True:
        query = {**params, **({"cursor": cursor} if cursor else {})}
        page = (await api.client.get(ARTICLES, params=query, headers=headers)).json()
        items += page["items"]
        if not page["has_more"]:
            assert page["next_cursor"] is None
            return items
        cursor = page["next_cursor"]


async def test_pages_walk_every_article_once_in_creation_order(api: ArticlesApi) -> None:
    author = await api.user()
    await seed(api, author, 7)

    items = await all_pages(api, author, limit=3)

    assert [item["title"] for item in items] == [f"Article {i:03d}" for i in range(7)]


async def test_a_page_is_an_object_never_a_bare_array(api: ArticlesApi) -> None:
    response = await api.client.get(ARTICLES, headers=await api.user())

    assert response.json() == {"items": [], "next_cursor": None, "has_more": False}


async def test_filters_by_status_tag_author_and_title_text(api: ArticlesApi) -> None:
    alice, bob = await api.user(), await api.user()
    await api.create(alice, title="Rust news", tags=["rust"], status="published")
    await api.create(alice, title="Python news", tags=["python"])
    await api.create(bob, title="Rust tips", tags=["rust", "tips"], status="published")
    alice_id = alice["X-Test-User-Id"]

    async def titles(**params: str) -> list[str]:
        return [a["title"] for a in await all_pages(api, alice, **params)]

    assert await titles(status="published") == ["Rust news", "Rust tips"]
    assert await titles(tag="rust") == ["Rust news", "Rust tips"]
    assert await titles(author_id=alice_id) == ["Rust news", "Python news"]
    assert await titles(q="NEWS") == ["Rust news", "Python news"]
    assert await titles(q="%") == []  # LIKE wildcards are text, not patterns
    assert await titles(tag="rust", status="published", author_id=alice_id) == ["Rust news"]


@pytest.mark.parametrize("limit", [0, 101, -1])
async def test_page_size_is_bounded(api: ArticlesApi, limit: int) -> None:
    response = await api.client.get(ARTICLES, params={"limit": limit}, headers=await api.user())

    assert_envelope(response, 422, "ValidationError", ARTICLES)


@pytest.mark.parametrize(
    "tamper", [lambda c: c[:-2] + ("AA" if c[-2:] != "AA" else "BB"), lambda c: "x" + c,
               lambda c: c.replace(".", ""), lambda c: "garbage", lambda c: c.split(".")[0] + ".x"],
    ids=["mac-edited", "payload-edited", "no-separator", "garbage", "mac-replaced"],
)  # fmt: skip
async def test_a_tampered_cursor_is_a_400_not_a_500(api: ArticlesApi, tamper) -> None:
    author = await api.user()
    await seed(api, author, 3)
    first = (await api.client.get(ARTICLES, params={"limit": 1}, headers=author)).json()

    response = await api.client.get(
        ARTICLES, params={"limit": 1, "cursor": tamper(first["next_cursor"])}, headers=author
    )

    assert_envelope(response, 400, "BadRequest", ARTICLES)


async def test_a_cursor_replayed_with_other_filters_is_a_400(api: ArticlesApi) -> None:
    author = await api.user()
    await seed(api, author, 3, status="published")
    cursor = (await api.client.get(ARTICLES, params={"limit": 1}, headers=author)).json()[
        "next_cursor"
    ]

    response = await api.client.get(
        ARTICLES, params={"limit": 1, "cursor": cursor, "status": "published"}, headers=author
    )

    assert_envelope(response, 400, "BadRequest", ARTICLES)


async def test_a_cursor_from_another_tenant_is_a_400_even_with_the_same_filters(
    api: ArticlesApi,
) -> None:
    """A platform admin lists acme, then presents acme's cursor while listing beta."""
    admin = await api.user(role="platform_admin", tenant=None)
    for tenant in ("acme", "beta"):
        await seed(api, {**admin, "X-Tenant-ID": tenant}, 3)
    first = await api.client.get(
        ARTICLES, params={"limit": 1}, headers={**admin, "X-Tenant-ID": "acme"}
    )
    cursor = first.json()["next_cursor"]

    in_beta = await api.client.get(
        ARTICLES, params={"limit": 1, "cursor": cursor}, headers={**admin, "X-Tenant-ID": "beta"}
    )
    in_acme = await api.client.get(
        ARTICLES, params={"limit": 1, "cursor": cursor}, headers={**admin, "X-Tenant-ID": "acme"}
    )

    assert_envelope(in_beta, 400, "BadRequest", ARTICLES)
    assert in_acme.status_code == 200


async def test_cursors_are_signed_with_the_cursor_secret_not_the_public_token_default(
    articles_api_for: ArticlesApiFactory, tmp_path: Path
) -> None:
    """With EdDSA tokens the JWT secret is never set and stays the published default: a
    cursor signed with it (as cursors were) is refused; one signed with the configured
    cursor secret goes on."""
    private, public = write_key_pair(tmp_path, "EdDSA")
    cursor_secret = secrets.token_urlsafe(32)
    api = await articles_api_for(
        auth={
            "jwt_algorithm": "EdDSA",
            "jwt_private_key_file": str(private),
            "jwt_public_key_file": str(public),
        },
        pagination={"cursor_secret": cursor_secret},
    )
    author = await api.user()
    await seed(api, author, 3)
    issued = (await api.client.get(ARTICLES, params={"limit": 1}, headers=author)).json()
    position = CursorSigner(cursor_secret.encode(), "articles").decode(
        issued["next_cursor"], scope=f"acme|{ArticleFilters().model_dump_json()}"
    )
    forged = CursorSigner(DEFAULT_JWT_SECRET.encode(), "articles").encode(
        position, scope=f"acme|{ArticleFilters().model_dump_json()}"
    )

    refused = await api.client.get(ARTICLES, params={"cursor": forged}, headers=author)
    followed = await api.client.get(
        ARTICLES, params={"cursor": issued["next_cursor"]}, headers=author
    )

    assert_envelope(refused, 400, "BadRequest", ARTICLES)
    assert [item["title"] for item in followed.json()["items"]] == ["Article 001", "Article 002"]


@pytest.fixture
async def echoing_api(articles_api_for: ArticlesApiFactory, migrated_sqlite: str) -> ArticlesApi:
    """berth with `database.echo` on: every statement is logged, the read path's with
    `[read]` (tenant reads run on a read connection, never on a session)."""
    return await articles_api_for(database={"url": migrated_sqlite, "echo": True})


def read_statements(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        record.getMessage().removeprefix("[read] ")
        for record in caplog.records
        if record.name.startswith("sqlalchemy.engine") and record.getMessage().startswith("[read]")
    ]


async def test_a_page_of_50_articles_with_tags_takes_a_constant_number_of_statements(
    echoing_api: ArticlesApi, caplog: pytest.LogCaptureFixture
) -> None:
    api = echoing_api
    author = await api.user()
    await seed(api, author, 50, tags=["one", "two", "three"])

    caplog.clear()
    small = await api.client.get(ARTICLES, params={"limit": 2}, headers=author)
    small_statements = read_statements(caplog)
    caplog.clear()
    big = await api.client.get(ARTICLES, params={"limit": 50}, headers=author)
    big_statements = read_statements(caplog)

    assert len(small.json()["items"]) == 2
    assert len(big.json()["items"]) == 50
    assert all(item["tags"] == ["one", "three", "two"] for item in big.json()["items"])
    # The page, then every tag of the page at once, whatever the page size.
    assert len(big_statements) == len(small_statements) == 2, big_statements
    assert all(s.lstrip().upper().startswith("SELECT") for s in big_statements)
