"""Tenant isolation over HTTP on the real PostgreSQL: two tenants provisioned as the operator
does (own database, own login role, CONNECT revoked from PUBLIC), every articles route."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from sqlalchemy import func, select

from service.articles.models import Article
from service.core.config import Settings
from service.main import create_app
from service.tenants.registry import write_entry
from tests.conftest import ClientFactory
from tests.service.articles.conftest import ARTICLES, ArticlesApi
from tests.service.conftest import ProvisionFactory
from tests.service.identity.helpers import query
from tests.support import identity_groups

ROUTES_PROBED = {
    ("GET", ARTICLES),
    ("POST", ARTICLES),
    ("GET", f"{ARTICLES}/{{slug}}"),
    ("PATCH", f"{ARTICLES}/{{slug}}"),
    ("DELETE", f"{ARTICLES}/{{slug}}"),
}


@pytest.fixture
async def two_tenants(
    provision: ProvisionFactory,
    pg_database: str,
    registry_dir: Path,
    make_settings: Callable[..., Settings],
    client_for: ClientFactory,
) -> tuple[ArticlesApi, Any, Any]:
    acme, beta = await provision("acme"), await provision("beta")
    for entry in (acme, beta):
        write_entry(registry_dir, entry)
    settings = make_settings(
        **identity_groups(pg_database, tenants={"registry_dir": str(registry_dir)})
    )
    app = create_app(settings)
    return ArticlesApi(app, await client_for(app)), acme, beta


async def rows_in(entry: Any) -> list[tuple[str, str]]:
    url = entry.database_url.get_secret_value()
    return [tuple(row) for row in await query(url, select(Article.slug, Article.title))]


def article_routes(app: FastAPI) -> set[tuple[str, str]]:
    return {
        (method.upper(), path)
        for path, operations in app.openapi()["paths"].items()
        if path.startswith(ARTICLES)
        for method in operations
    }


async def test_no_articles_route_lets_one_tenant_read_or_change_another(two_tenants) -> None:
    api, acme, beta = two_tenants
    a_user = await api.user(tenant=acme.slug)
    b_user = await api.user(tenant=beta.slug)
    await api.create(b_user, slug="b-secret", title="B only")
    before = await rows_in(beta)
    slug_path = f"{ARTICLES}/b-secret"

    for headers, create_status in ((a_user, 201), ({**a_user, "X-Tenant-ID": beta.slug}, 404)):
        listed = await api.client.get(ARTICLES, headers=headers)
        created = await api.client.post(ARTICLES, json={"title": "A's"}, headers=headers)
        read = await api.client.get(slug_path, headers=headers)
        patched = await api.client.patch(slug_path, json={"title": "pwned"}, headers=headers)
        deleted = await api.client.delete(slug_path, headers=headers)

        assert "b-secret" not in listed.text
        assert created.status_code == create_status  # into A's own database, or refused
        assert (read.status_code, patched.status_code, deleted.status_code) == (404, 404, 404)

    assert article_routes(api.app) == ROUTES_PROBED  # a new route must be added above
    assert await rows_in(beta) == before
    assert [slug for slug, _ in await rows_in(acme)] == ["a-s"]


async def test_interleaved_requests_of_two_tenants_never_see_each_others_rows(
    two_tenants,
) -> None:
    api, acme, beta = two_tenants
    users = {
        acme.slug: await api.user(tenant=acme.slug),
        beta.slug: await api.user(tenant=beta.slug),
    }

    async def create(tenant: str, index: int) -> None:
        response = await api.client.post(
            ARTICLES, json={"title": f"{tenant} {index}"}, headers=users[tenant]
        )
        assert response.status_code == 201, response.text

    async def titles(tenant: str) -> list[str]:
        page = await api.client.get(ARTICLES, params={"limit": 100}, headers=users[tenant])
        return [item["title"] for item in page.json()["items"]]

    work = [create(t, i) for i in range(60) for t in (acme.slug, beta.slug)]
    reads = [titles(t) for _ in range(40) for t in (acme.slug, beta.slug)]
    results = await asyncio.gather(*work, *reads)

    for tenant_titles in results[len(work) :]:
        prefixes = {title.split(" ")[0] for title in tenant_titles}
        assert len(prefixes) <= 1
    for entry in (acme, beta):
        stored = await rows_in(entry)
        assert len(stored) == 60
        assert {title.split(" ")[0] for _, title in stored} == {entry.slug}
    counts = await query(acme.database_url.get_secret_value(), select(func.count(Article.id)))
    assert counts[0][0] == 60
