"""An identity app on a fresh migrated PostgreSQL database per test."""

from __future__ import annotations

import pytest

from tests.conftest import IdentityAppFactory
from tests.service.identity.helpers import Api
from tests.support import set_tenants, tenant_entry


@pytest.fixture
async def api(identity_app: IdentityAppFactory, pg_database: str) -> Api:
    """berth on real PostgreSQL, fast Argon2, rate limits off. Its tenant registry (a real
    directory, re-read with `set_tenants`) lists the tenants "acme" and "globex"."""
    app, client = await identity_app(pg_database)
    set_tenants(app, tenant_entry("acme"), tenant_entry("globex"))
    return Api(app, client, pg_database)
