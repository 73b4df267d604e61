"""The registry Secret's writes under API faults, injected with an emulator (kmock).

`RegistryWriter` writes the shared registry Secret optimistically: read it, change one key,
replace it with the resourceVersion read; a 409 means someone wrote in between, so it reads
again and retries, up to MAX_ATTEMPTS. The other operator tests run on a real API server, but a
real API server does not produce faults on demand: it will not answer 409 to every replace (a
conflict storm), lose a race exactly three times, or fail a read with a 500, a 503 or a 403
when a test wants it. So these tests run the writer, over lightkube's real HTTP client, against
kmock's Kubernetes emulator, which answers what each test scripts and keeps the Secret in memory
so that a test can change it between two attempts (a concurrent writer).

What kmock does not do by itself, `EmulatedApi` below does: kmock never sets `resourceVersion`,
and it does not serve PUT (lightkube's `replace`) at all (its default answer is a 404), so the
emulated replace keeps a version per Secret and refuses a stale one with 409, as the real API
server does. Nothing here needs the session's real API server (no conftest fixture asks for it).
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest
from berth_operator import registry
from berth_operator.errors import classify
from berth_operator.kube import Kube, decode, encode, is_temporary
from berth_operator.metrics import REGISTRY_WRITE_CONFLICTS, OperatorMetrics
from berth_operator.registry import (
    MAX_ATTEMPTS,
    RegistryWriteFailed,
    RegistryWriter,
    entry_value,
)
from berth_operator.status import Step
from kmock import (  # type: ignore[attr-defined]  # Response: public, not in 0.8's __all__
    KubernetesEmulator,
    Payload,
    Request,
    Response,
    resource,
)
from lightkube import ApiError, AsyncClient, KubeConfig
from lightkube.config.models import Cluster, User

from service.tenants.registry import entry_file_name
from service.tenants.schemas import TenantEntry

NAMESPACE = "tenants"
NAME = "berth-tenant-registry"
# A resource object, not the string "v1/secrets": kmock's `key in kmock.objects` only finds
# keys made of one (its other accessors parse strings, that one does not).
SECRETS = resource("v1/secrets")
KEY = (SECRETS, NAMESPACE, NAME)
READS = "get v1/secrets"
REPLACES = "put v1/secrets"
CREATES = "post v1/secrets"
# What other writers already put in the Secret: whatever we do, it stays.
OTHERS = {"globex.json": '{"slug": "globex"}\n'}


def failure(code: int, reason: str, message: str) -> Response:
    """An API error as the API server sends it: a `Status` body, as `application/json`
    exactly (lightkube turns an error into an ApiError only for that Content-Type; aiohttp's
    and so kmock's default, `application/json; charset=utf-8`, stays a bare HTTPStatusError)."""
    status = {
        "apiVersion": "v1",
        "kind": "Status",
        "metadata": {},
        "status": "Failure",
        "code": code,
        "reason": reason,
        "message": message,
    }
    return Response(status=code, headers={"Content-Type": "application/json"}, payload=status)


def conflict() -> Response:
    return failure(
        409,
        "Conflict",
        f'Operation cannot be fulfilled on secrets "{NAME}": the object has been modified; '
        "please apply your changes to the latest version and try again",
    )


def not_found() -> Response:
    return failure(404, "NotFound", f'secrets "{NAME}" not found')


def entry(slug: str) -> TenantEntry:
    return TenantEntry.model_validate(
        {
            "slug": slug,
            "database_url": f"postgresql+asyncpg://tenant_{slug}:pw@db:5432/tenant_{slug}",
        }
    )


@dataclass
class EmulatedApi:
    """kmock's emulator, plus what optimistic concurrency needs and kmock lacks: a
    resourceVersion on every stored version of the Secret, and a replace that refuses a stale
    one with 409 (the API server's normal behaviour; a test's scripted faults come first)."""

    kmock: KubernetesEmulator
    _versions: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def seed(self, data: Mapping[str, str]) -> None:
        """The registry Secret as other writers left it."""
        self.kmock.objects[KEY] = {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "Opaque",
            "metadata": {"name": NAME, "namespace": NAMESPACE, "resourceVersion": self._next()},
            "data": encode(data),
        }

    def data(self) -> dict[str, str] | None:
        """The Secret's keys as stored now (None: there is no Secret)."""
        if KEY not in self.kmock.objects or self.kmock.objects[KEY].deleted:
            return None
        return decode(self.kmock.objects[KEY].raw.get("data"))

    def concurrent_write(self, key: str, value: str) -> None:
        """Another writer's replace landing between our read and our write."""
        stored = copy.deepcopy(self.kmock.objects[KEY].raw)
        stored["data"] = {**stored.get("data", {}), **encode({key: value})}
        self._store(stored)

    def read(self) -> Payload:
        """GET of the Secret: as stored, or 404 (kmock's own 404 is not `application/json`)."""
        return not_found() if self.data() is None else self.kmock.objects[KEY].raw

    def replace(self, request: Request) -> Payload:
        """PUT of the Secret: stored with a new resourceVersion, or 409 when the one sent is
        not the one stored (404 when there is no Secret)."""
        if self.data() is None:
            return not_found()
        sent = request.data.get("metadata", {}).get("resourceVersion")
        current = self.kmock.objects[KEY].raw["metadata"]["resourceVersion"]
        if sent != current:
            return conflict()
        return self._store(copy.deepcopy(request.data))

    def _store(self, secret: dict[str, Any]) -> dict[str, Any]:
        secret["metadata"]["resourceVersion"] = self._next()
        self.kmock.objects[KEY].history.append(secret)
        return secret

    def _next(self) -> str:
        return str(next(self._versions))


@pytest.fixture
def api(kmock: KubernetesEmulator) -> EmulatedApi:
    emulated = EmulatedApi(kmock)
    # Above kmock's own fallbacks, below any reaction a test adds (its scripted faults).
    normally = kmock.fallback**1
    normally[READS] << emulated.read
    normally[REPLACES] << emulated.replace
    return emulated


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Thirty attempts at the real backoff take ~13 s; the number of attempts is what matters."""
    monkeypatch.setattr(registry, "_FIRST_BACKOFF_SECONDS", 0.0001)
    monkeypatch.setattr(registry, "_MAX_BACKOFF_SECONDS", 0.001)


@pytest.fixture
async def client(kmock: KubernetesEmulator) -> AsyncIterator[AsyncClient]:
    # Not `KubeConfig.from_server(url)`: it makes a config without a user, which lightkube
    # 1.0's client refuses ("Missing user"). The emulator checks no token.
    server = Cluster(server=str(kmock.url).rstrip("/"))
    config = KubeConfig.from_one(cluster=server, user=User(token="test"))
    async with AsyncClient(config=config, trust_env=False) as lightkube_client:
        yield lightkube_client


@pytest.fixture
def metrics() -> OperatorMetrics:
    return OperatorMetrics()


@pytest.fixture
def writer(client: AsyncClient, metrics: OperatorMetrics) -> RegistryWriter:
    return RegistryWriter(Kube(client, instance="test"), NAMESPACE, NAME, metrics)


def conflicts(metrics: OperatorMetrics) -> float:
    return metrics.registry.get_sample_value(REGISTRY_WRITE_CONFLICTS) or 0.0


async def test_a_conflict_storm_gives_up_after_max_attempts_and_says_temporary(
    api: EmulatedApi, kmock: KubernetesEmulator, writer: RegistryWriter, metrics: OperatorMetrics
) -> None:
    """Every replace answers 409 (scripted in the emulator: a real API server does not produce
    a conflict storm on demand): the writer gives up after exactly MAX_ATTEMPTS replaces, each
    counted, with an error the reconciler reports as a temporary RegistryConflict."""
    api.seed(OTHERS)
    kmock[REPLACES] << conflict()

    with pytest.raises(RegistryWriteFailed) as failed:
        await writer.put(entry("acme"))

    assert len(kmock[REPLACES]) == MAX_ATTEMPTS
    assert len(kmock[READS]) == 1 + MAX_ATTEMPTS  # put's look, then one read per attempt
    assert conflicts(metrics) == MAX_ATTEMPTS
    reason, message, temporary = classify(Step.REGISTRY, failed.value)
    assert (reason, temporary) == ("RegistryConflict", True)
    assert f"{NAMESPACE}/{NAME}" in message
    assert api.data() == OTHERS


async def test_a_few_conflicts_then_success_lands_the_key_and_keeps_the_concurrent_writes(
    api: EmulatedApi, kmock: KubernetesEmulator, writer: RegistryWriter, metrics: OperatorMetrics
) -> None:
    """A concurrent writer wins the race three times (the emulator writes the Secret between
    our read and our replace, which a real API server cannot be made to do at will): each
    replace is refused for a stale resourceVersion, the writer reads again, and the fourth
    lands our key next to every key the others added in between."""
    api.seed(OTHERS)
    rivals = iter(["initech", "hooli", "umbrella"])

    def a_rival_writes_first(request: Request) -> Payload:
        slug = next(rivals)
        api.concurrent_write(entry_file_name(slug), entry_value(entry(slug)))
        return api.replace(request)  # now a stale resourceVersion: 409

    kmock[REPLACES][:3] << a_rival_writes_first

    assert await writer.put(entry("acme")) is True

    assert api.data() == {
        **OTHERS,
        **{entry_file_name(s): entry_value(entry(s)) for s in ("initech", "hooli", "umbrella")},
        entry_file_name("acme"): entry_value(entry("acme")),
    }
    assert conflicts(metrics) == 3
    assert len(kmock[REPLACES]) == 4
    assert len(kmock[READS]) == 1 + 4  # put's look, then a fresh read before every replace
    assert len(kmock.objects[KEY].history) == 1 + 3 + 1  # seed, the rivals', ours


@pytest.mark.parametrize("code", [500, 503])
@pytest.mark.parametrize("fault_on", [READS, REPLACES])
async def test_a_server_error_on_read_or_replace_propagates_at_once_and_is_temporary(
    api: EmulatedApi,
    kmock: KubernetesEmulator,
    writer: RegistryWriter,
    metrics: OperatorMetrics,
    code: int,
    fault_on: str,
) -> None:
    """A 500 or 503 from the API server (scripted in the emulator: a real API server does not
    fail on demand) is neither swallowed nor retried by the writer: it reaches the caller
    after one request, uncounted as a conflict, and is classified temporary (kopf retries)."""
    api.seed(OTHERS)
    reason = {500: "InternalError", 503: "ServiceUnavailable"}[code]
    kmock[fault_on] << failure(code, reason, f"the server says {code}")

    with pytest.raises(ApiError) as failed:
        await writer.put(entry("acme"))

    assert failed.value.status.code == code
    assert len(kmock[fault_on]) == 1
    assert is_temporary(failed.value)
    assert classify(Step.REGISTRY, failed.value)[::2] == ("KubernetesApiError", True)
    assert conflicts(metrics) == 0
    assert api.data() == OTHERS


@pytest.mark.parametrize("fault_on", [READS, REPLACES])
async def test_a_forbidden_read_or_replace_propagates_at_once_and_is_permanent(
    api: EmulatedApi,
    kmock: KubernetesEmulator,
    writer: RegistryWriter,
    metrics: OperatorMetrics,
    fault_on: str,
) -> None:
    """A 403 (scripted in the emulator, like the server errors above: RBAC on a real API
    server would refuse every request, not the one a test picks) reaches the caller after one
    request and is classified permanent: retrying does not grant a permission."""
    api.seed(OTHERS)
    kmock[fault_on] << failure(403, "Forbidden", f'secrets "{NAME}" is forbidden')

    with pytest.raises(ApiError) as failed:
        await writer.put(entry("acme"))

    assert len(kmock[fault_on]) == 1
    assert not is_temporary(failed.value)
    assert classify(Step.REGISTRY, failed.value)[::2] == ("KubernetesApiError", False)
    assert conflicts(metrics) == 0
    assert api.data() == OTHERS


@pytest.mark.parametrize("code", [500, 503])
async def test_a_server_error_on_a_removals_read_propagates_at_once_and_is_temporary(
    api: EmulatedApi, kmock: KubernetesEmulator, writer: RegistryWriter, code: int
) -> None:
    """The same for a removal, whose only read is inside the write loop (the emulator fails
    it; a real API server would not): the error reaches the caller after one read."""
    api.seed({**OTHERS, entry_file_name("acme"): entry_value(entry("acme"))})
    kmock[READS] << failure(code, "InternalError", f"the server says {code}")

    with pytest.raises(ApiError) as failed:
        await writer.remove("acme")

    assert failed.value.status.code == code
    assert is_temporary(failed.value)
    assert len(kmock[READS]) == 1
    assert len(kmock[REPLACES]) == 0


async def test_removing_a_key_when_there_is_no_secret_never_creates_it(
    api: EmulatedApi, kmock: KubernetesEmulator, writer: RegistryWriter
) -> None:
    """With no registry Secret, a removal reads, finds nothing to remove, and writes nothing:
    no create, no replace. An emulator, because it records every request: it shows that no
    create was even attempted, where a real API server would only show the end state (and a
    create refused or undone by a later write would leave the same one)."""
    await writer.remove("acme")

    assert len(kmock[READS]) == 1
    assert len(kmock[CREATES]) == 0
    assert len(kmock[REPLACES]) == 0
    assert api.data() is None


async def test_a_removal_whose_secret_vanishes_before_the_replace_does_not_recreate_it(
    api: EmulatedApi, kmock: KubernetesEmulator, writer: RegistryWriter, metrics: OperatorMetrics
) -> None:
    """The Secret is deleted between the removal's read and its replace (the emulator deletes
    it at that moment, which a real API server cannot be timed to do): the replace gets a 404,
    the writer reads again, finds no Secret, and stops without creating one."""
    api.seed({**OTHERS, entry_file_name("acme"): entry_value(entry("acme"))})

    def deleted_meanwhile(request: Request) -> Payload:
        kmock.objects[KEY].delete()
        return api.replace(request)  # no Secret any more: 404

    kmock[REPLACES][:1] << deleted_meanwhile

    await writer.remove("acme")

    assert len(kmock[REPLACES]) == 1
    assert len(kmock[READS]) == 2
    assert len(kmock[CREATES]) == 0
    assert api.data() is None
    assert conflicts(metrics) == 1  # a 404 on replace counts as a lost race too
