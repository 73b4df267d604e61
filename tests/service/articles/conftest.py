"""An app with two SQLite tenants (acme, beta) in a real registry directory, and users."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from service.core.config import Settings
from service.main import create_app
from tests.conftest import ClientFactory
from tests.service.conftest import SqliteTenants
from tests.support import KnownUser, bearer, create_user, identity_groups

ARTICLES = "/api/v1/articles"


@dataclass
class ArticlesApi:
    app: FastAPI
    client: httpx.AsyncClient

    async def user(self, role: str = "member", tenant: str | None = "acme") -> dict[str, str]:
        """Authorization headers of a new user with `role` in `tenant`."""
        known: KnownUser = await create_user(self.app, role=role, tenant_slug=tenant)
        headers = bearer(self.app, known)
        headers["X-Test-User-Id"] = str(known.id)  # ignored by the service; read by tests
        return headers

    async def create(self, headers: dict[str, str], **fields: Any) -> dict[str, Any]:
        body = {"title": "Hello world", **fields}
        response = await self.client.post(ARTICLES, json=body, headers=headers)
        assert response.status_code == 201, response.text
        created: dict[str, Any] = response.json()
        return created


ArticlesApiFactory = Callable[..., Awaitable[ArticlesApi]]


@pytest.fixture
def articles_api_for(
    make_settings: Callable[..., Settings],
    client_for: ClientFactory,
    migrated_sqlite: str,
    sqlite_tenants: SqliteTenants,
    registry_dir: Path,
) -> ArticlesApiFactory:
    """`await articles_api_for(**groups)`: berth with tenants acme and beta (SQLite)."""

    async def factory(**groups: Any) -> ArticlesApi:
        sqlite_tenants("acme", "beta")
        tenants = {"registry_dir": str(registry_dir), **groups.pop("tenants", {})}
        settings = make_settings(**identity_groups(migrated_sqlite, tenants=tenants, **groups))
        app = create_app(settings)
        return ArticlesApi(app, await client_for(app))

    return factory


@pytest.fixture
async def api(articles_api_for: ArticlesApiFactory) -> ArticlesApi:
    return await articles_api_for()
