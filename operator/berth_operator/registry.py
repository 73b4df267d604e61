"""Writing the tenant registry Secret: one key per tenant, many writers, nothing lost.

Every Tenant of a namespace shares one Secret (`docs/tenants.md`, "The Secret the operator
writes"). Each write is a read-modify-replace carrying the resourceVersion it read, and a
409 means someone wrote in between: read again, apply the change again, retry. Inside one
operator, changes that arrive while a write is in flight are batched into the next write,
so 50 Tenants created at once cost a few writes, not 50 rounds of conflicts.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field

from lightkube import ApiError
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Secret

from berth_operator.kube import (
    CONFLICT,
    NOT_FOUND,
    Kube,
    decode,
    encode,
    keep_metadata,
    managed_labels,
    status_code,
)
from berth_operator.metrics import OperatorMetrics
from service.tenants.registry import entry_file_name, entry_json
from service.tenants.schemas import TenantEntry

MAX_ATTEMPTS = 30
_FIRST_BACKOFF_SECONDS = 0.02
_MAX_BACKOFF_SECONDS = 1.0

# A key's new value, or None to remove it.
Changes = dict[str, str | None]


class RegistryWriteFailed(RuntimeError):
    """The registry Secret kept changing under us (MAX_ATTEMPTS conflicts in a row)."""


def entry_value(entry: TenantEntry) -> str:
    """A registry key's value: the entry as the service reads it (secrets in clear)."""
    return entry_json(entry).decode()


@dataclass
class RegistryWriter:
    """The writes of one registry Secret (one namespace)."""

    kube: Kube
    namespace: str
    name: str
    metrics: OperatorMetrics
    _pending: Changes = field(default_factory=dict)
    _waiters: list[asyncio.Future[None]] = field(default_factory=list)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def value(self, slug: str) -> str | None:
        """The entry as the Secret holds it now (None: no key, or no Secret)."""
        secret = await self.kube.read_secret(self.namespace, self.name)
        return decode(secret.data if secret else None).get(entry_file_name(slug))

    async def put(self, entry: TenantEntry) -> bool:
        """Set the tenant's key; False when it already held exactly this entry."""
        wanted = entry_value(entry)
        if await self.value(entry.slug) == wanted:
            return False
        await self._submit(entry_file_name(entry.slug), wanted)
        return True

    async def remove(self, slug: str) -> None:
        """Remove the tenant's key (never creates the Secret to do so)."""
        await self._submit(entry_file_name(slug), None)

    async def _submit(self, key: str, value: str | None) -> None:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending[key] = value
        self._waiters.append(done)
        async with self._lock:
            if not done.done():  # nobody took our change along: write it (and what queued)
                await self._flush()
        done.result()

    async def _flush(self) -> None:
        changes, waiters = self._pending, self._waiters
        self._pending, self._waiters = {}, []
        try:
            await self._write(changes)
        except asyncio.CancelledError:
            # Put them back: the next writer in line (each waiter is one) takes them along.
            self._pending = {**changes, **self._pending}
            self._waiters = waiters + self._waiters
            raise
        except Exception as exc:
            for waiter in waiters:
                waiter.set_exception(exc)
        else:
            for waiter in waiters:
                waiter.set_result(None)

    async def _write(self, changes: Changes) -> None:
        for attempt in range(MAX_ATTEMPTS):
            if await self._write_once(changes):
                return
            self.metrics.registry_conflicts.inc()
            if attempt + 1 < MAX_ATTEMPTS:
                backoff = min(_FIRST_BACKOFF_SECONDS * 2**attempt, _MAX_BACKOFF_SECONDS)
                await asyncio.sleep(random.uniform(0, backoff))  # noqa: S311 - jitter only
        raise RegistryWriteFailed(
            f"Secret {self.namespace}/{self.name} changed {MAX_ATTEMPTS} times while we wrote it"
        )

    async def _write_once(self, changes: Changes) -> bool:
        """One read-modify-write; False when it lost a race (try again)."""
        secret = await self.kube.read_secret(self.namespace, self.name)
        data = decode(secret.data if secret else None)
        updated = {**data, **{k: v for k, v in changes.items() if v is not None}}
        for key in (k for k, v in changes.items() if v is None):
            updated.pop(key, None)
        if updated == data and secret is not None:
            return True
        if secret is None and not updated:
            return True  # only removals, and no Secret: nothing to do (nor to create)
        try:
            await self._replace(secret, updated)
        except ApiError as exc:
            if status_code(exc) in (CONFLICT, NOT_FOUND):
                return False
            raise
        return True

    async def _replace(self, current: Secret | None, data: dict[str, str]) -> None:
        metadata = ObjectMeta(name=self.name, namespace=self.namespace, labels=managed_labels())
        secret = Secret(metadata=metadata, type="Opaque", data=encode(data))
        if current is None:
            await self.kube.client.create(secret)
            return
        assert current.metadata is not None
        keep_metadata(metadata, current.metadata)
        await self.kube.client.replace(secret)


@dataclass
class Registries:
    """One writer per namespace's registry Secret."""

    kube: Kube
    secret_name: str
    metrics: OperatorMetrics
    _writers: dict[str, RegistryWriter] = field(default_factory=dict)

    def of(self, namespace: str) -> RegistryWriter:
        if namespace not in self._writers:
            self._writers[namespace] = RegistryWriter(
                self.kube, namespace, self.secret_name, self.metrics
            )
        return self._writers[namespace]
