"""Helpers (no fixtures) for tests against a real Kubernetes API server.

`api_server` runs /work/shared/k8s/start-apiserver (etcd + kube-apiserver + controller-manager
on 127.0.0.1), `kubectl` talks to it as the admin, `service_account_kubeconfig` hands a process
exactly the permissions of the Roles bound to one ServiceAccount, and `SecretVolume` plays the
kubelet's part for a Secret volume (there is no kubelet), so code that reads a mounted Secret
sees the real `..data` symlink swaps.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import json
import logging
import os
import selectors
import shutil
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path

import httpx2
import lightkube
from lightkube.resources.core_v1 import Secret

START_APISERVER = Path(os.environ.get("BERTH_START_APISERVER", "/work/shared/k8s/start-apiserver"))
KUBECTL = Path(os.environ.get("BERTH_KUBECTL", "/usr/bin/kubectl"))
READY_TIMEOUT = 120.0
STOP_TIMEOUT = 45.0  # the launcher gives each of its 3 children up to 10 s after SIGTERM

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ApiServer:
    """A running throw-away control plane, as start-apiserver announced it."""

    workdir: Path
    kubeconfig: Path  # the admin's (group system:masters): RBAC never stops it
    url: str
    admin_token: str
    ca_file: Path

    @property
    def logs(self) -> Path:
        """etcd.log, kube-apiserver.log, kube-controller-manager.log (kept after the stop)."""
        return self.workdir / "logs"


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.splitlines()[-lines:])


def _launcher_log(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the launcher (it stops its children by PID); SIGKILL the group if it hangs."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            # not reaped yet, so the group id is still ours
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
    if process.stdout is not None:
        process.stdout.close()


def _exit_code(process: subprocess.Popen[bytes]) -> int | None:
    try:
        return process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        return None


def _read_until_ready(
    process: subprocess.Popen[bytes], timeout: float, launcher_log: Path
) -> dict[str, str]:
    """The KEY=VALUE lines printed before READY; RuntimeError with the log tail otherwise."""
    assert process.stdout is not None
    fd = process.stdout.fileno()
    deadline = time.monotonic() + timeout
    values: dict[str, str] = {}
    output = b""
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while True:
            remaining = deadline - time.monotonic()
            problem = f"not READY after {timeout:.0f} s" if remaining <= 0 else ""
            if not problem and selector.select(remaining):
                chunk = os.read(fd, 65536)
                if not chunk:
                    problem = f"exited before READY (rc {_exit_code(process)})"
                output += chunk
                *lines, output = output.split(b"\n")
                for raw in lines:
                    line = raw.decode(errors="replace").strip()
                    if line == "READY":
                        return values
                    key, sep, value = line.partition("=")
                    if sep:
                        values[key] = value
            if problem:
                stdout = "\n".join(f"{k}={v}" for k, v in values.items() if k != "ADMIN_TOKEN")
                raise RuntimeError(
                    f"start-apiserver {problem}\n--- stdout\n{stdout}\n"
                    f"--- {launcher_log} (tail)\n{_tail(_launcher_log(launcher_log))}"
                )


@contextlib.contextmanager
def api_server(
    workdir: Path, *, env: Mapping[str, str] | None = None, timeout: float = READY_TIMEOUT
) -> Iterator[ApiServer]:
    """Start a fresh control plane with its state and logs in `workdir`; stop it on exit.

    `env` adds start-apiserver's knobs (WITH_KCM, FEATURE_GATES, APISERVER_EXTRA_ARGS, ...).
    The launcher runs in its own process group, so a test's Ctrl-C does not reach it and a
    hung one can be killed whole; if this process dies, the launcher's watchdog cleans up.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    launcher_log = workdir / "start-apiserver.log"  # logs/ is wiped at start, this is not
    with launcher_log.open("wb") as stderr:
        process = subprocess.Popen(
            [str(START_APISERVER), str(workdir)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
    try:
        values = _read_until_ready(process, timeout, launcher_log)
        yield ApiServer(
            workdir=Path(values["WORKDIR"]),
            kubeconfig=Path(values["KUBECONFIG"]),
            url=values["APISERVER_URL"],
            admin_token=values["ADMIN_TOKEN"],
            ca_file=Path(values["CA_FILE"]),
        )
    finally:
        _stop(process)


def kubectl(
    server: ApiServer,
    *args: str,
    input: str | None = None,
    check: bool = True,
    kubeconfig: Path | None = None,
    timeout: float = 60.0,
) -> subprocess.CompletedProcess[str]:
    """Run kubectl as the admin (or with `kubeconfig`); a failure shows kubectl's stderr.

    The discovery cache lives in the workdir, not in ~/.kube/cache.
    """
    env = {
        **os.environ,
        "KUBECONFIG": str(kubeconfig or server.kubeconfig),
        "KUBECACHEDIR": str(server.workdir / "kubectl-cache"),
    }
    result = subprocess.run(
        [str(KUBECTL), *args],
        input=input,
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )
    if check and result.returncode != 0:
        error = subprocess.CalledProcessError(
            result.returncode, result.args, result.stdout, result.stderr
        )
        error.add_note(f"kubectl stderr: {result.stderr.strip()}")
        raise error
    return result


def service_account_kubeconfig(
    server: ApiServer, namespace: str, name: str, path: Path, *, duration_seconds: int = 3600
) -> Path:
    """Create ServiceAccount `namespace/name` (the namespace must exist) and write at `path` a
    kubeconfig that authenticates with a fresh token for it: a process using it has exactly
    the permissions RBAC grants that ServiceAccount.

    The token comes from the TokenRequest API (`kubectl create token`); this 1.25 build serves
    it, and no longer creates token Secrets for ServiceAccounts by itself.
    """
    manifest = {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {"name": name, "namespace": namespace},
    }
    kubectl(server, "apply", "-f", "-", input=json.dumps(manifest))
    token = kubectl(
        server, "create", "token", name, "-n", namespace, f"--duration={duration_seconds}s"
    ).stdout.strip()
    admin = lightkube.KubeConfig.from_file(server.kubeconfig).get()
    assert admin is not None
    ca_data = (
        admin.cluster.certificate_auth_data
        or base64.b64encode(server.ca_file.read_bytes()).decode()
    )
    user = f"system:serviceaccount:{namespace}:{name}"
    config = {  # JSON is YAML: kubectl, lightkube and kopf all read it
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "local",
                "cluster": {"server": admin.cluster.server, "certificate-authority-data": ca_data},
            }
        ],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [
            {"name": "local", "context": {"cluster": "local", "user": user, "namespace": namespace}}
        ],
        "current-context": "local",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.write_text(json.dumps(config, indent=2) + "\n")
    return path


DATA_DIR = "..data"
DATA_TMP = "..data_tmp"


def _timestamped_name() -> str:
    """`..2026_12_02_07_00_00.123456789`: the kubelet's name shape (UTC)."""
    now = time.time_ns()
    seconds, nanos = divmod(now, 1_000_000_000)
    return time.strftime("..%Y_%m_%d_%H_%M_%S", time.gmtime(seconds)) + f".{nanos:09d}"


class SecretVolume:
    """A Secret projected into `directory` the way the kubelet's AtomicWriter does it for a
    Secret volume (`optional: true`), so a process reading the directory sees real behaviour:

    - the files live in `..<timestamp>/`, `..data` is a symlink to it, and each key is a
      symlink `<key> -> ..data/<key>`;
    - an update writes a whole new `..<timestamp>/`, swaps `..data` atomically (a temporary
      symlink `..data_tmp` renamed over it), adds the symlinks of new keys, removes those of
      gone keys, then removes the previous timestamped directory;
    - an absent Secret is an empty volume (no keys), nothing is rewritten when nothing changed.
    """

    def __init__(
        self,
        kubeconfig: Path,
        namespace: str,
        name: str,
        directory: Path,
        *,
        default_mode: int = 0o400,
    ) -> None:
        self.kubeconfig = kubeconfig
        self.namespace = namespace
        self.name = name
        self.directory = directory
        self.default_mode = default_mode
        self.syncs = 0  # completed reads of the Secret (changed or not)
        self.last_error: BaseException | None = None  # of the `run` loop, cleared on success
        self._config = lightkube.KubeConfig.from_file(kubeconfig)
        self._lock = asyncio.Lock()

    def _client(self) -> lightkube.AsyncClient:
        # loopback server: never a proxy from the environment
        return lightkube.AsyncClient(config=self._config, trust_env=False)

    async def _read(self, client: lightkube.AsyncClient) -> dict[str, bytes]:
        try:
            secret = await client.get(Secret, self.name, namespace=self.namespace)
        except lightkube.ApiError as exc:
            if exc.status.code == 404:
                return {}
            raise
        return {key: base64.b64decode(value) for key, value in (secret.data or {}).items()}

    async def _sync(self, client: lightkube.AsyncClient) -> bool:
        async with self._lock:
            payload = await self._read(client)
            changed = self._write(payload)
            self.syncs += 1
            return changed

    async def sync_once(self) -> bool:
        """Read the Secret once and project it; True when the directory changed."""
        async with self._client() as client:
            return await self._sync(client)

    async def run(self, interval: float) -> None:
        """Sync every `interval` seconds until cancelled. Like the kubelet, a failed read
        (server stopped, RBAC) keeps the last contents; it is kept in `last_error`."""
        async with self._client() as client:
            while True:
                try:
                    await self._sync(client)
                    self.last_error = None
                except (lightkube.ApiError, httpx2.TransportError) as exc:
                    self.last_error = exc
                    log.warning("SecretVolume %s/%s: %r", self.namespace, self.name, exc)
                await asyncio.sleep(interval)

    @contextlib.asynccontextmanager
    async def running(self, interval: float = 0.2) -> AsyncIterator[SecretVolume]:
        """Sync once (as the kubelet does before the container starts), then keep syncing in
        a task until the block ends; an unexpected failure of the task is raised at the end."""
        await self.sync_once()
        task = asyncio.create_task(self.run(interval), name=f"secret-volume-{self.name}")
        try:
            yield self
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def keys(self) -> set[str]:
        """The keys a reader of the directory sees (the user-visible names)."""
        if not self.directory.is_dir():
            return set()
        return {p.name for p in self.directory.iterdir() if not p.name.startswith("..")}

    def _on_disk(self, ts_dir: Path) -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in ts_dir.iterdir()}

    def _write(self, payload: dict[str, bytes]) -> bool:
        """The AtomicWriter steps, in the kubelet's order."""
        for key in payload:
            if not key or key.startswith("..") or "/" in key:
                raise ValueError(f"invalid key for a volume: {key!r}")
        self.directory.mkdir(parents=True, exist_ok=True)
        data_link = self.directory / DATA_DIR
        old_name = str(data_link.readlink()) if data_link.is_symlink() else ""
        old_dir = self.directory / old_name if old_name else None
        if old_dir is not None and old_dir.is_dir() and self._on_disk(old_dir) == payload:
            return False

        new_name = _timestamped_name()
        new_dir = self.directory / new_name
        new_dir.mkdir(mode=0o700)
        for key, value in payload.items():
            file = new_dir / key
            file.write_bytes(value)
            file.chmod(self.default_mode)
        new_dir.chmod(0o755)

        tmp_link = self.directory / DATA_TMP
        tmp_link.unlink(missing_ok=True)
        tmp_link.symlink_to(new_name)
        tmp_link.replace(data_link)  # rename(2): atomic

        for key in payload:
            visible = self.directory / key
            if not visible.is_symlink():
                visible.symlink_to(f"{DATA_DIR}/{key}")
        for entry in self.directory.iterdir():
            if (
                entry.is_symlink()
                and entry.name not in payload
                and str(entry.readlink()) == f"{DATA_DIR}/{entry.name}"
            ):
                entry.unlink()
        if old_dir is not None and old_dir.is_dir() and not old_dir.is_symlink():
            shutil.rmtree(old_dir)
        return True


__all__ = [
    "ApiServer",
    "SecretVolume",
    "api_server",
    "kubectl",
    "service_account_kubeconfig",
]
