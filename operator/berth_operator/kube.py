"""The operator's Kubernetes side, on lightkube: Secrets, the Tenant's status, Events.

lightkube (not kopf's internal API, not kubernetes_asyncio): typed models, an asyncio client,
token files re-read on 401 (in-cluster tokens rotate), and no code generation or global state.
kopf keeps the watch, the finalizer and the handler bookkeeping; everything the reconciler
writes goes through here, so the tests run the same calls against a real API server.
"""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import httpx2
from lightkube import ApiError, AsyncClient
from lightkube.generic_resource import create_namespaced_resource
from lightkube.models.core_v1 import EventSource, ObjectReference
from lightkube.models.meta_v1 import ObjectMeta, OwnerReference
from lightkube.resources.core_v1 import Event, Secret
from lightkube.types import PatchType
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_incrementing

from berth_operator.resource import (
    API_VERSION,
    GROUP,
    KIND,
    MANAGED_BY_LABEL,
    MANAGER,
    PLURAL,
    TENANT_LABEL,
    VERSION,
    TenantRef,
    TenantStatus,
)
from service.core.logging import get_logger

log = get_logger(__name__)

TenantResource = create_namespaced_resource(GROUP, VERSION, KIND, PLURAL)
FORBIDDEN = 403
NOT_FOUND = 404
CONFLICT = 409
UNPROCESSABLE = 422
_TEMPORARY_CODES = frozenset({CONFLICT, 429, 500, 502, 503, 504})
MAX_EVENT_MESSAGE = 1024
RULE_FAULT_ATTEMPTS = 5
_RULE_FAULT_PAUSE = 0.05
T = TypeVar("T")
R = TypeVar("R")


class CredentialsConflict(RuntimeError):
    """The tenant's Secret name is taken by a Secret this Tenant does not own."""


async def get_or_none(request: Awaitable[R]) -> R | None:
    """What a `client.get(...)` returns, or None when the object does not exist."""
    try:
        return await request
    except ApiError as exc:
        if status_code(exc) == NOT_FOUND:
            return None
        raise


def is_rule_fault(exc: BaseException) -> bool:
    """A 422 for a valid object: the API server failed *evaluating* a CEL rule.

    A data race in cel-go (kubernetes#114661, fixed in 1.25.6/1.26.1; the test API server
    here is 1.25.0-alpha.2) answers concurrent writes so, about 1 in 25 under load. The only
    mark is the message: the cause is typed FieldValueInvalid like a real rejection.
    """
    if not isinstance(exc, ApiError) or exc.status.code != UNPROCESSABLE:
        return False
    message = exc.status.message or ""
    return "internal error: " in message and " evaluating rule: " in message


async def retry_rule_faults(call: Callable[[], Awaitable[T]]) -> T:
    """`call()`, tried again (a few times, briefly) while the API server's rule evaluation
    fails; any other error, or the last fault, is raised."""
    retrying = AsyncRetrying(
        retry=retry_if_exception(is_rule_fault),
        stop=stop_after_attempt(RULE_FAULT_ATTEMPTS),
        wait=wait_incrementing(start=_RULE_FAULT_PAUSE, increment=_RULE_FAULT_PAUSE),
        reraise=True,
    )

    async def attempt() -> T:  # a coroutine function: tenacity awaits it (not a lambda's result)
        return await call()

    return await retrying(attempt)


def is_temporary(exc: BaseException) -> bool:
    """An API failure that trying again may cure (throttling, a restart, a lost connection,
    a rule the server failed to evaluate).

    A proxy's error page is not JSON, so lightkube leaves it a plain HTTPStatusError.
    """
    if isinstance(exc, ApiError):
        return exc.status.code in _TEMPORARY_CODES or is_rule_fault(exc)
    if isinstance(exc, httpx2.HTTPStatusError):
        return exc.response.status_code in _TEMPORARY_CODES
    return isinstance(exc, httpx2.TransportError | TimeoutError)


def status_code(exc: ApiError) -> int | None:
    return exc.status.code


def encode(data: Mapping[str, str]) -> dict[str, str]:
    return {key: base64.b64encode(value.encode()).decode() for key, value in data.items()}


def decode(data: Mapping[str, str] | None) -> dict[str, str]:
    return {key: base64.b64decode(value).decode() for key, value in (data or {}).items()}


def managed_labels(ref: TenantRef | None = None) -> dict[str, str]:
    labels = {MANAGED_BY_LABEL: MANAGER}
    if ref is not None:
        labels[TENANT_LABEL] = ref.name
    return labels


def owner_reference(ref: TenantRef) -> OwnerReference:
    return OwnerReference(
        apiVersion=API_VERSION, kind=KIND, name=ref.name, uid=ref.uid, controller=True
    )


