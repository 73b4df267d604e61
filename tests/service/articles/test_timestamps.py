"""One timestamp format on every backend and path: ISO-8601 UTC with a `Z`.

SQLite hands datetimes back without a zone, PostgreSQL with one; create answers from Python
objects, get and list from rows read back, PATCH from both. Every one must read the same.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from service.core.config import Settings
from service.main import create_app
from service.tenants.registry import write_entry
from tests.conftest import ClientFactory
from tests.service.articles.conftest import ARTICLES, ArticlesApi, ArticlesApiFactory
from tests.service.conftest import ProvisionFactory
from tests.support import identity_groups

STAMPS = ("created_at", "updated_at")


def assert_utc_z(value: str) -> None:
    assert value.endswith("Z"), value
    parsed = datetime.fromisoformat(value)
    assert parsed.utcoffset() == timedelta(0)


def stamps_of(*articles: dict[str, Any]) -> list[str]:
    return [article[name] for article in articles for name in STAMPS]


@pytest.fixture(params=["sqlite", "postgresql"])
async def tenant_api(
    request: pytest.FixtureRequest,
    articles_api_for: ArticlesApiFactory,
    make_settings: Callable[..., Settings],
    client_for: ClientFactory,
    registry_dir: Path,
    provision: ProvisionFactory,
    pg_database: str,
) -> tuple[ArticlesApi, str]:
    """berth and one tenant's slug: "acme" on a SQLite file, or a tenant provisioned on the
    real PostgreSQL (its own database and role) with a PostgreSQL control plane."""
    if request.param == "sqlite":
        return await articles_api_for(), "acme"
    entry = await provision("stamps")
    write_entry(registry_dir, entry)
    settings = make_settings(
        **identity_groups(pg_database, tenants={"registry_dir": str(registry_dir)})
    )
    app = create_app(settings)
    return ArticlesApi(app, await client_for(app)), entry.slug


async def test_articles_carry_z_timestamps_on_create_get_list_and_patch(
    tenant_api: tuple[ArticlesApi, str],
) -> None:
    api, tenant = tenant_api
    author = await api.user(role="owner", tenant=tenant)
    created = await api.create(author, slug="stamped")

    read = (await api.client.get(f"{ARTICLES}/stamped", headers=author)).json()
    listed = (await api.client.get(ARTICLES, headers=author)).json()["items"]
    patched = await api.client.patch(f"{ARTICLES}/stamped", json={"body": "b"}, headers=author)

    assert patched.status_code == 200, patched.text
    for value in stamps_of(created, read, *listed, patched.json()):
        assert_utc_z(value)
    assert read["created_at"] == created["created_at"]
