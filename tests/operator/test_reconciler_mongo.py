"""spec.mongo against the real API server, the real PostgreSQL and a MongoDB-protocol server
that checks passwords (secantusdb `--auth`): the tenant's own user and database reach the
registry entry and the Secret, MongoReady says how it went (and is absent when mongo is
off), a missing admin URL is a reason and not a crash, rotation, drift, deletion by policy,
disabling later."""

from __future__ import annotations

from typing import Any

import pytest
from berth_operator.errors import ReconcileFailed
from berth_operator.kube import TenantResource
from berth_operator.metrics import Handler
from berth_operator.render import MONGO_CREDENTIAL_KEYS, credentials_secret_name
from berth_operator.resource import (
    MONGO_DATABASE_MESSAGE,
    ROTATE_ANNOTATION,
    ConditionStatus,
    ConditionType,
    Phase,
    Tenant,
)
from lightkube import ApiError
from lightkube.resources.core_v1 import Secret
from pymongo import MongoClient
from pymongo.errors import OperationFailure

from service.tenants.mongo_users import MongoChange, mongo_names
from service.tenants.schemas import TenantEntry
from tests.mongo_server import ADMIN_PASSWORD, MongoServer
from tests.operator.conftest import Cluster, ReconcilerFactory, drop_tenant_objects, unique_name
from tests.operator.test_reconciler import condition, ready_tenant, registry_entry_of

pytestmark = pytest.mark.postgres

Document = dict[str, Any]
MONGO_ON = {"enabled": True}


def client_of(url: str) -> MongoClient[Document]:
    return MongoClient(url, serverSelectionTimeoutMS=5000)


def logs_in(url: str) -> bool:
    with client_of(url) as client:
        try:
            client.get_default_database().command("ping")
        except OperationFailure:
            return False
    return True


def mongo_user_exists(server: MongoServer, slug: str) -> bool:
    names = mongo_names(slug)
    with client_of(server.url) as admin:
        return bool(admin[names.database].command("usersInfo", names.user)["users"])


def databases(server: MongoServer) -> list[str]:
    with client_of(server.url) as admin:
        return admin.list_database_names()


async def mongo_entry(cluster: Cluster, slug: str) -> TenantEntry:
    entry = await registry_entry_of(cluster, slug)
    assert entry is not None
    return entry


def mongo_url_of(entry: TenantEntry) -> str:
    assert entry.mongo_url is not None
    return entry.mongo_url.get_secret_value()


async def test_a_tenant_with_mongo_gets_its_own_user_in_the_registry_entry_and_secret(
    cluster: Cluster, make_reconciler: ReconcilerFactory, mongo_admin: MongoServer
) -> None:
    tenant = await ready_tenant(cluster, make_reconciler, mongo=MONGO_ON)
    slug, names = tenant.ref.slug, mongo_names(tenant.ref.slug)
    other = await ready_tenant(cluster, make_reconciler, mongo=MONGO_ON)

    entry = await mongo_entry(cluster, slug)
    credentials = await cluster.secret_data(credentials_secret_name(slug)) or {}

    assert entry.mongo_database == names.database == f"berth_{slug}"
    url = mongo_url_of(entry)
    assert f"authSource={names.database}" in url
    assert {key: credentials[key] for key in MONGO_CREDENTIAL_KEYS} == {
        "mongo_url": url,
        "mongo_database": names.database,
        "mongo_username": names.user,
        "mongo_password": credentials["mongo_password"],
    }
    assert credentials["mongo_password"] != credentials["password"]
    with client_of(url) as client:
        client[names.database].notes.insert_one({"n": 1})
        with pytest.raises(OperationFailure):
            client[mongo_names(other.ref.slug).database].notes.find_one()
    assert condition(tenant, ConditionType.MONGO_READY) == (ConditionStatus.TRUE, "Provisioned")
    assert tenant.status.mongo is not None
    assert (tenant.status.mongo.database, tenant.status.mongo.user) == (names.database, names.user)
    assert tenant.status.phase is Phase.READY
    # And from there, nothing left to do.
    assert await make_reconciler().reconcile(tenant, Handler.TIMER) == ()


async def test_a_tenant_without_mongo_has_no_mongo_keys_and_no_mongo_condition(
    cluster: Cluster, make_reconciler: ReconcilerFactory
) -> None:
    tenant = await ready_tenant(cluster, make_reconciler)

    entry = await mongo_entry(cluster, tenant.ref.slug)
    credentials = await cluster.secret_data(credentials_secret_name(tenant.ref.slug)) or {}

    assert (entry.mongo_url, entry.mongo_database) == (None, None)
    assert not set(MONGO_CREDENTIAL_KEYS) & set(credentials)
    assert ConditionType.MONGO_READY not in {c.type for c in tenant.status.conditions}


