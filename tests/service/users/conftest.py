"""An identity app on a fresh migrated PostgreSQL database per test, knowing two tenants."""

from __future__ import annotations

import pytest

from tests.conftest import IdentityAppFactory
from tests.service.auth.helpers import Api, entry
from tests.support import StaticLookup


@pytest.fixture
async def api(identity_app: IdentityAppFactory, pg_database: str) -> Api:
    """berth on real PostgreSQL, fast Argon2, rate limits off. Its tenant registry is
    StaticLookup (tenants "acme" and "globex"), a stand-in for the directory registry."""
    app, client = await identity_app(pg_database)
    app.state.tenants = StaticLookup(entry("acme"), entry("globex"))
    return Api(app, client, pg_database)
