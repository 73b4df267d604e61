"""Reconciliation of one Tenant, framework-free: kopf calls it, tests call it directly.

Create, update, resume and the drift timer all run `reconcile`: find the tenant's server
and password, ensure the role and database (`service.tenants.postgres`), migrate to head as
the tenant's role (`service.tenants.migrate`), with spec.mongo.enabled ensure its MongoDB
user and database (`service.tenants.mongo_users`; disabled: clean up what was there), write
the credentials Secret, then the registry key, `ready` last. Each step looks before it
writes, so a second run on a healthy tenant changes nothing, a run after a crash at any
point finishes the job, and a run after someone changed things by hand puts them back and
says so.

The passwords (PostgreSQL and MongoDB) live in the tenant's Secret (and the registry entry)
and are reused; only the rotation annotation makes new ones. Every message that reaches a
status, an Event or a log line is scrubbed of the passwords this run handled.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from urllib.parse import unquote, urlsplit

from sqlalchemy import make_url
from sqlalchemy.exc import ArgumentError

from berth_operator import status as statuses
from berth_operator.config import OperatorSettings, ServerSecret, operator_env_name
from berth_operator.errors import (
    InvalidServerUrl,
    NoMongoServer,
    NoServer,
    ReconcileFailed,
    ServerSecretMissing,
    classify,
    scrub,
)
from berth_operator.kube import Kube
from berth_operator.metrics import Handler, OperatorMetrics
from berth_operator.registry import Registries
from berth_operator.render import (
    credentials_data,
    credentials_secret_name,
    registered_mongo_password,
    registered_password,
    registry_entry,
)
from berth_operator.resource import (
    DeletionPolicy,
    InvalidTenant,
    MongoStatus,
    Phase,
    SecretKeyRef,
    ServerRef,
    Tenant,
    TenantStatus,
)
from berth_operator.status import Failure, Step
from service.core.logging import get_logger
from service.tenants.migrate import upgrade_tenant
from service.tenants.mongo_users import (
    DesiredMongoUser,
    InvalidMongoUrl,
    MongoChange,
    MongoNames,
    MongoProvisioned,
    check_mongo_url,
    drop_mongo,
    ensure_mongo_user,
    mongo_names,
)
from service.tenants.postgres import (
    UNLIMITED_CONNECTIONS,
    Change,
    DesiredTenant,
    Owner,
    OwnershipConflict,
    drop_postgres,
    ensure_postgres,
    new_password,
    tenant_names,
)
from service.tenants.registry import entry_file_name

log = get_logger(__name__)


class SecretChange(StrEnum):
    """What reconciliation changed on the Kubernetes side."""

    CREDENTIALS_SECRET = "credentials Secret written"  # noqa: S105 - a message
    REGISTRY_ENTRY = "registry entry written"


AnyChange = Change | MongoChange | SecretChange
# Recovers a password from the registry entry's value (None: not there, or not ours).
Recover = Callable[[str | None], str | None]
# Called after each step that completed (tests inject crashes here).
StepHook = Callable[[Step], Awaitable[None]]


@dataclass
class _Run:
    """One run: the step it is in, the status it last wrote, the secrets it must not show."""

    tenant: Tenant
    step: Step
    status: TenantStatus
    secrets: set[str] = field(default_factory=set)

    def keep_secret(self, *values: str | None) -> None:
        self.secrets.update(value for value in values if value)


@dataclass(frozen=True)
class _Password:
    value: str
    is_new: bool


def _url_secrets(url: str) -> tuple[str, ...]:
    """An admin URL and its password, as written (URL-quoted) and as sent: none may show."""
    password = urlsplit(url).password or ""
    return (url, password, unquote(password))


def _choose_server(
    namespace: str, wanted: SecretKeyRef | None, recorded: ServerRef | None, field_name: str
) -> ServerRef | None:
    """The server the spec names (refused if another one is recorded), else the recorded."""
    if wanted is None:
        return recorded
    chosen = ServerRef(secret_namespace=namespace, secret_name=wanted.name, secret_key=wanted.key)
    if recorded is not None and recorded != chosen:
        raise InvalidTenant(
            f"{field_name} is immutable: the tenant lives on the server "
            f"of Secret {recorded.secret_namespace}/{recorded.secret_name}"
        )
    return chosen


def _default_server(default: ServerSecret, namespace: str) -> ServerRef | None:
    if default.name is None:
        return None
    return ServerRef(secret_namespace=namespace, secret_name=default.name, secret_key=default.key)


@dataclass
class Reconciler:
    """Reconciles Tenants; one per operator process."""

    kube: Kube
    registries: Registries
    settings: OperatorSettings
    metrics: OperatorMetrics
    after_step: StepHook | None = None
    _locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    _slots: asyncio.Semaphore = field(init=False)

    def __post_init__(self) -> None:
        # Bounds the database work in flight (each run holds up to three connections).
        self._slots = asyncio.Semaphore(self.settings.max_concurrent_reconciles)

    def retry_seconds(self, retry: int) -> float:
        """Backoff for the next attempt after `retry` failed ones."""
        delay = self.settings.retry_first_seconds * float(2 ** min(retry, 16))
        return min(delay, self.settings.retry_max_seconds)

    def _lock(self, uid: str) -> asyncio.Lock:
        # The timer and the change handlers of one Tenant run concurrently in kopf.
        return self._locks.setdefault(uid, asyncio.Lock())

    # -- the run's bookkeeping ------------------------------------------------------------

    async def _write_status(self, run: _Run, new: TenantStatus) -> None:
        if new != run.status:
            await self.kube.patch_status(run.tenant.ref, new)
            run.status = new
        if new.phase is not None:
            self.metrics.set_phase(run.tenant.ref.uid, new.phase)

    async def _done(self, run: _Run, step: Step) -> None:
        if self.after_step is not None:
            await self.after_step(step)

    def _failure(self, run: _Run, exc: BaseException, retry: int) -> Failure:
        reason, message, temporary = classify(run.step, exc)
        return Failure(
            step=run.step,
            reason=reason,
            message=scrub(message, run.secrets),
            temporary=temporary,
            retry_seconds=self.retry_seconds(retry) if temporary else None,
        )

    async def _report(self, run: _Run, failure: Failure, new: TenantStatus) -> None:
        ref = run.tenant.ref
        log.warning(
            "tenant_reconcile_failed",
            tenant=ref.name,
            namespace=ref.namespace,
            step=failure.step.value,
            reason=failure.reason,
            error=failure.text,
            temporary=failure.temporary,
        )
        # Compared with what the status said before this run: one Event per new failure.
        if statuses.is_news(run.tenant.status, failure):
            await self.kube.event(ref, failure.reason, failure.text, warning=True)
        await self._write_status(run, new)

    # -- create, update, resume, timer ----------------------------------------------------

    async def reconcile(
        self, tenant: Tenant, handler: Handler, *, retry: int = 0
    ) -> tuple[AnyChange, ...]:
        """Bring the tenant to Ready; returns what had to change (nothing when healthy)."""
        run = _Run(tenant=tenant, step=Step.SERVER, status=tenant.status)
        async with self._lock(tenant.ref.uid):
            started = time.perf_counter()
            try:
                return await self._reconcile(run, handler)
            except Exception as exc:
                failure = self._failure(run, exc, retry)
                new = statuses.failed(
                    run.status,
                    failure,
                    generation=tenant.generation,
                    mongo=tenant.spec.mongo.enabled,
                )
                await self._report(run, failure, new)
                raise ReconcileFailed(failure) from None
            finally:
                self.metrics.duration.labels(handler.value).observe(time.perf_counter() - started)

    def server_of(self, tenant: Tenant) -> ServerRef:
        """Where the tenant lives: as first provisioned; the spec may not move it."""
        chosen = _choose_server(
            tenant.ref.namespace,
            tenant.spec.postgres.server_secret_ref,
            tenant.status.server,
            "spec.postgres.serverSecretRef",
        ) or _default_server(self.settings.default_server, self.settings.default_server_namespace)
        if chosen is None:
            raise NoServer(
                "no PostgreSQL server: set spec.postgres.serverSecretRef, or the operator's "
                f"{operator_env_name('default_server', 'name')}"
            )
        return chosen

    def mongo_server_of(self, tenant: Tenant) -> ServerRef:
        """The tenant's MongoDB server: as first provisioned while mongo stays enabled."""
        recorded = tenant.status.mongo.server if tenant.status.mongo else None
        chosen = _choose_server(
            tenant.ref.namespace,
            tenant.spec.mongo.server_secret_ref,
            recorded,
            "spec.mongo.serverSecretRef (while spec.mongo.enabled)",
        ) or _default_server(
            self.settings.default_mongo_server, self.settings.default_mongo_server_namespace
        )
        if chosen is None:
            raise NoMongoServer(
                "spec.mongo.enabled but no MongoDB server: set spec.mongo.serverSecretRef, or "
                f"the operator's {operator_env_name('default_mongo_server', 'name')}"
            )
        return chosen

    @staticmethod
    def mongo_names_of(tenant: Tenant) -> MongoNames:
        """The tenant's MongoDB user and database; the database may not move while enabled."""
        names = mongo_names(tenant.ref.slug, tenant.spec.mongo.database)
        recorded = tenant.status.mongo
        if recorded is not None and recorded.database != names.database:
            raise InvalidTenant(
                f"spec.mongo.database cannot change while spec.mongo.enabled: the tenant's "
                f"documents are in {recorded.database} (disable mongo first; deletionPolicy "
                "decides what happens to them)"
            )
        return names

    async def _server_secret(self, server: ServerRef) -> str:
        value = await self.kube.secret_value(
            server.secret_namespace, server.secret_name, server.secret_key
        )
        if not value:
            raise ServerSecretMissing(
                f"Secret {server.secret_namespace}/{server.secret_name} or its key "
                f"{server.secret_key!r} is missing"
            )
        return value

    async def mongo_admin_url(self, server: ServerRef) -> str:
        value = await self._server_secret(server)
        try:
            return check_mongo_url(value)
        except InvalidMongoUrl:
            raise InvalidMongoUrl(
                f"Secret {server.secret_namespace}/{server.secret_name} key "
                f"{server.secret_key!r} does not hold a MongoDB URL"
            ) from None

    async def admin_url(self, server: ServerRef) -> str:
        value = await self._server_secret(server)
        try:
            parsed = make_url(value)
            parsed.port  # noqa: B018 - a bad port raises only when read
        except (ArgumentError, ValueError):
            raise InvalidServerUrl(
                f"Secret {server.secret_namespace}/{server.secret_name} key "
                f"{server.secret_key!r} does not hold a PostgreSQL URL"
            ) from None
        return value

    async def _password(
        self, run: _Run, *, rotating: bool, key: str, recover: Recover
    ) -> _Password:
        """The tenant's Secret's `key`, else the registry entry's password, else a new one."""
        ref = run.tenant.ref
        if rotating:
            return _Password(new_password(), is_new=True)
        current = await self.kube.credentials(ref, credentials_secret_name(ref.slug))
        if current and current.get(key):
            return _Password(current[key], is_new=False)
        registered = await self.registries.of(ref.namespace).value(ref.slug)
        recovered = recover(registered)
        if recovered:
            return _Password(recovered, is_new=False)
        return _Password(new_password(), is_new=True)

    async def _reconcile(self, run: _Run, handler: Handler) -> tuple[AnyChange, ...]:
        tenant, ref = run.tenant, run.tenant.ref
        if tenant.problem is not None:
            raise InvalidTenant(tenant.problem)
        server = self.server_of(tenant)
        admin_url = await self.admin_url(server)
        run.keep_secret(admin_url, make_url(admin_url).password)
        names = tenant_names(ref.slug)
        if run.status.server is None:
            first = statuses.provisioning(
                run.status, server, generation=tenant.generation, mongo=tenant.spec.mongo.enabled
            )
            await self._write_status(run, first)
        await self._done(run, Step.SERVER)

        run.step = Step.DATABASE
        # A Tenant created with the annotation gets its first password, not a rotation.
        rotating = (
            bool(tenant.rotation_request)
            and tenant.rotation_request != tenant.status.credentials_rotation
            and tenant.status.credentials_secret is not None
        )
        password = await self._password(
            run,
            rotating=rotating,
            key="password",
            recover=lambda entry: registered_password(entry, names),
        )
        run.keep_secret(password.value)
        desired = DesiredTenant(
            slug=ref.slug,
            password=password.value,
            owner=Owner.tenant_resource(ref.uid),
            connection_limit=tenant.spec.postgres.connection_limit or UNLIMITED_CONNECTIONS,
        )
        async with self._slots:
            # A new password is set even on an existing role: nobody else knows it.
            provisioned = await ensure_postgres(admin_url, desired, rotate=password.is_new)
        await self._done(run, Step.DATABASE)

        run.step = Step.MIGRATIONS
        async with self._slots:
            revision = await upgrade_tenant(registry_entry(tenant, provisioned.database_url, None))
        await self._done(run, Step.MIGRATIONS)

        run.step = Step.MONGO
        mongo = await self._mongo(run, rotating=rotating)
        await self._done(run, Step.MONGO)

        run.step = Step.CREDENTIALS
        data = credentials_data(admin_url, names, password.value, mongo)
        secret_written = await self.kube.write_credentials(
            ref, credentials_secret_name(ref.slug), data
        )
        await self._done(run, Step.CREDENTIALS)

        run.step = Step.REGISTRY
        entry = registry_entry(tenant, provisioned.database_url, revision, mongo)
        registered = await self.registries.of(ref.namespace).put(entry)
        await self._done(run, Step.REGISTRY)

        changes: list[AnyChange] = [*provisioned.changes, *(mongo.changes if mongo else ())]
        changes += [SecretChange.CREDENTIALS_SECRET] if secret_written else []
        changes += [SecretChange.REGISTRY_ENTRY] if registered else []
        done = statuses.Provisioned(
            database=names.database,
            schema_version=revision,
            credentials_secret=credentials_secret_name(ref.slug),
            server=server,
            rotation=tenant.rotation_request,
            suspended=tenant.spec.suspended,
            mongo=run.status.mongo,
        )
        await self._write_status(
            run, statuses.ready(run.status, done, generation=tenant.generation)
        )
        await self._announce(tenant, handler, changes, revision=revision, rotated=rotating)
        return tuple(changes)

    async def _mongo(self, run: _Run, *, rotating: bool) -> MongoProvisioned | None:
        """The tenant's MongoDB user, ensured; None (after cleaning up) when mongo is off."""
        tenant = run.tenant
        if not tenant.spec.mongo.enabled:
            await self._mongo_disabled(run)
            return None
        server, names = self.mongo_server_of(tenant), self.mongo_names_of(tenant)
        admin_url = await self.mongo_admin_url(server)
        run.keep_secret(*_url_secrets(admin_url))
        password = await self._password(
            run,
            rotating=rotating,
            key="mongo_password",
            recover=lambda entry: registered_mongo_password(entry, names),
        )
        run.keep_secret(password.value)
        recorded = MongoStatus(server=server, database=names.database, user=names.user)
        await self._write_status(run, statuses.with_mongo(run.status, recorded))
        desired = DesiredMongoUser(names, password.value, Owner.tenant_resource(tenant.ref.uid))
        async with self._slots:
            # A new password is set even on an existing user: nobody else knows it.
            return await ensure_mongo_user(admin_url, desired, rotate=password.is_new)

    async def _mongo_disabled(self, run: _Run) -> None:
        """Mongo turned off: release what was provisioned (as the deletionPolicy says)."""
        tenant, recorded = run.tenant, run.status.mongo
        if recorded is None:
            return
        if tenant.skips_cleanup:
            kept = (
                f"MongoDB user {recorded.user} and database {recorded.database} left (skip-cleanup)"
            )
            reason, message, warning = "CleanupSkipped", kept, True
        else:
            reason, message, warning = await self._release_mongo(run, recorded)
        await self._mongo_released(tenant, reason, message, warning=warning)
        await self._write_status(run, statuses.with_mongo(run.status, None))

    async def _release_mongo(self, run: _Run, recorded: MongoStatus) -> tuple[str, str, bool]:
        """Drop the user and, under deletionPolicy Delete, the database: (reason, message,
        warning). What cannot be dropped is kept and said (retrying would not help)."""
        names = MongoNames(user=recorded.user, database=recorded.database)
        keep_data = run.tenant.spec.deletion_policy is DeletionPolicy.RETAIN
        run.step = Step.MONGO
        try:
            admin_url = await self.mongo_admin_url(recorded.server)
        except (ServerSecretMissing, InvalidMongoUrl) as exc:
            kept = f"{exc}; MongoDB user {names.user} and database {names.database} kept"
            return "MongoNotDropped", kept, True
        run.keep_secret(*_url_secrets(admin_url))
        owner = Owner.tenant_resource(run.tenant.ref.uid)
        try:
            dropped = await drop_mongo(admin_url, names, owner, drop_database=not keep_data)
        except OwnershipConflict as exc:
            return "MongoNotDropped", f"{exc}; left to its owner", True
        what = " and ".join(dropped) or "nothing (already gone)"
        kept = f"; database {names.database} kept (deletionPolicy Retain)" if keep_data else ""
        return "MongoDropped", f"dropped {what}{kept}", False

    async def _announce(
        self,
        tenant: Tenant,
        handler: Handler,
        changes: list[AnyChange],
        *,
        revision: str | None,
        rotated: bool,
    ) -> None:
        """Events and log lines for what a successful run changed."""
        ref = tenant.ref
        migrated = revision != tenant.status.schema_version
        expected: set[AnyChange] = set()
        if migrated:
            expected.add(SecretChange.REGISTRY_ENTRY)
            before = tenant.status.schema_version or "none"
            message = f"schema {before} -> {revision or 'base'}"
            await self.kube.event(ref, "Migrated", message, warning=False)
        if rotated:
            expected.update({Change.PASSWORD_ROTATED, SecretChange.CREDENTIALS_SECRET})
            expected.update({MongoChange.MONGO_PASSWORD_ROTATED, SecretChange.REGISTRY_ENTRY})
            mongo_user = " and the MongoDB user" if tenant.spec.mongo.enabled else ""
            message = f"new passwords set on the role{mongo_user} and in both Secrets"
            log.info("tenant_credentials_rotated", tenant=ref.name, namespace=ref.namespace)
            await self.kube.event(ref, "CredentialsRotated", message, warning=False)
        was_ready = tenant.status.phase is Phase.READY
        changed = [change for change in changes if change not in expected]
        labels = [change.name.lower() for change in changed]
        if changed and was_ready and handler in (Handler.TIMER, Handler.RESUME):
            for label in labels:
                self.metrics.drift_repairs.labels(label).inc()
            log.warning(
                "tenant_drift_repaired", tenant=ref.name, namespace=ref.namespace, repairs=labels
            )
            message = "put back: " + "; ".join(changed)
            await self.kube.event(ref, "DriftRepaired", message, warning=True)
        elif changed:
            log.info("tenant_reconciled", tenant=ref.name, namespace=ref.namespace, changes=labels)
            reason = "Reconciled" if was_ready else "Provisioned"
            await self.kube.event(ref, reason, "; ".join(changed), warning=False)
        if not was_ready:
            message = f"tenant {ref.name} is ready (schema {revision or 'base'})"
            await self.kube.event(ref, "Ready", message, warning=False)

    # -- deletion ------------------------------------------------------------------------

    async def delete(self, tenant: Tenant, *, retry: int = 0) -> None:
        """Remove the registry key, then keep or drop the database by policy."""
        run = _Run(tenant=tenant, step=Step.REGISTRY, status=tenant.status)
        async with self._lock(tenant.ref.uid):
            started = time.perf_counter()
            try:
                await self._delete(run)
            except Exception as exc:
                failure = self._failure(run, exc, retry)
                new = statuses.deleting(
                    run.status, failure.text, generation=tenant.generation, reason=failure.reason
                )
                await self._report(run, failure, new)
                raise ReconcileFailed(failure) from None
            finally:
                elapsed = time.perf_counter() - started
                self.metrics.duration.labels(Handler.DELETE.value).observe(elapsed)
        self.metrics.forget(tenant.ref.uid)
        self._locks.pop(tenant.ref.uid, None)

    async def _delete(self, run: _Run) -> None:
        tenant, ref = run.tenant, run.tenant.ref
        removing = f"removing {entry_file_name(ref.slug)} from the registry"
        await self._write_status(
            run, statuses.deleting(run.status, removing, generation=tenant.generation)
        )
        await self.registries.of(ref.namespace).remove(ref.slug)
        names = tenant_names(ref.slug)
        server = tenant.status.server
        if tenant.skips_cleanup:
            mongo = " and its MongoDB user and database" if tenant.status.mongo else ""
            kept = f"database and role {names.database}{mongo} left as they are (skip-cleanup)"
            await self._released(tenant, "CleanupSkipped", kept, warning=True)
            return
        if tenant.status.mongo is not None:
            reason, message, warning = await self._release_mongo(run, tenant.status.mongo)
            await self._mongo_released(tenant, reason, message, warning=warning)
        if server is None:
            await self._released(tenant, "Deleted", "nothing had been provisioned", warning=False)
            return
        where = f"the server of Secret {server.secret_namespace}/{server.secret_name}"
        if tenant.spec.deletion_policy is DeletionPolicy.RETAIN:
            kept = f"database and role {names.database} kept on {where} (deletionPolicy Retain)"
            await self._released(tenant, "Retained", kept, warning=False)
            return
        run.step = Step.DATABASE
        try:
            admin_url = await self.admin_url(server)
        except ServerSecretMissing as exc:
            # Retrying cannot help (and would wedge a namespace deletion): keep, and say so.
            kept = f"{exc}; database and role {names.database} kept"
            await self._released(tenant, "NotDropped", kept, warning=True)
            return
        run.keep_secret(admin_url, make_url(admin_url).password)
        try:
            dropped = await drop_postgres(admin_url, ref.slug, Owner.tenant_resource(ref.uid))
        except OwnershipConflict as exc:
            await self._released(tenant, "NotDropped", f"{exc}; left to its owner", warning=True)
            return
        what = " and ".join(dropped) or "nothing (already gone)"
        await self._released(tenant, "Dropped", f"dropped {what} from {where}", warning=False)

    async def _mongo_released(
        self, tenant: Tenant, reason: str, message: str, *, warning: bool
    ) -> None:
        ref = tenant.ref
        log.info(
            "tenant_mongo_released",
            tenant=ref.name,
            namespace=ref.namespace,
            outcome=reason,
            detail=message,
        )
        await self.kube.event(ref, reason, message, warning=warning)

    async def _released(self, tenant: Tenant, reason: str, message: str, *, warning: bool) -> None:
        ref = tenant.ref
        log.info(
            "tenant_deleted",
            tenant=ref.name,
            namespace=ref.namespace,
            outcome=reason,
            detail=message,
        )
        await self.kube.event(ref, reason, message, warning=warning)
