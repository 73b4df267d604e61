"""A PostgreSQL outage is a 503 with Retry-After in the envelope on every route that needs
the database, control plane or tenant, never a 500; readiness says so; all recovers after.

The real PostgreSQL, reached through TCP relays that are cut and restored (tests.support).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from pydantic import SecretStr
from sqlalchemy import make_url

from service.core.config import Settings
from service.main import create_app
from service.tenants.registry import write_entry
from service.tenants.schemas import TenantEntry
from tests.conftest import ClientFactory
from tests.service.conftest import ProvisionFactory
from tests.service.identity.helpers import LOGIN, ME, USERS
from tests.support import (
    KnownUser,
    TcpRelay,
    assert_envelope,
    bearer,
    create_user,
    identity_groups,
    relay,
)

ARTICLES = "/api/v1/articles"
READY = "/api/v1/health/ready"


@dataclass
class Outage:
    app: FastAPI
    client: httpx.AsyncClient
    control_plane: TcpRelay
    tenant_database: TcpRelay
    owner: KnownUser


def relayed(entry: TenantEntry, port: int) -> TenantEntry:
    url = make_url(entry.database_url.get_secret_value()).set(host="127.0.0.1", port=port)
    return entry.model_copy(
        update={"database_url": SecretStr(url.render_as_string(hide_password=False))}
    )


@pytest.fixture
async def outage(
    pg_relay: tuple[TcpRelay, str],
    provision: ProvisionFactory,
    registry_dir: Path,
    make_settings: Callable[..., Settings],
    client_for: ClientFactory,
) -> AsyncIterator[Outage]:
    """berth whose control plane and tenant database are both behind relays. The auth-state
    cache is off, so every authenticated request needs the control plane."""
    control_plane, control_url = pg_relay
    tenant = await provision("outage")
    target = make_url(tenant.database_url.get_secret_value())
    async with relay(target.host or "127.0.0.1", target.port or 5432) as tenant_relay:
        write_entry(registry_dir, relayed(tenant, tenant_relay.port))
        settings = make_settings(
            **identity_groups(
                control_url,
                auth={"state_cache_seconds": 0},
                tenants={"registry_dir": str(registry_dir)},
            )
        )
        app = create_app(settings)
        client = await client_for(app)
        owner = await create_user(app, role="owner", tenant_slug=tenant.slug)
        yield Outage(app, client, control_plane, tenant_relay, owner)


async def calls(outage: Outage) -> dict[str, httpx.Response]:
    client, owner = outage.client, outage.owner
    headers = bearer(outage.app, owner)
    return {
        "login": await client.post(LOGIN, json={"email": owner.email, "password": owner.password}),
        "me": await client.get(ME, headers=headers),
        "users": await client.get(USERS, headers=headers),
        "article-list": await client.get(ARTICLES, headers=headers),
        "article-create": await client.post(ARTICLES, json={"title": "t"}, headers=headers),
    }


def assert_unavailable(response: httpx.Response, path: str) -> None:
    body = assert_envelope(response, 503, "ServiceUnavailable", path)
    assert body["message"] == "The database is unavailable; retry shortly"
    assert int(response.headers["retry-after"]) >= 1


async def test_a_control_plane_outage_is_503_everywhere_it_is_needed_then_recovers(
    outage: Outage,
) -> None:
    await outage.control_plane.stop()
    down = await calls(outage)
    ready = await outage.client.get(READY)
    await outage.control_plane.start()
    back = await calls(outage)

    assert {name: r.status_code for name, r in down.items()} == dict.fromkeys(down, 503)
    for name, path in (("login", LOGIN), ("me", ME), ("users", USERS)):
        assert_unavailable(down[name], path)
    assert ready.status_code == 503
    assert back["login"].status_code == 200
    assert back["me"].status_code == 200
    assert back["article-create"].status_code == 201


async def test_a_tenant_database_outage_is_503_on_its_routes_only(outage: Outage) -> None:
    await outage.tenant_database.stop()
    down = await calls(outage)
    await outage.tenant_database.start()
    back = await calls(outage)

    assert_unavailable(down["article-list"], ARTICLES)
    assert_unavailable(down["article-create"], ARTICLES)
    assert down["me"].status_code == 200  # the control plane is fine
    assert back["article-list"].status_code == 200
    assert back["article-create"].status_code == 201
