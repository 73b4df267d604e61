"""`/docs` works without internet: the page and every file it loads come from the app."""

from __future__ import annotations

import re
from collections.abc import Callable

import httpx
from fastapi import FastAPI

from service.core.config import Settings
from service.core.docs import DOCS_ASSETS_PATH, FAVICON, SWAGGER_CSS, SWAGGER_JS
from service.main import create_app
from tests.conftest import ClientFactory

ASSET_TYPES = {SWAGGER_JS: "javascript", SWAGGER_CSS: "text/css", FAVICON: "image/png"}


def loaded_by(page: str) -> list[str]:
    """Every URL the page's HTML makes the browser fetch (scripts, styles, icons)."""
    return re.findall(r'(?:src|href)="([^"]+)"', page)


async def test_the_docs_page_loads_only_files_the_app_serves(client: httpx.AsyncClient) -> None:
    page = await client.get("/docs")

    assert page.status_code == 200
    urls = loaded_by(page.text)
    assert sorted(url.rsplit("/", 1)[1] for url in urls) == sorted(ASSET_TYPES)
    assert all(url.startswith(f"{DOCS_ASSETS_PATH}/") for url in urls), urls
    for url in urls:
        asset = await client.get(url)
        assert asset.status_code == 200, url
        assert ASSET_TYPES[url.rsplit("/", 1)[1]] in asset.headers["content-type"]
        assert asset.content  # the bundle itself (1.5 MB of JS), not a stub
    assert "openapi.json" in page.text


async def test_the_page_names_the_document_and_the_oauth2_redirect(
    client: httpx.AsyncClient,
) -> None:
    page = (await client.get("/docs")).text
    redirect = await client.get("/docs/oauth2-redirect")

    assert "url: '/openapi.json'" in page
    assert "oauth2RedirectUrl: window.location.origin + '/docs/oauth2-redirect'" in page
    assert redirect.status_code == 200
    assert (await client.get("/openapi.json")).status_code == 200


async def test_docs_off_means_no_page_no_assets_no_document(
    make_settings: Callable[..., Settings], migrated_sqlite: str, client_for: ClientFactory
) -> None:
    app: FastAPI = create_app(make_settings(http={"docs_enabled": False}))
    client = await client_for(app)

    for path in ("/docs", f"{DOCS_ASSETS_PATH}/{SWAGGER_JS}", "/openapi.json", "/redoc"):
        assert (await client.get(path)).status_code == 404, path