def keep_metadata(metadata: ObjectMeta, current: ObjectMeta) -> None:
    """A replace carries what others put on the object (labels, annotations) and the
    resourceVersion it read, so it fails rather than overwrite a newer write."""
    metadata.resourceVersion = current.resourceVersion
    metadata.labels = {**(current.labels or {}), **(metadata.labels or {})}
    metadata.annotations = {**(current.annotations or {}), **(metadata.annotations or {})}


def _owned_by(secret: Secret, ref: TenantRef) -> bool:
    owners = (secret.metadata.ownerReferences if secret.metadata else None) or []
    return any(owner.uid == ref.uid for owner in owners)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Kube:
    """What reconciliation asks of the API server."""

    def __init__(self, client: AsyncClient, *, instance: str) -> None:
        self.client = client
        self.instance = instance

    async def read_secret(self, namespace: str, name: str) -> Secret | None:
        return await get_or_none(self.client.get(Secret, name, namespace=namespace))

    async def secret_value(self, namespace: str, name: str, key: str) -> str | None:
        secret = await self.read_secret(namespace, name)
        if secret is None:
            return None
        return decode(secret.data).get(key)

    async def credentials(self, ref: TenantRef, name: str) -> dict[str, str] | None:
        """The tenant's own Secret's data; None when absent or not this Tenant's (a deleted
        namesake's, waiting for garbage collection: never trusted, never overwritten)."""
        secret = await self.read_secret(ref.namespace, name)
        if secret is None or not _owned_by(secret, ref):
            return None
        return decode(secret.data)

    async def write_credentials(self, ref: TenantRef, name: str, data: Mapping[str, str]) -> bool:
        """Create or update the tenant's Secret (owned by the Tenant); False when it already
        held exactly `data`."""
        while True:
            current = await self.read_secret(ref.namespace, name)
            if current is not None and not _owned_by(current, ref):
                raise CredentialsConflict(
                    f"Secret {ref.namespace}/{name} exists and is not owned by this Tenant"
                )
            if current is not None and decode(current.data) == dict(data):
                return False
            try:
                await self._put_credentials(ref, name, data, current)
            except ApiError as exc:
                if status_code(exc) == CONFLICT:
                    continue  # changed or created meanwhile: look again
                raise
            return True

    async def _put_credentials(
        self, ref: TenantRef, name: str, data: Mapping[str, str], current: Secret | None
    ) -> None:
        metadata = ObjectMeta(
            name=name,
            namespace=ref.namespace,
            labels=managed_labels(ref),
            ownerReferences=[owner_reference(ref)],
        )
        secret = Secret(metadata=metadata, type="Opaque", data=encode(data))
        if current is None:
            await self.client.create(secret)
            return
        assert current.metadata is not None
        keep_metadata(metadata, current.metadata)
        await self.client.replace(secret)

    async def patch_status(self, ref: TenantRef, status: TenantStatus) -> None:
        """Merge our status in (every field we own is written, nulls remove)."""
        body: dict[str, Any] = {"status": status.model_dump(mode="json", by_alias=True)}
        try:
            await retry_rule_faults(
                lambda: self.client.patch(
                    TenantResource.Status,
                    ref.name,
                    body,
                    namespace=ref.namespace,
                    patch_type=PatchType.MERGE,
                )
            )
        except ApiError as exc:
            if status_code(exc) != NOT_FOUND:  # gone already: nothing to report on
                raise

    async def event(self, ref: TenantRef, reason: str, message: str, *, warning: bool) -> None:
        """Post an Event on the Tenant; never raises (a terminating namespace refuses them)."""
        now = _now()
        event = Event(
            metadata=ObjectMeta(generateName=f"{ref.name}.", namespace=ref.namespace),
            involvedObject=ObjectReference(
                apiVersion=API_VERSION,
                kind=KIND,
                name=ref.name,
                namespace=ref.namespace,
                uid=ref.uid,
            ),
            reason=reason,
            message=message[:MAX_EVENT_MESSAGE],
            type="Warning" if warning else "Normal",
            source=EventSource(component=MANAGER),
            reportingComponent=MANAGER,
            reportingInstance=self.instance,
            firstTimestamp=now,
            lastTimestamp=now,
            count=1,
        )
        try:
            await self.client.create(event)
        except ApiError as exc:
            # A terminating namespace takes no new objects: expected while it is deleted.
            terminating = status_code(exc) == FORBIDDEN and "terminat" in str(exc)
            report = log.info if terminating else log.warning
            report("event_not_posted", tenant=ref.name, reason=reason, error=str(exc))
        except httpx2.TransportError as exc:
            log.warning("event_not_posted", tenant=ref.name, reason=reason, error=str(exc))
