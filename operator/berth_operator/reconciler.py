"""Reconciliation of one Tenant, framework-free: kopf calls it, tests call it directly.

Create, update, resume and the drift timer all run `reconcile`: find the tenant's server
and password, ensure the role and database (`service.tenants.postgres`), migrate to head as
the tenant's role (`service.tenants.migrate`), write the credentials Secret, then the
registry key, `ready` last. Each step looks before it writes, so a second run on a healthy
tenant changes nothing, a run after a crash at any point finishes the job, and a run after
someone changed things by hand puts them back and says so.

The password lives in the tenant's Secret (and the registry entry) and is reused; only the
rotation annotation makes a new one. Every message that reaches a status, an Event or a log
line is scrubbed of the passwords this run handled.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum

from sqlalchemy import make_url
from sqlalchemy.exc import ArgumentError

from berth_operator import status as statuses
from berth_operator.config import OperatorSettings, operator_env_name
from berth_operator.errors import (
    InvalidServerUrl,
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
    registered_password,
    registry_entry,
)
from berth_operator.resource import (
    DeletionPolicy,
    InvalidTenant,
    Phase,
    ServerRef,
    Tenant,
    TenantStatus,
)
from berth_operator.status import Failure, Step
from service.core.logging import get_logger
from service.tenants.migrate import upgrade_tenant
from service.tenants.postgres import (
    UNLIMITED_CONNECTIONS,
    Change,
    DesiredTenant,
    Owner,
    OwnershipConflict,
    TenantNames,
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


AnyChange = Change | SecretChange
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
                new = statuses.failed(run.status, failure, generation=tenant.generation)
                await self._report(run, failure, new)
                raise ReconcileFailed(failure) from None
            finally:
                self.metrics.duration.labels(handler.value).observe(time.perf_counter() - started)

    def server_of(self, tenant: Tenant) -> ServerRef:
        """Where the tenant lives: as first provisioned; the spec may not move it."""
        wanted = tenant.spec.postgres.server_secret_ref
        recorded = tenant.status.server
        if wanted is not None:
            chosen = ServerRef(
                secret_namespace=tenant.ref.namespace,
                secret_name=wanted.name,
                secret_key=wanted.key,
            )
            if recorded is not None and recorded != chosen:
                raise InvalidTenant(
                    "spec.postgres.serverSecretRef is immutable: the tenant lives on the server "
                    f"of Secret {recorded.secret_namespace}/{recorded.secret_name}"
                )
            return chosen
        if recorded is not None:
            return recorded
        default = self.settings.default_server
        if default.name is None:
            raise NoServer(
                "no PostgreSQL server: set spec.postgres.serverSecretRef, or the operator's "
                f"{operator_env_name('default_server', 'name')}"
            )
        return ServerRef(
            secret_namespace=self.settings.default_server_namespace,
            secret_name=default.name,
            secret_key=default.key,
        )

    async def admin_url(self, server: ServerRef) -> str:
        value = await self.kube.secret_value(
            server.secret_namespace, server.secret_name, server.secret_key
        )
        if not value:
            raise ServerSecretMissing(
                f"Secret {server.secret_namespace}/{server.secret_name} or its key "
                f"{server.secret_key!r} is missing"
            )
        try:
            parsed = make_url(value)
            parsed.port  # noqa: B018 - a bad port raises only when read
        except (ArgumentError, ValueError):
            raise InvalidServerUrl(
                f"Secret {server.secret_namespace}/{server.secret_name} key "
                f"{server.secret_key!r} does not hold a PostgreSQL URL"
            ) from None
        return value

    async def _password(self, run: _Run, names: TenantNames, *, rotating: bool) -> _Password:
        """The tenant's Secret's password, else the registry entry's, else a new one."""
        ref = run.tenant.ref
        if rotating:
            return _Password(new_password(), is_new=True)
        current = await self.kube.credentials(ref, credentials_secret_name(ref.slug))
        if current and current.get("password"):
            return _Password(current["password"], is_new=False)
        registered = await self.registries.of(ref.namespace).value(ref.slug)
        recovered = registered_password(registered, names)
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
            first = statuses.provisioning(run.status, server, generation=tenant.generation)
            await self._write_status(run, first)
        await self._done(run, Step.SERVER)

        run.step = Step.DATABASE
        # A Tenant created with the annotation gets its first password, not a rotation.
        rotating = (
            bool(tenant.rotation_request)
            and tenant.rotation_request != tenant.status.credentials_rotation
            and tenant.status.credentials_secret is not None
        )
        password = await self._password(run, names, rotating=rotating)
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

        run.step = Step.CREDENTIALS
        data = credentials_data(admin_url, names, password.value)
        secret_written = await self.kube.write_credentials(
            ref, credentials_secret_name(ref.slug), data
        )
        await self._done(run, Step.CREDENTIALS)

        run.step = Step.REGISTRY
        entry = registry_entry(tenant, provisioned.database_url, revision)
        registered = await self.registries.of(ref.namespace).put(entry)
        await self._done(run, Step.REGISTRY)

        changes: list[AnyChange] = list(provisioned.changes)
        changes += [SecretChange.CREDENTIALS_SECRET] if secret_written else []
        changes += [SecretChange.REGISTRY_ENTRY] if registered else []
        done = statuses.Provisioned(
            database=names.database,
            schema_version=revision,
            credentials_secret=credentials_secret_name(ref.slug),
            server=server,
            rotation=tenant.rotation_request,
            suspended=tenant.spec.suspended,
        )
        await self._write_status(
            run, statuses.ready(run.status, done, generation=tenant.generation)
        )
        await self._announce(tenant, handler, changes, revision=revision, rotated=rotating)
        return tuple(changes)

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
            expected.add(SecretChange.REGISTRY_ENTRY)
            message = "new password set on the role and in both Secrets"
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
            kept = f"database and role {names.database} left as they are (skip-cleanup)"
            await self._released(tenant, "CleanupSkipped", kept, warning=True)
            return
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
