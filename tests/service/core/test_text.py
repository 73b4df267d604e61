"""Text PostgreSQL cannot store (NUL, unpaired surrogates) is a 422 at the door, on every
route and field, never a 500 from the database: checked on the real PostgreSQL, control plane
and a provisioned tenant, logged in or not."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.core.config import Settings
from service.main import create_app
from service.tenants.registry import write_entry
from tests.conftest import ClientFactory
from tests.service.articles.conftest import ARTICLES, ArticlesApi
from tests.service.conftest import ProvisionFactory
from tests.service.identity.helpers import LOGIN, TOKEN, USERS
from tests.support import assert_envelope, identity_groups

NUL = "a\x00b"
LONE_SURROGATE = "a\ud800b"


@pytest.fixture
async def api(
    provision: ProvisionFactory,
    pg_database: str,
    registry_dir: Path,
    make_settings: Callable[..., Settings],
    client_for: ClientFactory,
) -> tuple[ArticlesApi, str]:
    """berth on the real PostgreSQL: control plane and one provisioned tenant."""
    tenant = await provision("text")
    write_entry(registry_dir, tenant)
    settings = make_settings(
        **identity_groups(pg_database, tenants={"registry_dir": str(registry_dir)})
    )
    app = create_app(settings)
    return ArticlesApi(app, await client_for(app)), tenant.slug


def assert_refused(response: httpx.Response, path: str, loc: list[Any]) -> None:
    body = assert_envelope(response, 422, "ValidationError", path)
    assert [error["loc"] for error in body["data"]["errors"]] == [loc]
    assert body["data"]["errors"][0]["type"] == "unstorable_text"
    assert "\x00" not in response.text  # the value is never echoed


def as_json(body: object) -> dict[str, Any]:
    """Request keywords for a JSON body written as JSON text escapes it ("\\ud800"): httpx's
    own encoder cannot write an unpaired surrogate at all."""
    return {
        "content": json.dumps(body),
        "headers": {"Content-Type": "application/json"},
    }


@pytest.mark.parametrize("bad", [NUL, LONE_SURROGATE], ids=["nul", "lone-surrogate"])
async def test_every_string_the_api_takes_refuses_what_postgresql_cannot_store(
    api: tuple[ArticlesApi, str], bad: str
) -> None:
    articles, tenant = api
    client = articles.client
    owner = await articles.user(role="owner", tenant=tenant)
    created = await articles.create(owner, slug="kept")
    one = f"{ARTICLES}/kept"

    async def send(method: str, path: str, body: object, auth: bool = True) -> httpx.Response:
        request = as_json(body)
        if auth:
            request["headers"].update(owner)
        return await client.request(method, path, **request)

    requests: list[tuple[httpx.Response, str, list[Any]]] = [
        (await send("POST", LOGIN, {"email": bad, "password": "x"}, auth=False), LOGIN,
         ["body", "email"]),
        (await send("POST", ARTICLES, {"title": bad}), ARTICLES, ["body", "title"]),
        (await send("POST", ARTICLES, {"title": "t", "body": bad}), ARTICLES, ["body", "body"]),
        (await send("POST", ARTICLES, {"title": "t", "tags": ["ok", bad]}), ARTICLES,
         ["body", "tags", 1]),
        (await send("PATCH", one, {"title": bad}), one, ["body", "title"]),
        (await send("PATCH", one, {"body": bad}), one, ["body", "body"]),
        (await send("POST", USERS, {"email": bad, "password": "long enough pw"}), USERS,
         ["body", "email"]),
    ]  # fmt: skip
    if bad == NUL:  # URL-encoded text cannot carry an unpaired surrogate (decoding replaces it)
        requests += [
            (await client.post(TOKEN, data={"username": bad, "password": "x"}), TOKEN,
             ["body", "username"]),
            (await client.get(ARTICLES, params={"q": bad}, headers=owner), ARTICLES,
             ["query", "q"]),
            (await client.get(USERS, params={"email": bad}, headers=owner), USERS,
             ["query", "email"]),
        ]  # fmt: skip

    for response, path, loc in requests:
        assert_refused(response, path, loc)
    assert (await client.get(one, headers=owner)).json() == created


async def test_a_nul_in_the_path_is_refused_too(api: tuple[ArticlesApi, str]) -> None:
    articles, tenant = api
    owner = await articles.user(role="owner", tenant=tenant)

    response = await articles.client.get(f"{ARTICLES}/a%00b", headers=owner)

    assert_refused(response, f"{ARTICLES}/a\x00b", ["path"])


async def test_text_that_postgresql_can_store_passes(api: tuple[ArticlesApi, str]) -> None:
    """The rule refuses two things only: the rest of Unicode, emoji, escapes and the
    literal text "\\u0000" go through as they are."""
    articles, tenant = api
    owner = await articles.user(role="owner", tenant=tenant)
    title = 'Grüße, 世界 🚢 \\u0000 tab\tquote"'

    created = await articles.create(owner, title=title, body="\\ud800 is text here")

    assert created["title"] == title
    assert created["body"] == "\\ud800 is text here"