async def test_a_missing_admin_secret_makes_mongo_ready_false_with_a_reason(
    cluster: Cluster, make_reconciler: ReconcilerFactory
) -> None:
    """No `mongo_admin`: the default MongoDB server's Secret is not there."""
    tenant = await cluster.create_tenant(mongo=MONGO_ON)

    with pytest.raises(ReconcileFailed) as failed:
        await make_reconciler().reconcile(tenant, Handler.CREATE)

    assert (failed.value.failure.reason, failed.value.failure.temporary) == (
        "ServerSecretMissing", True,
    )  # fmt: skip
    status = await cluster.tenant(tenant.ref.name)
    assert condition(status, ConditionType.MONGO_READY) == (
        ConditionStatus.FALSE, "ServerSecretMissing",
    )  # fmt: skip
    assert condition(status, ConditionType.DATABASE_READY)[0] is ConditionStatus.TRUE
    assert condition(status, ConditionType.READY)[0] is ConditionStatus.FALSE
    assert await registry_entry_of(cluster, tenant.ref.slug) is None  # not served half-made


async def test_no_mongo_server_at_all_is_a_permanent_failure_naming_the_setting(
    cluster: Cluster, make_reconciler: ReconcilerFactory
) -> None:
    tenant = await cluster.create_tenant(mongo=MONGO_ON)

    with pytest.raises(ReconcileFailed) as failed:
        await make_reconciler(default_mongo_server={"name": None}).reconcile(tenant, Handler.CREATE)

    failure = failed.value.failure
    assert (failure.reason, failure.temporary) == ("NoMongoServer", False)
    assert "BERTH_OPERATOR__DEFAULT_MONGO_SERVER__NAME" in failure.message
    status = await cluster.tenant(tenant.ref.name)
    assert condition(status, ConditionType.MONGO_READY) == (ConditionStatus.FALSE, "NoMongoServer")
    assert status.status.phase is Phase.FAILED


async def test_a_server_named_by_the_tenant_and_a_database_of_its_choice(
    cluster: Cluster, make_reconciler: ReconcilerFactory, mongo_admin: MongoServer
) -> None:
    await cluster.put_secret("documents", {"admin": mongo_admin.url})
    database = unique_name("docs").replace("-", "_")
    ref = {"name": "documents", "key": "admin"}
    tenant = await ready_tenant(
        cluster,
        make_reconciler,
        mongo={"enabled": True, "serverSecretRef": ref, "database": database},
    )

    entry = await mongo_entry(cluster, tenant.ref.slug)

    assert entry.mongo_database == database
    assert logs_in(mongo_url_of(entry))
    assert tenant.status.mongo is not None
    assert tenant.status.mongo.server.secret_name == "documents"
    moved = await cluster.patch_tenant(tenant.ref.name, {"spec": {"mongo": {"database": "other"}}})
    with pytest.raises(ReconcileFailed) as refused:
        await make_reconciler().reconcile(moved, Handler.UPDATE)
    assert refused.value.failure.reason == "InvalidSpec"
    assert condition(await cluster.tenant(tenant.ref.name), ConditionType.MONGO_READY) == (
        ConditionStatus.FALSE, "InvalidSpec",
    )  # fmt: skip
    assert await mongo_entry(cluster, tenant.ref.slug) == entry  # still served as it was


async def test_the_api_server_refuses_a_system_database(cluster: Cluster) -> None:
    with pytest.raises(ApiError) as refused:
        await cluster.create_tenant(mongo={"enabled": True, "database": "admin"})

    assert MONGO_DATABASE_MESSAGE in str(refused.value.status.message)


