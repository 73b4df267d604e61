"""Each tenant's documents live in, and are read from, its own database only."""

from __future__ import annotations

import asyncio
import uuid

from pydantic import SecretStr
from pymongo import MongoClient

from tests.mongo_server import MongoServer
from tests.service.submissions.conftest import SUBMISSIONS, SubmissionsApi
from tests.service.submissions.factories import declaration

ROUNDS = 40


async def test_interleaved_requests_of_two_tenants_never_cross_databases(
    api: SubmissionsApi, mongo_server: MongoServer
) -> None:
    owners = {"acme": await api.user(role="owner", tenant="acme"),
              "beta": await api.user(role="owner", tenant="beta")}  # fmt: skip

    async def submit(tenant: str, n: int) -> tuple[str, str]:
        body = declaration(reference=f"{tenant}-{n}")
        response = await api.client.post(SUBMISSIONS, json=body, headers=owners[tenant])
        assert response.status_code == 202, response.text
        return tenant, response.json()["id"]

    made = await asyncio.gather(
        *(submit(tenant, n) for n in range(ROUNDS) for tenant in ("acme", "beta"))
    )
    reads = await asyncio.gather(
        *(api.client.get(SUBMISSIONS, params={"limit": 100}, headers=owners[tenant])
          for tenant in ("acme", "beta") for _ in range(5))
    )  # fmt: skip

    with MongoClient(mongo_server.url, uuidRepresentation="standard") as client:
        for tenant in ("acme", "beta"):
            stored = client[api.database_of(tenant)].submissions.find({}, {"reference": 1})
            references = {document["reference"] for document in stored}
            assert references == {f"{tenant}-{n}" for n in range(ROUNDS)}
    for response in reads:
        tenant = "acme" if response.request.headers["Authorization"] == owners["acme"][
            "Authorization"] else "beta"  # fmt: skip
        assert {item["reference"].split("-")[0] for item in response.json()["items"]} == {tenant}
    for tenant, submission_id in made:
        other = "beta" if tenant == "acme" else "acme"
        crossed = await api.client.get(f"{SUBMISSIONS}/{submission_id}", headers=owners[other])
        assert crossed.status_code == 404


async def test_a_tenant_entry_with_its_own_database_is_served_from_it(
    api: SubmissionsApi, mongo_server: MongoServer
) -> None:
    from service.container import container_of
    from service.tenants.registry import write_entry

    tenancy = container_of(api.app).tenancy
    entry = tenancy.registry.get("beta")
    assert entry is not None
    own_database = f"{api.database_prefix}own_{uuid.uuid4().hex[:6]}"
    write_entry(tenancy.registry.directory, entry.model_copy(update={
        "mongo_url": SecretStr(mongo_server.url), "mongo_database": own_database}))  # fmt: skip
    await tenancy.registry.refresh_async()
    headers = await api.user(role="owner", tenant="beta")

    created = await api.submit(headers)

    with MongoClient(mongo_server.url, uuidRepresentation="standard") as client:
        assert (
            client[own_database].submissions.count_documents({"_id": uuid.UUID(created["id"])}) == 1
        )
        assert client[api.database_of("beta")].submissions.count_documents({}) == 0
