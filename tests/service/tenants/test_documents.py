"""The per-tenant document databases: a bounded LRU of clients on the real MongoDB server."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from pymongo.asynchronous.database import AsyncDatabase

from service.core.config import MongoSettings
from service.documents.client import MongoNotConfigured
from service.tenants.documents import ModelBinder, TenantDocuments, target_of
from service.tenants.engines import TenantsBusy
from service.tenants.schemas import TenantEntry
from tests.mongo_server import MongoServer
from tests.service.conftest import sqlite_entry


def _entry(slug: str, **fields: object) -> TenantEntry:
    return sqlite_entry(Path(f"/nonexistent/{slug}.db"), slug, **fields)


def _documents(server: MongoServer, prefix: str, **settings: object) -> TenantDocuments:
    mongo = MongoSettings(url=server.url, database_prefix=prefix, **settings)  # type: ignore[arg-type]
    return TenantDocuments(mongo, wait_seconds=0.3)


def test_an_entry_with_its_own_url_and_database_wins_over_the_shared_server() -> None:
    settings = MongoSettings(url="mongodb://shared:27017", database_prefix="berth_")  # type: ignore[arg-type]

    own = target_of(
        _entry("acme", mongo_url="mongodb://u:p@own:27017", mongo_database="acme_docs"), settings
    )
    shared = target_of(_entry("beta"), settings)
    nothing = target_of(_entry("beta"), MongoSettings())

    assert (own.url, own.database) == ("mongodb://u:p@own:27017", "acme_docs")  # type: ignore[union-attr]
    assert (shared.url, shared.database) == ("mongodb://shared:27017", "berth_beta")  # type: ignore[union-attr]
    assert nothing is None


async def test_without_any_url_a_lease_is_a_503_naming_the_setting() -> None:
    documents = TenantDocuments(MongoSettings())

    with pytest.raises(MongoNotConfigured, match="BERTH_MONGO__URL"):
        async with documents.lease(_entry("acme")):
            pass


async def test_at_most_cache_size_clients_are_open_the_least_recent_idle_one_goes(
    mongo_server: MongoServer, mongo_prefix: str
) -> None:
    documents = _documents(mongo_server, mongo_prefix, client_cache_size=2)

    for slug in ("t-a", "t-b", "t-a", "t-c"):
        async with documents.lease(_entry(slug)) as database:
            await database.database.command("ping")

    assert documents.open_clients == 2
    assert documents.cached_slugs() == ["t-a", "t-c"]
    await documents.close()


async def test_when_every_client_is_leased_a_new_tenant_waits_then_gets_a_503(
    mongo_server: MongoServer, mongo_prefix: str
) -> None:
    documents = _documents(mongo_server, mongo_prefix, client_cache_size=1)

    async with documents.lease(_entry("t-a")):
        with pytest.raises(TenantsBusy):
            async with documents.lease(_entry("t-b")):
                pass

    async with documents.lease(_entry("t-b")) as database:
        assert database.slug == "t-b"
    await documents.close()


async def test_a_changed_url_gets_a_new_client_and_the_old_one_finishes_first(
    mongo_server: MongoServer, mongo_prefix: str
) -> None:
    documents = _documents(mongo_server, mongo_prefix)
    before = _entry("t-a")
    rotated = _entry("t-a", mongo_url=mongo_server.url, mongo_database=f"{mongo_prefix}moved")

    async with documents.lease(before) as old:
        async with documents.lease(rotated) as new:
            assert new is not old
            assert new.target.database == f"{mongo_prefix}moved"
        await old.database.command("ping")  # still usable until its lease ends
        assert old.retired

    assert documents.open_clients == 1
    await documents.close()


async def test_models_are_bound_once_per_tenant_even_when_first_requests_race(
    mongo_server: MongoServer, mongo_prefix: str
) -> None:
    documents = _documents(mongo_server, mongo_prefix)
    bound: list[str] = []

    async def bind(database: AsyncDatabase[dict[str, object]]) -> str:
        await asyncio.sleep(0.01)
        bound.append(database.name)
        return database.name

    binder = ModelBinder("probe", bind)

    async def first_use() -> str:
        async with documents.lease(_entry("t-a")) as database:
            return await database.models(binder)

    names = await asyncio.gather(*(first_use() for _ in range(10)))

    assert bound == [f"{mongo_prefix}t-a"]
    assert set(names) == {f"{mongo_prefix}t-a"}
    await documents.close()
