"""Reconciliation against the real API server and the real PostgreSQL: what a Tenant turns
into, that a second run changes nothing, crashes after every step, rotation, drift,
deletion by policy, a non-superuser admin, an ownership clash, 50 Tenants at once."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg
import pytest
from berth_operator.errors import ReconcileFailed
from berth_operator.kube import TenantResource, decode, encode
from berth_operator.metrics import Handler
from berth_operator.reconciler import SecretChange
from berth_operator.render import CREDENTIAL_KEYS, credentials_secret_name
from berth_operator.resource import (
    ROTATE_ANNOTATION,
    ConditionStatus,
    ConditionType,
    Phase,
    Tenant,
)
from berth_operator.status import Step
from lightkube.resources.core_v1 import Secret
from sqlalchemy import make_url

from service.tenants.migrate import downgrade_tenant, tenant_head
from service.tenants.postgres import Change, tenant_names
from service.tenants.registry import entry_file_name
from service.tenants.schemas import TenantEntry, TenantStatus
from tests.operator.conftest import (
    REGISTRY_SECRET,
    Cluster,
    ReconcilerFactory,
    unique_name,
)
from tests.pg_cluster import ScramCluster
from tests.support import PG_ADMIN_URL, asyncpg_dsn

pytestmark = pytest.mark.postgres


async def superuser(database: str = "postgres") -> asyncpg.Connection:
    url = make_url(PG_ADMIN_URL).set(database=database).render_as_string(False)
    return await asyncpg.connect(asyncpg_dsn(url), timeout=5)


async def catalog_versions(slug: str) -> dict[str, Any]:
    """Row versions (xmin) of everything provisioning may write: any DDL changes one."""
    names = tenant_names(slug)
    admin = await superuser()
    try:
        versions = dict(
            await admin.fetchrow(
                "SELECT (SELECT xmin::text FROM pg_authid WHERE rolname = $1) AS role, "
                "(SELECT xmin::text FROM pg_database WHERE datname = $1) AS database, "
                "(SELECT array_agg(d.xmin::text ORDER BY d.objoid) FROM pg_shdescription d "
                " WHERE d.objoid IN ((SELECT oid FROM pg_authid WHERE rolname = $1), "
                "                    (SELECT oid FROM pg_database WHERE datname = $1))) AS marks, "
                "(SELECT array_agg(m.xmin::text) FROM pg_auth_members m "
                " WHERE m.roleid = (SELECT oid FROM pg_authid WHERE rolname = $1)) AS members",
                names.role,
            )
        )
    finally:
        await admin.close()
    inside = await superuser(names.database)
    try:
        versions["schema"] = await inside.fetchval(
            "SELECT xmin::text FROM pg_namespace WHERE nspname = 'public'"
        )
        versions["migrations"] = await inside.fetchval("SELECT xmin::text FROM alembic_version")
    finally:
        await inside.close()
    return versions


async def registry_entry_of(cluster: Cluster, slug: str) -> TenantEntry | None:
    data = await cluster.secret_data(REGISTRY_SECRET) or {}
    value = data.get(entry_file_name(slug))
    return TenantEntry.model_validate_json(value) if value else None


def condition(tenant: Tenant, kind: ConditionType) -> tuple[ConditionStatus, str]:
    found = next(c for c in tenant.status.conditions if c.type is kind)
    return found.status, found.reason


async def ready_tenant(cluster: Cluster, reconcile: ReconcilerFactory, **spec: Any) -> Tenant:
    tenant = await cluster.create_tenant(**spec)
    await reconcile().reconcile(tenant, Handler.CREATE)
    return await cluster.tenant(tenant.ref.name)


async def test_a_tenant_becomes_ready_with_its_secret_registry_key_and_status(
    cluster: Cluster, make_reconciler: ReconcilerFactory
) -> None:
    tenant = await ready_tenant(cluster, make_reconciler, selfSignup=True)
    slug, names = tenant.ref.slug, tenant_names(tenant.ref.slug)

    credentials = await cluster.secret_data(credentials_secret_name(slug))
    entry = await registry_entry_of(cluster, slug)

    assert credentials is not None
    assert tuple(sorted(credentials)) == tuple(sorted(CREDENTIAL_KEYS))
    assert (credentials["username"], credentials["database"]) == (names.role, names.database)
    tenant_db = await asyncpg.connect(credentials["url"], timeout=5)
    try:
        assert await tenant_db.fetchval("SELECT current_user") == names.role
    finally:
        await tenant_db.close()
    assert entry is not None
    assert (entry.status, entry.self_signup, entry.schema_version) == (
        TenantStatus.READY, True, tenant_head(),
    )  # fmt: skip
    assert make_url(entry.database_url.get_secret_value()).password == credentials["password"]
    assert tenant.status.phase is Phase.READY
    assert (tenant.status.database, tenant.status.schema_version) == (names.database, tenant_head())
    assert tenant.status.observed_generation == tenant.generation
    # MongoReady only for a Tenant that asks for MongoDB (test_reconciler_mongo.py).
    assert {c.type: c.status for c in tenant.status.conditions} == dict.fromkeys(
        set(ConditionType) - {ConditionType.MONGO_READY}, ConditionStatus.TRUE
    )
    assert tenant.status.mongo is None
    reasons = sorted(reason for _, reason, _ in await cluster.events(slug))
    assert reasons == ["Migrated", "Provisioned", "Ready"]


async def test_a_second_reconcile_changes_nothing_runs_no_ddl_and_posts_no_event(
    cluster: Cluster, make_reconciler: ReconcilerFactory
) -> None:
    tenant = await ready_tenant(cluster, make_reconciler)
    slug = tenant.ref.slug
    before = await catalog_versions(slug)
    secrets_before = [
        await cluster.resource_version(name)
        for name in (credentials_secret_name(slug), REGISTRY_SECRET)
    ]
    events_before = await cluster.events(slug)

    changes = await make_reconciler().reconcile(tenant, Handler.TIMER)

    assert changes == ()
    assert await catalog_versions(slug) == before
    assert [
        await cluster.resource_version(name)
        for name in (credentials_secret_name(slug), REGISTRY_SECRET)
    ] == secrets_before
    assert await cluster.events(slug) == events_before
    assert (await cluster.tenant(slug)).status == tenant.status


class Crash(Exception):
    """Stands for the operator process dying right after a step."""


@pytest.mark.parametrize("step", list(Step))
async def test_a_crash_after_any_step_then_a_resume_ends_ready_with_nothing_duplicated(
    cluster: Cluster, make_reconciler: ReconcilerFactory, step: Step
) -> None:
    tenant = await cluster.create_tenant()
    slug = tenant.ref.slug

    async def crash_after(done: Step) -> None:
        if done is step:
            raise Crash(done)

    with pytest.raises(ReconcileFailed):
        await make_reconciler(after_step=crash_after).reconcile(tenant, Handler.CREATE)
    await make_reconciler().reconcile(await cluster.tenant(slug), Handler.RESUME)

    resumed = await cluster.tenant(slug)
    credentials = await cluster.secret_data(credentials_secret_name(slug))
    registry = await cluster.secret_data(REGISTRY_SECRET)
    assert resumed.status.phase is Phase.READY
    assert credentials is not None
    assert registry is not None
    assert list(registry) == [entry_file_name(slug)]
    entry = TenantEntry.model_validate_json(registry[entry_file_name(slug)])
    assert make_url(entry.database_url.get_secret_value()).password == credentials["password"]
    admin = await superuser()
    try:
        counts = await admin.fetchrow(
            "SELECT (SELECT count(*) FROM pg_roles WHERE rolname = $1) AS roles, "
            "(SELECT count(*) FROM pg_database WHERE datname = $1) AS databases",
            tenant_names(slug).role,
        )
    finally:
        await admin.close()
    assert dict(counts) == {"roles": 1, "databases": 1}
    # And from there, nothing left to do.
    assert await make_reconciler().reconcile(resumed, Handler.TIMER) == ()


async def test_drift_is_repaired_counted_and_reported(
    cluster: Cluster, make_reconciler: ReconcilerFactory
) -> None:
    tenant = await ready_tenant(cluster, make_reconciler)
    slug, names = tenant.ref.slug, tenant_names(tenant.ref.slug)
    password = (await cluster.secret_data(credentials_secret_name(slug)) or {})["password"]
    admin = await superuser()
    try:
        await admin.execute(f'GRANT CONNECT ON DATABASE "{names.database}" TO PUBLIC')
        await admin.execute(f'REVOKE CONNECT ON DATABASE "{names.database}" FROM "{names.role}"')
        await admin.execute(f'ALTER ROLE "{names.role}" NOLOGIN CONNECTION LIMIT 3')
    finally:
        await admin.close()
    await cluster.client.delete(Secret, credentials_secret_name(slug), namespace=cluster.namespace)
    reconciler = make_reconciler()

    changes = await reconciler.reconcile(tenant, Handler.TIMER)

    assert set(changes) == {
        Change.PUBLIC_CONNECT_REVOKED,
        Change.ROLE_CONNECT_GRANTED,
        Change.ROLE_LOGIN,
        Change.CONNECTION_LIMIT,
        SecretChange.CREDENTIALS_SECRET,
    }
    # The password came back from the registry entry: the service's connections still work.
    assert (await cluster.secret_data(credentials_secret_name(slug)) or {})["password"] == password
    assert await make_reconciler().reconcile(await cluster.tenant(slug), Handler.TIMER) == ()
    repaired = [e for e in await cluster.events(slug) if e[1] == "DriftRepaired"]
    assert len(repaired) == 1
    assert repaired[0][0] == "Warning"
    assert "CONNECT revoked from PUBLIC" in repaired[0][2]
    assert reconciler.metrics.drift_repairs.labels("role_login")._value.get() == 1


async def test_a_secret_repaired_keeps_the_labels_and_annotations_others_put_on_it(
    cluster: Cluster, make_reconciler: ReconcilerFactory
) -> None:
    """Replication or backup tools label the Secret: a repair must not strip their marks."""
    tenant = await ready_tenant(cluster, make_reconciler)
    name = credentials_secret_name(tenant.ref.slug)
    theirs = {"metadata": {"labels": {"backup": "daily"}, "annotations": {"team": "billing"}}}
    await cluster.client.patch(Secret, name, theirs, namespace=cluster.namespace)
    await cluster.client.patch(
        Secret, name, {"data": encode({"host": "elsewhere"})}, namespace=cluster.namespace
    )

    changes = await make_reconciler().reconcile(tenant, Handler.TIMER)

    assert changes == (SecretChange.CREDENTIALS_SECRET,)
    secret = await cluster.client.get(Secret, name, namespace=cluster.namespace)
    assert secret.metadata is not None
    assert (secret.metadata.labels or {})["backup"] == "daily"
    assert (secret.metadata.annotations or {})["team"] == "billing"
    assert decode(secret.data)["host"] != "elsewhere"


async def test_a_role_and_database_dropped_by_hand_come_back_migrated(
    cluster: Cluster, make_reconciler: ReconcilerFactory
) -> None:
    tenant = await ready_tenant(cluster, make_reconciler)
    slug, names = tenant.ref.slug, tenant_names(tenant.ref.slug)
    admin = await superuser()
    try:
        await admin.execute(f'DROP DATABASE "{names.database}" WITH (FORCE)')
        await admin.execute(f'DROP ROLE "{names.role}"')
    finally:
        await admin.close()

    changes = await make_reconciler().reconcile(tenant, Handler.TIMER)

    assert {Change.ROLE_CREATED, Change.DATABASE_CREATED} <= set(changes)
    credentials = await cluster.secret_data(credentials_secret_name(slug)) or {}
    tenant_db = await asyncpg.connect(credentials["url"], timeout=5)
    try:
        assert await tenant_db.fetchval("SELECT version_num FROM alembic_version") == tenant_head()
    finally:
        await tenant_db.close()


async def test_suspending_marks_the_registry_entry_suspended_and_back(
    cluster: Cluster, make_reconciler: ReconcilerFactory
) -> None:
    tenant = await ready_tenant(cluster, make_reconciler)
    slug = tenant.ref.slug

    suspended = await cluster.patch_tenant(slug, {"spec": {"suspended": True}})
    await make_reconciler().reconcile(suspended, Handler.UPDATE)
    entry = await registry_entry_of(cluster, slug)
    assert entry is not None
    assert entry.status is TenantStatus.SUSPENDED
    assert condition(await cluster.tenant(slug), ConditionType.READY) == (
        ConditionStatus.TRUE, "Suspended",
    )  # fmt: skip

    resumed = await cluster.patch_tenant(slug, {"spec": {"suspended": False}})
    await make_reconciler().reconcile(resumed, Handler.UPDATE)
    entry = await registry_entry_of(cluster, slug)
    assert entry is not None
    assert entry.status is TenantStatus.READY


async def test_a_tenant_behind_the_head_is_migrated_and_its_schema_version_reported(
    cluster: Cluster, make_reconciler: ReconcilerFactory
) -> None:
    tenant = await ready_tenant(cluster, make_reconciler)
    slug = tenant.ref.slug
    entry = await registry_entry_of(cluster, slug)
    assert entry is not None
    await downgrade_tenant(entry, "base")  # as if the image had brought a newer head

    await make_reconciler().reconcile(tenant, Handler.TIMER)

    tenant_db = await asyncpg.connect(asyncpg_dsn(entry.database_url.get_secret_value()), timeout=5)
    try:
        assert await tenant_db.fetchval("SELECT version_num FROM alembic_version") == tenant_head()
    finally:
        await tenant_db.close()
    assert (await cluster.tenant(slug)).status.schema_version == tenant_head()


async def test_retain_keeps_the_database_and_delete_drops_it(
    cluster: Cluster, make_reconciler: ReconcilerFactory
) -> None:
    kept = await ready_tenant(cluster, make_reconciler)
    dropped = await ready_tenant(cluster, make_reconciler, deletionPolicy="Delete")

    for tenant in (kept, dropped):
        await make_reconciler().delete(await cluster.tenant(tenant.ref.name))

    admin = await superuser()
    try:
        databases = {row["datname"] for row in await admin.fetch("SELECT datname FROM pg_database")}
    finally:
        await admin.close()
    assert tenant_names(kept.ref.slug).database in databases
    assert tenant_names(dropped.ref.slug).database not in databases
    registry = await cluster.secret_data(REGISTRY_SECRET)
    assert registry == {}
    assert "Retained" in {reason for _, reason, _ in await cluster.events(kept.ref.name)}
    assert "Dropped" in {reason for _, reason, _ in await cluster.events(dropped.ref.name)}


async def test_a_second_tenant_of_the_same_name_is_refused_and_touches_nothing(
    cluster: Cluster, make_reconciler: ReconcilerFactory
) -> None:
    first = await ready_tenant(cluster, make_reconciler)
    slug = first.ref.slug
    await make_reconciler().delete(await cluster.tenant(slug))  # Retain: the database stays
    await cluster.client.delete(TenantResource, slug, namespace=cluster.namespace)
    before = await catalog_versions(slug)
    second = await cluster.create_tenant(slug, deletionPolicy="Delete")

    with pytest.raises(ReconcileFailed) as refused:
        await make_reconciler().reconcile(second, Handler.CREATE)
    await make_reconciler().delete(await cluster.tenant(slug))

    assert refused.value.failure.reason == "OwnershipConflict"
    assert not refused.value.failure.temporary
    assert await catalog_versions(slug) == before  # neither adopted, changed nor dropped
    refused_status = await cluster.tenant(slug)
    assert refused_status.status.phase is Phase.DELETING
    reasons = {reason for _, reason, _ in await cluster.events(slug)}
    assert {"OwnershipConflict", "NotDropped"} <= reasons


async def test_an_unreachable_server_is_a_temporary_failure_with_backoff_in_the_status(
    cluster: Cluster, make_reconciler: ReconcilerFactory
) -> None:
    await cluster.put_secret("down", {"url": "postgresql://root@127.0.0.1:1/postgres"})
    tenant = await cluster.create_tenant(postgres={"serverSecretRef": {"name": "down"}})

    with pytest.raises(ReconcileFailed) as failed:
        await make_reconciler().reconcile(tenant, Handler.CREATE, retry=2)

    assert failed.value.failure.temporary
    assert failed.value.failure.retry_seconds == 4  # 1 s, doubled twice
    status = (await cluster.tenant(tenant.ref.name)).status
    assert status.phase is Phase.PROVISIONING
    ready = next(c for c in status.conditions if c.type is ConditionType.READY)
    assert (ready.status, ready.reason) == (ConditionStatus.FALSE, "ServerUnreachable")
    assert "retrying in 4s" in ready.message
    assert status.observed_generation is None  # not yet this generation's answer


async def test_a_permanent_failure_is_reported_once(
    cluster: Cluster, make_reconciler: ReconcilerFactory
) -> None:
    tenant = await cluster.create_tenant()
    reconciler = make_reconciler(default_server={"name": None})

    for _ in range(3):
        with pytest.raises(ReconcileFailed) as failed:
            await reconciler.reconcile(await cluster.tenant(tenant.ref.name), Handler.TIMER)

    assert (failed.value.failure.reason, failed.value.failure.temporary) == ("NoServer", False)
    warnings = [e for e in await cluster.events(tenant.ref.name) if e[0] == "Warning"]
    assert len(warnings) == 1
    status = (await cluster.tenant(tenant.ref.name)).status
    assert (status.phase, status.observed_generation) == (Phase.FAILED, tenant.generation)


@pytest.mark.parametrize(
    "url", ["postgresql://root:hunter2@127.0.0.1:port/postgres", "hunter2 is not a url"]
)
async def test_an_admin_url_that_does_not_parse_is_permanent_and_never_shown(
    cluster: Cluster, make_reconciler: ReconcilerFactory, url: str
) -> None:
    await cluster.put_secret("garbled", {"url": url})
    tenant = await cluster.create_tenant(postgres={"serverSecretRef": {"name": "garbled"}})

    with pytest.raises(ReconcileFailed) as failed:
        await make_reconciler().reconcile(tenant, Handler.CREATE)

    failure = failed.value.failure
    assert (failure.reason, failure.temporary) == ("InvalidServerUrl", False)
    events = await cluster.events(tenant.ref.name)
    assert all("hunter2" not in message for _, _, message in events)
    assert "hunter2" not in str(failed.value)


async def test_fifty_tenants_created_at_once_end_with_fifty_registry_keys(
    cluster: Cluster, make_reconciler: ReconcilerFactory
) -> None:
    tenants = await asyncio.gather(*(cluster.create_tenant() for _ in range(50)))
    reconciler = make_reconciler()

    outcomes = await asyncio.gather(
        *(reconciler.reconcile(t, Handler.CREATE) for t in tenants), return_exceptions=True
    )

    assert [o for o in outcomes if isinstance(o, BaseException)] == []
    registry = await cluster.secret_data(REGISTRY_SECRET) or {}
    assert sorted(registry) == sorted(entry_file_name(t.ref.slug) for t in tenants)
    for tenant in tenants:
        status = (await cluster.tenant(tenant.ref.name)).status
        assert status.phase is Phase.READY


async def test_the_credentials_secret_name_taken_by_someone_else_is_not_overwritten(
    cluster: Cluster, make_reconciler: ReconcilerFactory
) -> None:
    slug = unique_name("t")
    await cluster.put_secret(credentials_secret_name(slug), {"password": "theirs"})
    tenant = await cluster.create_tenant(slug)

    with pytest.raises(ReconcileFailed) as failed:
        await make_reconciler().reconcile(tenant, Handler.CREATE)

    assert failed.value.failure.reason == "SecretConflict"
    assert await cluster.secret_data(credentials_secret_name(slug)) == {"password": "theirs"}


async def scram_admin(cluster: ScramCluster) -> str:
    """A CREATEDB CREATEROLE admin that is not a superuser, as managed PostgreSQL gives."""
    name, password = f"admin_{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    connection = await asyncpg.connect(cluster.admin_url, timeout=5)
    try:
        await connection.execute(
            f"CREATE ROLE \"{name}\" LOGIN CREATEDB CREATEROLE PASSWORD '{password}'"
        )
    finally:
        await connection.close()
    return cluster.url(name, password, "postgres")


async def logs_in(url: str) -> bool:
    try:
        connection = await asyncpg.connect(url, timeout=5)
    except asyncpg.InvalidPasswordError:
        return False
    await connection.close()
    return True


async def test_rotation_on_a_non_superuser_admin_refuses_the_old_password_and_keeps_no_secret(
    cluster: Cluster,
    make_reconciler: ReconcilerFactory,
    scram_server: ScramCluster,
    capsys: pytest.CaptureFixture[str],
) -> None:
    admin = await scram_admin(scram_server)
    await cluster.put_secret("scram", {"url": admin})
    tenant = await ready_tenant(
        cluster,
        make_reconciler,
        deletionPolicy="Delete",
        postgres={"serverSecretRef": {"name": "scram"}},
    )
    slug = tenant.ref.slug
    old = await cluster.secret_data(credentials_secret_name(slug)) or {}

    rotating = await cluster.patch_tenant(
        slug, {"metadata": {"annotations": {ROTATE_ANNOTATION: "2026-12-02"}}}
    )
    changes = await make_reconciler().reconcile(rotating, Handler.UPDATE)

    new = await cluster.secret_data(credentials_secret_name(slug)) or {}
    entry = await registry_entry_of(cluster, slug)
    assert Change.PASSWORD_ROTATED in changes
    assert new["password"] != old["password"]
    assert not await logs_in(old["url"])
    assert await logs_in(new["url"])
    assert entry is not None
    assert make_url(entry.database_url.get_secret_value()).password == new["password"]
    rotated = await cluster.tenant(slug)
    assert rotated.status.credentials_rotation == "2026-12-02"
    assert await make_reconciler().reconcile(rotated, Handler.UPDATE) == ()  # once only

    await make_reconciler().delete(rotated)
    assert not await logs_in(new["url"])  # dropped (deletionPolicy Delete)
    shown = capsys.readouterr().out + str(await cluster.events(slug)) + str(rotated.status)
    for secret in (old["password"], new["password"], make_url(admin).password or "?"):
        assert secret not in shown
