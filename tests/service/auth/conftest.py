"""An identity app on a fresh migrated PostgreSQL database per test."""

from __future__ import annotations

import pytest

from tests.conftest import IdentityAppFactory
from tests.service.auth.helpers import Api


@pytest.fixture
async def api(identity_app: IdentityAppFactory, pg_database: str) -> Api:
    """berth on real PostgreSQL, fast Argon2, rate limits off."""
    app, client = await identity_app(pg_database)
    return Api(app, client, pg_database)
