"""End to end: the real operator process, the real service process, the real API server.

What is real here: `python -m berth_operator` runs as a separate process and logs in as a
ServiceAccount bound to exactly the Roles `python -m berth_operator rbac` prints, and RBAC
is enforced, so a missing rule shows as a 403 in its log (asserted absent); Tenants are
applied with `kubectl`, so the CRD's schema and CEL rules judge them; `python -m service
serve` reads the registry Secret from a directory that `SecretVolume` keeps in sync the way
the kubelet does (the `..data` swap); the tenant databases live on a throwaway PostgreSQL
with scram-sha-256 authentication, so a rotated password is really refused; the
controller-manager's garbage collector deletes the credentials Secrets through their
ownerReferences, and its namespace controller deletes a namespace. Nothing is faked.

One operator, one service and one PostgreSQL serve the whole module (`running_stack`); each
test makes Tenants of its own, with names never used before, so each passes or fails on its
own. Every test ends with `assert_clean`: the operator still runs, its log holds no 403, and
no credential it handled shows in its output, the service's or an Event.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import asyncpg
import httpx
import pytest
from berth_operator.crd import SERVER_IMMUTABLE_MESSAGE
from berth_operator.kube import encode
from berth_operator.metrics import LEASE_HELD, RECONCILES, Handler, Result
from berth_operator.resource import (
    FINALIZER,
    ROTATE_ANNOTATION,
    TENANT_NAME_MESSAGE,
    TENANT_NAME_RULE,
    ConditionStatus,
    ConditionType,
    DeletionPolicy,
    Phase,
)
from lightkube import AsyncClient
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Namespace, Secret
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import make_url

from service.core.tenancy import TenantSuspended
from service.tenants.migrate import tenant_head
from service.tenants.postgres import tenant_names
from service.tenants.registry import entry_file_name
from service.tenants.schemas import TenantEntry
from service.tenants.service import UnknownTenant
from tests.kube import ApiServer
from tests.operator.conftest import REGISTRY_SECRET
from tests.operator.e2e_support import Stack, run_kubectl, running_stack, unique, until
from tests.support import TEST_PASSWORD

pytestmark = pytest.mark.postgres

# A bad name is refused twice: by the schema's pattern and by the CEL rule's message.
NAME_REFUSALS = [f"metadata.name in body should match '{TENANT_NAME_RULE}'", TENANT_NAME_MESSAGE]
Labels = tuple[tuple[str, str], ...]
GC_SECONDS = 90  # the garbage collector takes 18-39 s here; leave it room
NAMESPACE_DELETION_SECONDS = 60


@pytest.fixture(scope="module")
async def stack(
    kube_server: ApiServer, kube_admin: AsyncClient, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Stack]:
    async with running_stack(kube_server, kube_admin, tmp_path_factory.mktemp("e2e")) as up:
        yield up


async def served_tenant(
    stack: Stack, prefix: str, namespace: str | None = None, **spec: Any
) -> str:
    """A Tenant applied with kubectl and reported Ready by the operator; its slug."""
    slug = unique(prefix)
    applied = await stack.apply(slug, namespace=namespace, **spec)
    assert applied.returncode == 0, applied.stderr
    await stack.ready(slug, namespace)
    return slug


def condition(body: dict[str, Any], kind: ConditionType) -> tuple[str, str]:
    found = next(c for c in body["status"]["conditions"] if c["type"] == kind)
    return found["status"], found["reason"]


def registry_entry(stack: Stack, slug: str) -> TenantEntry | None:
    """The tenant's entry as the service's pod sees it: in the mounted directory."""
    path = stack.volume.directory / entry_file_name(slug)
    return TenantEntry.model_validate_json(path.read_bytes()) if path.exists() else None


def registry_changes(stack: Stack) -> list[dict[str, Any]]:
    return [e for e in stack.service.log_events() if e.get("event") == "tenant_registry_changed"]


# -- creation -----------------------------------------------------------------------------


async def test_a_tenant_applied_with_kubectl_becomes_ready_and_is_served_by_the_service(
    stack: Stack,
) -> None:
    slug = unique("acme")
    names = tenant_names(slug)

    applied = await stack.apply(slug)
    body = await stack.ready(slug)

    assert f"tenant.berth.dev/{slug} created" in applied.stdout
    assert FINALIZER in body["metadata"]["finalizers"]
    assert body["status"]["phase"] == Phase.READY
    assert condition(body, ConditionType.READY) == (ConditionStatus.TRUE, "Registered")
    assert (body["status"]["database"], body["status"]["schemaVersion"]) == (
        names.database, tenant_head(),
    )  # fmt: skip
    shown = await run_kubectl(stack.server, "get", "tn", slug, "-n", stack.namespace)
    header, row = (line.split() for line in shown.stdout.strip().splitlines())
    assert header == ["NAME", "PHASE", "DATABASE", "SCHEMA", "READY", "AGE"]
    assert row[:5] == [slug, "Ready", names.database, str(tenant_head()), "True"]

    # An owner created with the service's CLI (which checks the mounted registry) logs in
    # and works in the tenant's own database.
    await until(lambda: _has_entry(stack, slug), f"{slug} in the mounted registry", 30)
    email = f"owner@{slug}.example.com"
    created = await stack.create_owner(slug, email)
    assert created.returncode == 0, created.stderr
    token = await stack.api.login(email, TEST_PASSWORD, tenant=slug)
    posted = await stack.api.create_article(token, "First post")
    assert posted.status_code == 201, posted.text
    article = posted.json()["slug"]
    read = await stack.api.article(token, article)
    assert read.status_code == 200, read.text
    assert read.json()["title"] == "First post"
    listed = await stack.api.articles(token)
    assert [item["slug"] for item in listed.json()["items"]] == [article]

    # The credentials Secret, owned by the Tenant, opens the tenant's database.
    credentials = await stack.credentials(slug)
    assert credentials is not None
    secret = await stack.admin.get(
        Secret, body["status"]["credentialsSecret"], namespace=stack.namespace
    )
    owners = secret.metadata.ownerReferences if secret.metadata else None
    assert [(o.kind, o.name, o.uid) for o in owners or []] == [
        ("Tenant", slug, body["metadata"]["uid"])
    ]
    tenant_db = await stack.connect_as_tenant(slug, credentials["password"])
    try:
        assert await tenant_db.fetchval("SELECT title FROM articles") == "First post"
    finally:
        await tenant_db.close()
    await stack.assert_clean()


async def _has_entry(stack: Stack, slug: str) -> bool:
    mounted = stack.volume.keys()
    return entry_file_name(slug) in mounted


async def test_the_operator_answers_its_liveness_probe_and_counts_reconciles(
    stack: Stack,
) -> None:
    await served_tenant(stack, "metered")
    created = (("handler", Handler.CREATE.value), ("result", Result.SUCCESS.value))

    async with httpx.AsyncClient(timeout=5) as client:
        live = await client.get(stack.liveness_url)

        async def counted() -> dict[tuple[str, Labels], float] | None:
            exported = await client.get(stack.metrics_url)
            assert exported.status_code == 200
            samples = {
                (sample.name, tuple(sorted(sample.labels.items()))): sample.value
                for family in text_string_to_metric_families(exported.text)
                for sample in family.samples
            }
            # Counted once the handler returns, a moment after the status said Ready.
            return samples if samples.get((RECONCILES, created), 0) >= 1 else None

        samples = await until(counted, f"{RECONCILES} counting a successful create", 10)

    assert live.status_code == 200
    assert samples[(LEASE_HELD, ())] == 1
    await stack.assert_clean()


# -- admission ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "spec", "flags", "refusals"),
    [
        pytest.param("Bad_Name", {}, (), NAME_REFUSALS, id="uppercase-and-underscore"),
        pytest.param("ab", {}, (), NAME_REFUSALS, id="too-short"),
        pytest.param(
            None, {"surprise": True}, ("--validate=strict",), ['unknown field "spec.surprise"'],
            id="unknown-field",
        ),
        pytest.param(
            None, {"deletionPolicy": "Nope"}, (),
            ['spec.deletionPolicy: Unsupported value: "Nope"'],
            id="unknown-deletion-policy",
        ),
        pytest.param(
            None, {"postgres": {"connectionLimit": 0}}, (),
            ["spec.postgres.connectionLimit in body should be greater than or equal to 1"],
            id="connection-limit-zero",
        ),
    ],
)  # fmt: skip
async def test_a_bad_name_or_field_is_refused_at_admission(
    stack: Stack,
    name: str | None,
    spec: dict[str, Any],
    flags: tuple[str, ...],
    refusals: list[str],
) -> None:
    name = name or unique("refused")

    applied = await stack.apply(name, *flags, **spec)

    assert applied.returncode != 0
    for refusal in refusals:
        assert refusal in applied.stderr
    listed = await run_kubectl(stack.server, "get", "tn", "-n", stack.namespace, "-o", "name")
    assert f"/{name}\n" not in listed.stdout
    await stack.assert_clean()


async def test_the_server_of_a_tenant_cannot_be_changed(stack: Stack) -> None:
    own_server = unique("pg")
    await stack.admin.create(
        Secret(
            metadata=ObjectMeta(name=own_server, namespace=stack.namespace),
            data=encode({"url": stack.postgres.admin_url}),
        )
    )
    slug = await served_tenant(stack, "pinned", postgres={"serverSecretRef": {"name": own_server}})
    plain = await served_tenant(stack, "plain")

    moved = await stack.apply(slug, postgres={"serverSecretRef": {"name": "elsewhere"}})
    dropped = await stack.apply(slug, postgres={})
    added = await stack.apply(plain, postgres={"serverSecretRef": {"name": own_server}})

    for refused in (moved, dropped, added):
        assert refused.returncode != 0
        assert SERVER_IMMUTABLE_MESSAGE in refused.stderr
    body = await stack.tenant(slug)
    assert body is not None
    assert body["spec"]["postgres"]["serverSecretRef"]["name"] == own_server
    assert body["status"]["server"]["secretName"] == own_server
    await stack.assert_clean()


async def kubectl_tenant(stack: Stack, slug: str, verb: str, *args: str) -> None:
    """`kubectl <verb> tn <slug> -n <namespace> <args>`, as a user would type it."""
    await run_kubectl(stack.server, verb, "tn", slug, "-n", stack.namespace, *args)


def suspend(suspended: bool) -> str:
    return json.dumps({"spec": {"suspended": suspended}})


async def rotate(stack: Stack, slug: str, request: str) -> None:
    await kubectl_tenant(stack, slug, "annotate", f"{ROTATE_ANNOTATION}={request}", "--overwrite")


# -- suspension ---------------------------------------------------------------------------


async def test_a_suspended_tenant_is_refused_with_403_and_served_again_when_resumed(
    stack: Stack,
) -> None:
    slug = await served_tenant(stack, "paused")
    article = await stack.served(slug, "Before the pause")

    await kubectl_tenant(stack, slug, "patch", "--type=merge", "-p", suspend(True))
    suspended = await stack.ready(slug)
    refused = await stack.answers(slug, article, 403)

    assert condition(suspended, ConditionType.READY) == (ConditionStatus.TRUE, "Suspended")
    assert refused["message"] == TenantSuspended.message

    await kubectl_tenant(stack, slug, "patch", "--type=merge", "-p", suspend(False))
    resumed = await stack.ready(slug)
    again = await stack.answers(slug, article, 200)

    assert condition(resumed, ConditionType.READY) == (ConditionStatus.TRUE, "Registered")
    assert again["title"] == "Before the pause"
    await stack.assert_clean()


# -- rotation -----------------------------------------------------------------------------


async def test_rotating_credentials_refuses_the_old_password_and_the_service_follows(
    stack: Stack,
) -> None:
    slug = await served_tenant(stack, "rotated")
    article = await stack.served(slug, "Before the rotation")
    old = (await stack.credentials(slug) or {})["password"]
    changes_before = len(registry_changes(stack))
    request = unique("rotation")

    await rotate(stack, slug, request)

    async def rotated() -> str | None:
        body = await stack.tenant(slug) or {}
        password = (await stack.credentials(slug) or {}).get("password")
        applied = (body.get("status") or {}).get("credentialsRotation") == request
        return password if applied and password != old else None

    new = await until(rotated, "a new password in the credentials Secret", 30)
    with pytest.raises(asyncpg.InvalidPasswordError):
        await stack.connect_as_tenant(slug, old)
    tenant_db = await stack.connect_as_tenant(slug, new)
    try:
        assert await tenant_db.fetchval("SELECT current_user") == tenant_names(slug).role
    finally:
        await tenant_db.close()

    # The volume brings the new entry; the service swaps the tenant's engine...
    async def mounted() -> bool:
        entry = registry_entry(stack, slug)
        url = make_url(entry.database_url.get_secret_value()) if entry else None
        return url is not None and url.password == new

    await until(mounted, "the new password in the mounted registry", 30)

    async def noticed() -> bool:
        return any(slug in e.get("changed", []) for e in registry_changes(stack)[changes_before:])

    await until(noticed, "the service noticing the changed entry", 30)
    # ...and once no session opened before the rotation is left, it still works: every
    # connection from here on logged in with the new password.
    await stack.disconnect_tenant(slug)
    await stack.served(slug, "After the rotation", timeout=10)
    kept = await stack.answers(slug, article, 200, timeout=10)

    assert kept["title"] == "Before the rotation"
    await until(
        lambda: _has_reason(stack, slug, "CredentialsRotated"), "a CredentialsRotated Event", 10
    )
    await stack.assert_clean()


async def _has_reason(stack: Stack, slug: str, reason: str) -> bool:
    return reason in await stack.reasons(slug)


# -- deletion -----------------------------------------------------------------------------


async def test_deleting_tenants_stops_serving_them_and_keeps_or_drops_the_database_by_policy(
    stack: Stack,
) -> None:
    kept = await served_tenant(stack, "kept")
    dropped = await served_tenant(stack, "dropped", deletionPolicy=DeletionPolicy.DELETE.value)
    articles = {slug: await stack.served(slug, f"In {slug}") for slug in (kept, dropped)}
    for slug in (kept, dropped):
        assert await stack.credentials(slug) is not None

    await run_kubectl(
        stack.server, "delete", "tn", kept, dropped, "-n", stack.namespace, "--wait=false"
    )

    for slug, article in articles.items():
        refused = await stack.answers(slug, article, 404)
        assert refused["message"] == UnknownTenant.message
    for slug in (kept, dropped):
        await until(partial(_gone, stack, slug), f"Tenant {slug} released and gone", 30)
    assert await stack.catalog(kept) == (True, True)
    assert await stack.catalog(dropped) == (False, False)
    assert "Retained" in await stack.reasons(kept)
    assert "Dropped" in await stack.reasons(dropped)
    registry = await stack.secret_data(REGISTRY_SECRET) or {}
    assert not {entry_file_name(kept), entry_file_name(dropped)} & set(registry)
    for slug in (kept, dropped):
        await until(
            partial(_credentials_gone, stack, slug),
            f"the credentials Secret of {slug} garbage-collected",
            GC_SECONDS,
        )
    await stack.assert_clean()


async def _gone(stack: Stack, slug: str) -> bool:
    return await stack.tenant(slug) is None


async def _credentials_gone(stack: Stack, slug: str) -> bool:
    return await stack.credentials(slug) is None


async def test_deleting_a_namespace_with_tenants_in_it_completes(stack: Stack) -> None:
    doomed = stack.doomed_namespace
    kept = await served_tenant(stack, "kept", namespace=doomed)
    dropped = await served_tenant(
        stack, "dropped", namespace=doomed, deletionPolicy=DeletionPolicy.DELETE.value
    )
    for slug in (kept, dropped):
        assert await stack.credentials(slug, doomed) is not None
    await stack.assert_clean()  # its Events go with it

    await run_kubectl(stack.server, "delete", "namespace", doomed, "--wait=false")

    async def deleted() -> bool:
        names = [n.metadata.name async for n in stack.admin.list(Namespace) if n.metadata]
        return doomed not in names

    await until(deleted, f"namespace {doomed} gone", NAMESPACE_DELETION_SECONDS)
    # The operator's deletion handler ran for each (it alone releases the finalizer).
    assert await stack.catalog(kept) == (True, True)
    assert await stack.catalog(dropped) == (False, False)
    await stack.assert_clean()


# -- secrets ------------------------------------------------------------------------------


async def test_no_password_reaches_the_operator_log_or_an_event(stack: Stack) -> None:
    """Through a tenant's whole life: created, rotated twice, deleted and dropped."""
    slug = await served_tenant(stack, "secretive", deletionPolicy=DeletionPolicy.DELETE.value)
    passwords = {(await stack.credentials(slug) or {})["password"]}
    for turn in ("1", "2"):
        await rotate(stack, slug, turn)

        async def rotated(turn: str = turn) -> str | None:
            body = await stack.tenant(slug) or {}
            password = (await stack.credentials(slug) or {}).get("password")
            done = (body.get("status") or {}).get("credentialsRotation") == turn
            return password if done and password not in passwords else None

        passwords.add(await until(rotated, f"rotation {turn}", 30))
    await run_kubectl(stack.server, "delete", "tn", slug, "-n", stack.namespace, "--wait=false")
    await until(lambda: _gone(stack, slug), f"Tenant {slug} gone", 30)

    assert len(passwords) == 3
    assert passwords <= stack.secrets
    reasons = await stack.reasons(slug)
    assert {"Provisioned", "CredentialsRotated", "Dropped"} <= reasons
    await stack.assert_clean()
