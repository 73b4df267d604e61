"""An app with two tenants (acme, beta) whose documents live on the real test MongoDB server,
each tenant in databases of this test's own; users; declaration factories."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from pymongo import AsyncMongoClient

from service.core.config import Settings
from service.documents.client import MongoDocument
from service.main import create_app
from tests.conftest import ClientFactory
from tests.mongo_server import MongoServer
from tests.service.conftest import SqliteTenants
from tests.service.submissions.factories import declaration
from tests.service.submissions.worker_harness import client_for_tests
from tests.support import KnownUser, bearer, create_user, identity_groups

SUBMISSIONS = "/api/v1/submissions"


@dataclass
class SubmissionsApi:
    app: FastAPI
    client: httpx.AsyncClient
    database_prefix: str

    async def user(self, role: str = "member", tenant: str | None = "acme") -> dict[str, str]:
        """Authorization headers of a new user with `role` in `tenant`."""
        known: KnownUser = await create_user(self.app, role=role, tenant_slug=tenant)
        return bearer(self.app, known)

    async def submit(
        self, headers: dict[str, str], body: dict[str, Any] | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        response = await self.client.post(SUBMISSIONS, json=body or declaration(), headers=headers,
                                          **kwargs)  # fmt: skip
        assert response.status_code == 202, response.text
        created: dict[str, Any] = response.json()
        return created

    def database_of(self, tenant: str) -> str:
        return f"{self.database_prefix}{tenant}"


SubmissionsApiFactory = Callable[..., Awaitable[SubmissionsApi]]


@pytest.fixture
def submissions_api_for(
    make_settings: Callable[..., Settings],
    client_for: ClientFactory,
    migrated_sqlite: str,
    sqlite_tenants: SqliteTenants,
    registry_dir: Path,
    mongo_server: MongoServer,
    mongo_prefix: str,
) -> SubmissionsApiFactory:
    """`await submissions_api_for(**groups)`: berth with tenants acme and beta, documents on
    the test MongoDB server (the worker off unless `submissions` says otherwise)."""

    async def factory(**groups: Any) -> SubmissionsApi:
        sqlite_tenants("acme", "beta")
        tenants = {"registry_dir": str(registry_dir), **groups.pop("tenants", {})}
        mongo = {"url": mongo_server.url, "database_prefix": mongo_prefix,
                 **groups.pop("mongo", {})}  # fmt: skip
        submissions = {"worker_enabled": False, **groups.pop("submissions", {})}
        settings = make_settings(**identity_groups(
            migrated_sqlite, tenants=tenants, mongo=mongo, submissions=submissions, **groups
        ))  # fmt: skip
        app = create_app(settings)
        return SubmissionsApi(app, await client_for(app), mongo_prefix)

    return factory


@pytest.fixture
async def mongo(mongo_server: MongoServer) -> AsyncIterator[AsyncMongoClient[MongoDocument]]:
    """A client of the test server around the service (what a test reads and writes raw)."""
    client = client_for_tests(mongo_server.url)
    yield client
    await client.close()


@pytest.fixture
async def api(submissions_api_for: SubmissionsApiFactory) -> SubmissionsApi:
    return await submissions_api_for()
