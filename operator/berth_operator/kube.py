"""The operator's Kubernetes side, on lightkube: Secrets, the Tenant's status, Events.

lightkube (not kopf's internal API, not kubernetes_asyncio): typed models, an asyncio client,
token files re-read on 401 (in-cluster tokens rotate), and no code generation or global state.
kopf keeps the watch, the finalizer and the handler bookkeeping; everything the reconciler
writes goes through here, so the tests run the same calls against a real API server.
"""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Mapping
from typing import Any

import httpx2
from lightkube import ApiError, AsyncClient
from lightkube.generic_resource import create_namespaced_resource
from lightkube.models.core_v1 import EventSource, ObjectReference
from lightkube.models.meta_v1 import ObjectMeta, OwnerReference
from lightkube.resources.core_v1 import Event, Secret
from lightkube.types import PatchType

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
_TEMPORARY_CODES = frozenset({CONFLICT, 429, 500, 502, 503, 504})
MAX_EVENT_MESSAGE = 1024


class CredentialsConflict(RuntimeError):
    """The tenant's Secret name is taken by a Secret this Tenant does not own."""


def is_temporary(exc: BaseException) -> bool:
    """An API failure that trying again may cure (throttling, a restart, a lost connection).

    A proxy's error page is not JSON, so lightkube leaves it a plain HTTPStatusError.
    """
    if isinstance(exc, ApiError):
        return exc.status.code in _TEMPORARY_CODES
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
        try:
            return await self.client.get(Secret, name, namespace=namespace)
        except ApiError as exc:
            if status_code(exc) == NOT_FOUND:
                return None
            raise

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
        metadata.resourceVersion = current.metadata.resourceVersion
        await self.client.replace(secret)

    async def patch_status(self, ref: TenantRef, status: TenantStatus) -> None:
        """Merge our status in (every field we own is written, nulls remove)."""
        body: dict[str, Any] = {"status": status.model_dump(mode="json", by_alias=True)}
        try:
            await self.client.patch(
                TenantResource.Status,
                ref.name,
                body,
                namespace=ref.namespace,
                patch_type=PatchType.MERGE,
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