async def test_rotation_refuses_the_old_mongo_password_and_shows_no_secret(
    cluster: Cluster,
    make_reconciler: ReconcilerFactory,
    mongo_admin: MongoServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    tenant = await ready_tenant(cluster, make_reconciler, mongo=MONGO_ON)
    slug = tenant.ref.slug
    old = mongo_url_of(await mongo_entry(cluster, slug))
    old_password = (await cluster.secret_data(credentials_secret_name(slug)) or {})[
        "mongo_password"
    ]

    rotating = await cluster.patch_tenant(
        slug, {"metadata": {"annotations": {ROTATE_ANNOTATION: "2026-12-03"}}}
    )
    changes = await make_reconciler().reconcile(rotating, Handler.UPDATE)

    credentials = await cluster.secret_data(credentials_secret_name(slug)) or {}
    new = mongo_url_of(await mongo_entry(cluster, slug))
    assert MongoChange.MONGO_PASSWORD_ROTATED in changes
    assert new != old
    assert credentials["mongo_url"] == new
    assert not logs_in(old)
    assert logs_in(new)
    rotated = await cluster.tenant(slug)
    assert await make_reconciler().reconcile(rotated, Handler.UPDATE) == ()  # once only
    shown = capsys.readouterr().out + str(await cluster.events(slug)) + str(rotated.status)
    for secret in (old_password, credentials["mongo_password"], ADMIN_PASSWORD):
        assert secret not in shown


async def test_a_user_dropped_behind_its_back_is_recreated_with_its_password(
    cluster: Cluster, make_reconciler: ReconcilerFactory, mongo_admin: MongoServer
) -> None:
    tenant = await ready_tenant(cluster, make_reconciler, mongo=MONGO_ON)
    slug, names = tenant.ref.slug, mongo_names(tenant.ref.slug)
    url = mongo_url_of(await mongo_entry(cluster, slug))
    with client_of(mongo_admin.url) as admin:
        admin[names.database].command("dropUser", names.user)
    await cluster.client.delete(Secret, credentials_secret_name(slug), namespace=cluster.namespace)
    reconciler = make_reconciler()

    changes = await reconciler.reconcile(tenant, Handler.TIMER)

    assert MongoChange.MONGO_USER_CREATED in changes
    # The password came back from the registry entry: the service's URL works again.
    assert logs_in(url)
    assert (await cluster.secret_data(credentials_secret_name(slug)) or {})["mongo_url"] == url
    assert reconciler.metrics.drift_repairs.labels("mongo_user_created")._value.get() == 1
    repaired = [e for e in await cluster.events(slug) if e[1] == "DriftRepaired"]
    assert "MongoDB user created" in repaired[0][2]


async def test_roles_changed_by_hand_are_set_back_on_the_timer(
    cluster: Cluster, make_reconciler: ReconcilerFactory, mongo_admin: MongoServer
) -> None:
    tenant = await ready_tenant(cluster, make_reconciler, mongo=MONGO_ON)
    names = mongo_names(tenant.ref.slug)
    with client_of(mongo_admin.url) as admin:
        admin[names.database].command(
            "updateUser", names.user, roles=[{"role": "readAnyDatabase", "db": "admin"}]
        )

    changes = await make_reconciler().reconcile(tenant, Handler.TIMER)

    assert changes == (MongoChange.MONGO_USER_ROLES_SET,)
    with client_of(mongo_admin.url) as admin:
        (user,) = admin[names.database].command("usersInfo", names.user)["users"]
    assert [(r["role"], r["db"]) for r in user["roles"]] == [("readWrite", names.database)]


@pytest.mark.parametrize(("policy", "data_kept"), [("Retain", True), ("Delete", False)])
async def test_deletion_drops_the_user_and_the_data_only_under_delete(
    cluster: Cluster,
    make_reconciler: ReconcilerFactory,
    mongo_admin: MongoServer,
    policy: str,
    data_kept: bool,
) -> None:
    tenant = await ready_tenant(cluster, make_reconciler, mongo=MONGO_ON, deletionPolicy=policy)
    slug, names = tenant.ref.slug, mongo_names(tenant.ref.slug)
    url = mongo_url_of(await mongo_entry(cluster, slug))

    await make_reconciler().delete(tenant)

    assert not mongo_user_exists(mongo_admin, slug)
    assert not logs_in(url)
    assert (names.database in databases(mongo_admin)) is data_kept
    assert "MongoDropped" in {reason for _, reason, _ in await cluster.events(slug)}


async def test_a_second_tenant_of_the_same_name_does_not_adopt_the_retained_documents(
    cluster: Cluster, make_reconciler: ReconcilerFactory, mongo_admin: MongoServer
) -> None:
    first = await ready_tenant(cluster, make_reconciler, mongo=MONGO_ON)
    slug = first.ref.slug
    await make_reconciler().delete(first)  # Retain: the documents stay, the user goes
    await cluster.client.delete(TenantResource, slug, namespace=cluster.namespace)
    # The retained PostgreSQL objects would refuse it first: only MongoDB is looked at here.
    await drop_tenant_objects(slug)
    second = await cluster.create_tenant(slug, mongo=MONGO_ON)

    with pytest.raises(ReconcileFailed) as refused:
        await make_reconciler().reconcile(second, Handler.CREATE)

    assert refused.value.failure.reason == "OwnershipConflict"
    assert condition(await cluster.tenant(slug), ConditionType.MONGO_READY) == (
        ConditionStatus.FALSE, "OwnershipConflict",
    )  # fmt: skip
    assert not mongo_user_exists(mongo_admin, slug)


async def test_disabling_mongo_removes_its_keys_and_its_user_and_follows_the_policy(
    cluster: Cluster, make_reconciler: ReconcilerFactory, mongo_admin: MongoServer
) -> None:
    tenant = await ready_tenant(cluster, make_reconciler, mongo=MONGO_ON)
    slug, names = tenant.ref.slug, mongo_names(tenant.ref.slug)

    disabled = await cluster.patch_tenant(slug, {"spec": {"mongo": {"enabled": False}}})
    await make_reconciler().reconcile(disabled, Handler.UPDATE)

    entry = await mongo_entry(cluster, slug)
    credentials = await cluster.secret_data(credentials_secret_name(slug)) or {}
    after: Tenant = await cluster.tenant(slug)
    assert (entry.mongo_url, entry.mongo_database) == (None, None)
    assert not set(MONGO_CREDENTIAL_KEYS) & set(credentials)
    assert ConditionType.MONGO_READY not in {c.type for c in after.status.conditions}
    assert after.status.mongo is None
    assert after.status.phase is Phase.READY
    assert not mongo_user_exists(mongo_admin, slug)
    assert names.database in databases(mongo_admin)  # deletionPolicy Retain keeps the data
    assert await make_reconciler().reconcile(after, Handler.TIMER) == ()
