"""The Kubernetes test harness (tests/kube.py) against a real API server: no mocks."""

from __future__ import annotations

import asyncio
import base64
import os
import re
import stat
import subprocess
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import lightkube
import pytest
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Secret

from tests.kube import ApiServer, SecretVolume, api_server, kubectl, service_account_kubeconfig
from tests.support import wait_for

T = TypeVar("T")
TIMESTAMPED = re.compile(r"^\.\.\d{4}_\d{2}_\d{2}_\d{2}_\d{2}_\d{2}\.\d{9}$")


@pytest.fixture(scope="module")
def kube(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    """One control plane for this module (about 6 s to start)."""
    with api_server(tmp_path_factory.mktemp("kube")) as server:
        yield server


@pytest.fixture
async def admin(kube: ApiServer) -> AsyncIterator[lightkube.AsyncClient]:
    config = lightkube.KubeConfig.from_file(kube.kubeconfig)
    async with lightkube.AsyncClient(config=config, trust_env=False) as client:
        yield client


def namespace(kube: ApiServer, prefix: str) -> str:
    """A fresh namespace: tests sharing the server never see each other's objects."""
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    kubectl(kube, "create", "namespace", name)
    return name


def secret(namespace: str, name: str, data: dict[str, bytes]) -> Secret:
    encoded = {key: base64.b64encode(value).decode() for key, value in data.items()}
    return Secret(metadata=ObjectMeta(name=name, namespace=namespace), data=encoded)


def entries(directory: Path) -> set[str]:
    return {entry.name for entry in directory.iterdir()}


def data_target(directory: Path) -> str:
    return str((directory / "..data").readlink())


def test_api_server_answers(kube: ApiServer) -> None:
    names = kubectl(kube, "get", "namespaces", "-o", "name").stdout.split()
    assert "namespace/default" in names
    assert kube.url.startswith("https://127.0.0.1:")
    assert kube.ca_file.is_file()
    assert (kube.logs / "kube-apiserver.log").is_file()
    version = kubectl(kube, "version", "-o", "json").stdout
    assert '"gitVersion": "v1.25.0-alpha.2' in version


def test_kubectl_failure_shows_stderr(kube: ApiServer) -> None:
    with pytest.raises(subprocess.CalledProcessError) as caught:
        kubectl(kube, "get", "secret", "no-such-secret", "-n", "default")
    assert any("NotFound" in note for note in caught.value.__notes__)
    assert kubectl(kube, "get", "secret", "no-such", check=False).returncode == 1


def test_api_server_reports_why_it_did_not_start(tmp_path: Path) -> None:
    env = {"KUBE_APISERVER_BIN": str(tmp_path / "missing")}
    with (
        pytest.raises(RuntimeError, match="exited before READY") as caught,
        api_server(tmp_path / "work", env=env),
    ):
        pytest.fail("started without a kube-apiserver")
    assert "kube-apiserver not found" in str(caught.value)


def test_api_server_timeout_stops_the_launcher(tmp_path: Path) -> None:
    with (
        pytest.raises(RuntimeError, match="not READY after"),
        api_server(tmp_path / "work", timeout=1.0),
    ):
        pytest.fail("ready in a second")
    assert "stopped (exit 143)" in (tmp_path / "work" / "start-apiserver.log").read_text()


async def until_allowed(call: Callable[[], Awaitable[T]], attempts: int = 100) -> T:
    """The result of the first call RBAC allows: the authorizer's cache sees a new binding
    within moments, so a read right after the binding may still be Forbidden."""
    for _ in range(attempts):
        try:
            return await call()
        except lightkube.ApiError as exc:
            if exc.status.code != 403:
                raise
        await asyncio.sleep(0.05)
    pytest.fail("the RoleBinding never took effect")


async def test_service_account_has_exactly_its_role(kube: ApiServer, tmp_path: Path) -> None:
    granted, other = namespace(kube, "granted"), namespace(kube, "other")
    for ns in (granted, other):
        kubectl(kube, "create", "secret", "generic", "creds", "--from-literal=k=v", "-n", ns)
    path = service_account_kubeconfig(kube, granted, "bot", tmp_path / "bot.kubeconfig")
    kubectl(
        kube, "create", "role", "reader", "--verb=get,list", "--resource=secrets", "-n", granted
    )
    kubectl(
        kube,
        *("create", "rolebinding", "reader", "--role=reader", f"--serviceaccount={granted}:bot"),
        *("-n", granted),
    )
    assert stat.S_IMODE(path.stat().st_mode) == 0o600

    config = lightkube.KubeConfig.from_file(path)
    async with lightkube.AsyncClient(config=config, trust_env=False) as bot:
        read = await until_allowed(lambda: bot.get(Secret, "creds", namespace=granted))
        assert read.data == {"k": base64.b64encode(b"v").decode()}
        listed = [s.metadata async for s in bot.list(Secret, namespace=granted)]
        assert [meta.name for meta in listed if meta] == ["creds"]

        with pytest.raises(lightkube.ApiError) as created:
            await bot.create(secret(granted, "new", {"k": b"v"}))
        assert created.value.status.code == 403
        assert f"system:serviceaccount:{granted}:bot" in (created.value.status.message or "")
        with pytest.raises(lightkube.ApiError) as elsewhere:
            await bot.get(Secret, "creds", namespace=other)
        assert elsewhere.value.status.code == 403

    # kubectl with the same file: what the Role allows and nothing more
    def can_i(*args: str) -> str:
        result = kubectl(kube, "auth", "can-i", *args, kubeconfig=path, check=False)
        return result.stdout.strip()

    assert can_i("list", "secrets", "-n", granted) == "yes"
    assert can_i("delete", "secrets", "-n", granted) == "no"
    assert can_i("get", "secrets", "-n", other) == "no"
    assert can_i("list", "configmaps", "-n", granted) == "no"


async def test_secret_volume_follows_the_secret_like_the_kubelet(
    kube: ApiServer, admin: lightkube.AsyncClient, tmp_path: Path
) -> None:
    ns = namespace(kube, "volume")
    directory = tmp_path / "mounted"
    volume = SecretVolume(kube.kubeconfig, ns, "config", directory)
    await admin.create(secret(ns, "config", {"a.json": b'{"a": 1}', "b.json": b'{"b": 2}'}))

    assert await volume.sync_once() is True
    first = data_target(directory)
    assert TIMESTAMPED.match(first), first
    assert entries(directory) == {"..data", first, "a.json", "b.json"}
    for key in ("a.json", "b.json"):
        assert str((directory / key).readlink()) == f"..data/{key}"
        assert stat.S_IMODE((directory / first / key).stat().st_mode) == 0o400
    assert (directory / "a.json").read_text() == '{"a": 1}'
    assert (directory / "b.json").read_text() == '{"b": 2}'
    assert volume.keys() == {"a.json", "b.json"}

    assert await volume.sync_once() is False  # nothing changed: nothing rewritten
    assert data_target(directory) == first

    await admin.replace(secret(ns, "config", {"a.json": b'{"a": 10}', "c.json": b"{}"}))
    assert await volume.sync_once() is True
    second = data_target(directory)
    assert TIMESTAMPED.match(second)
    assert second != first
    assert not (directory / first).exists()
    assert entries(directory) == {"..data", second, "a.json", "c.json"}
    assert (directory / "a.json").read_text() == '{"a": 10}'
    assert (directory / "c.json").read_text() == "{}"
    assert not os.path.lexists(directory / "b.json")

    await admin.delete(Secret, "config", namespace=ns)
    assert await volume.sync_once() is True
    third = data_target(directory)
    assert entries(directory) == {"..data", third}
    assert list((directory / "..data").iterdir()) == []
    assert volume.keys() == set()
    assert await volume.sync_once() is False


async def test_secret_volume_absent_secret_is_an_empty_volume(
    kube: ApiServer, tmp_path: Path
) -> None:
    ns = namespace(kube, "absent")
    directory = tmp_path / "mounted"
    volume = SecretVolume(kube.kubeconfig, ns, "not-there", directory, default_mode=0o644)
    assert await volume.sync_once() is True  # the first sync sets up `..data`
    assert entries(directory) == {"..data", data_target(directory)}
    assert await volume.sync_once() is False
    assert volume.syncs == 2


async def test_secret_volume_running_keeps_the_directory_in_sync(
    kube: ApiServer, admin: lightkube.AsyncClient, tmp_path: Path
) -> None:
    ns = namespace(kube, "running")
    directory = tmp_path / "mounted"
    await admin.create(secret(ns, "config", {"token": b"one"}))
    async with SecretVolume(kube.kubeconfig, ns, "config", directory).running(0.05) as volume:
        assert (directory / "token").read_bytes() == b"one"  # synced before the block starts
        await admin.replace(secret(ns, "config", {"token": b"two", "extra": b"x"}))
        await wait_for(lambda: volume.keys() == {"token", "extra"}, timeout=10)
        assert (directory / "token").read_bytes() == b"two"
        syncs = volume.syncs
        await wait_for(lambda: volume.syncs > syncs + 2, timeout=10)
        assert volume.last_error is None
    syncs = volume.syncs
    await asyncio.sleep(0.2)
    assert volume.syncs == syncs  # the task stopped with the block
