"""Test helpers that are not fixtures: service discovery, a TCP relay, free ports."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
import os
import shutil
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import pytest
from pydantic import BaseModel
from sqlalchemy import Connection

if TYPE_CHECKING:
    from service.tenants.schemas import TenantEntry

T = TypeVar("T")

IS_CI = os.environ.get("CI", "").lower() == "true"
PG_ADMIN_URL = os.environ.get(
    "BERTH_TEST_DATABASE_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("BERTH_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def unavailable(what: str, why: object) -> NoReturn:
    """Fail under CI=true, skip loudly elsewhere: a missing service is never a silent pass."""
    message = f"{what} is not reachable ({why}); CI requires it"
    if IS_CI:
        pytest.fail(message, pytrace=False)
    pytest.skip(f"SKIPPED LOUDLY: {message}")


# Each run takes a Redis database of its own (1..15), claimed by a key with a TTL in database 0
# of the base URL, flushed before and after: runs never see each other's keys, and none are
# left behind (db 0 holds only the claim, while the run lasts).
REDIS_CLAIM_PREFIX = "berth-test:redis-db:"
REDIS_CLAIM_SECONDS = 3 * 3600


def redis_url_with(url: str, *, port: int | None = None, database: int | None = None) -> str:
    """`url` with another port (a relay on 127.0.0.1) and/or database number."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    credentials = parts.netloc.rpartition("@")[0]
    netloc = (
        parts.netloc
        if port is None
        else f"{credentials}{'@' if credentials else ''}127.0.0.1:{port}"
    )
    path = parts.path if database is None else f"/{database}"
    return urlunsplit((parts.scheme, netloc, path, parts.query, parts.fragment))


@contextlib.contextmanager
def own_redis_database(base_url: str) -> Iterator[str]:
    """The URL of a Redis database claimed for this run, flushed before and after, and
    released at the end (the test suite and the benchmark both run in one)."""
    import redis

    admin = redis.Redis.from_url(redis_url_with(base_url, database=0), socket_connect_timeout=2)
    try:
        number = _claim_database(admin, uuid.uuid4().hex)
        url = redis_url_with(base_url, database=number)
        own = redis.Redis.from_url(url)
        own.flushdb()
        try:
            yield url
        finally:
            own.flushdb()
            own.close()
            admin.delete(f"{REDIS_CLAIM_PREFIX}{number}")
    finally:
        admin.close()


def _claim_database(admin: Any, run_id: str) -> int:
    databases = int(admin.config_get("databases")["databases"])
    for number in range(1, databases):
        if admin.set(f"{REDIS_CLAIM_PREFIX}{number}", run_id, nx=True, ex=REDIS_CLAIM_SECONDS):
            return number
    raise RuntimeError(f"every Redis database 1..{databases - 1} is claimed by another run")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class TcpRelay:
    """A real TCP forwarder on a fixed local port that can be taken down and brought back.

    Lets a test make PostgreSQL or Redis unreachable (a closed port) and reachable again
    without touching the real servers.
    """

    def __init__(self, target_host: str, target_port: int, listen_port: int | None = None):
        self.target = (target_host, target_port)
        self.port = listen_port or free_port()
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)

    async def stop(self) -> None:
        """Close the port and cut every relayed connection."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._writers):
            writer.close()
        for task in list(self._pipes):
            task.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._writers.update((writer, up_writer))
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pipe(source, sink))
            self._pipes.add(task)
            task.add_done_callback(self._pipes.discard)

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()
        sink.close()
        self._writers.discard(sink)


@contextlib.asynccontextmanager
async def relay(target_host: str, target_port: int) -> AsyncIterator[TcpRelay]:
    proxy = TcpRelay(target_host, target_port)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.stop()


def json_lines(output: str) -> list[dict[str, object]]:
    """Parse the JSON log lines of captured stdout; anything else is a test failure."""
    import json

    return [json.loads(line) for line in output.splitlines() if line.strip()]


def assert_envelope(response: Any, status: int, name: str, path: str) -> dict[str, Any]:
    """Assert `response` is the standard error envelope; return its body."""
    from datetime import datetime

    from service.core.errors import ErrorEnvelope

    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    body: dict[str, Any] = response.json()
    ErrorEnvelope.model_validate(body)
    assert body["success"] is False
    assert body["statusCode"] == status
    assert body["name"] == name
    assert body["path"] == path
    assert body["correlationId"] == response.headers["x-request-id"]
    assert body["timestamp"].endswith("Z"), body["timestamp"]  # berth's one timestamp format
    offset = datetime.fromisoformat(body["timestamp"]).utcoffset()
    assert offset is not None
    assert offset.total_seconds() == 0
    return body


class OtlpReceiver:
    """A real OTLP/HTTP endpoint on 127.0.0.1 that keeps the spans it receives."""

    def __init__(self) -> None:
        import http.server
        import threading

        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
        )

        self.spans: list[Any] = []
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                request = ExportTraceServiceRequest.FromString(body)
                for resource_spans in request.resource_spans:
                    for scope_spans in resource_spans.scope_spans:
                        receiver.spans.extend(scope_spans.spans)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                return

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> OtlpReceiver:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.shutdown()
        self._server.server_close()


def service_env(**overrides: str) -> dict[str, str]:
    """The environment for a `python -m service` subprocess: no BERTH_* from outside."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BERTH_")}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env.update(overrides)
    return env


# Real processes: the CLI, migrations and the server exactly as they run in a container.

REPOSITORY = Path(__file__).resolve().parent.parent
# Where scripts/install-test-tools puts what no package manager has (helm; checkov's venv).
TOOLS_DIRS = (REPOSITORY / ".tools" / "bin", REPOSITORY / ".tools" / "checkov" / "bin")


# ../shared/schemas beside the checkout, else the workplace's (a clone elsewhere on this
# machine, as CI's may be); absent, a test skips loudly, or fails under CI.
SCHEMAS_DIRS = (
    REPOSITORY.parent / "shared" / "schemas",
    Path(os.environ.get("BERTH_SHARED_DIR", "/work/shared")) / "schemas",
)


def schema_file(name: str) -> Path:
    """A schema from the shared schemas; absent, the test skips loudly (fails under CI)."""
    for directory in SCHEMAS_DIRS:
        if (directory / name).is_file():
            return directory / name
    unavailable(f"the schema {name} (in {' or '.join(map(str, SCHEMAS_DIRS))})", "absent")


def require_tool(name: str) -> Path:
    """A command-line tool the tests run for real: the project's .tools, the venv's bin (the
    PyPI ones: hadolint, kubernetes-validate, check-jsonschema), then PATH. Fails under
    CI=true when it is missing (`make test-tools` installs it), skips loudly elsewhere."""
    venv_bin = Path(sys.executable).parent
    for directory in (*TOOLS_DIRS, venv_bin):
        if (directory / name).is_file():
            return directory / name
    found = shutil.which(name)
    if found is None:
        unavailable(f"{name} (make test-tools installs it)", "not installed")
    return Path(found)


def setting_path(
    name: str, model: type[BaseModel] | None = None, prefix: str | None = None
) -> tuple[str, ...] | None:
    """The settings field an environment variable sets (BERTH_HTTP__HOST -> ("http",
    "host")), or None: pydantic-settings ignores unknown names, so a typo is silent.
    `model`/`prefix`: another settings class (the operator's, BERTH_OPERATOR__)."""
    from service.core.config import ENV_NESTED_DELIMITER, ENV_PREFIX, Settings

    model, prefix = model or Settings, prefix or ENV_PREFIX
    if not name.startswith(prefix):
        return None
    path = tuple(part.lower() for part in name.removeprefix(prefix).split(ENV_NESTED_DELIMITER))
    current: type[BaseModel] = model
    for depth, part in enumerate(path):
        info = current.model_fields.get(part)
        if info is None:
            return None
        annotation = info.annotation
        is_group = isinstance(annotation, type) and issubclass(annotation, BaseModel)
        if depth == len(path) - 1:
            return None if is_group else path
        if not is_group:
            return None
        assert isinstance(annotation, type)
        current = annotation
    return None


def asyncpg_dsn(url: str) -> str:
    """A SQLAlchemy `postgresql+asyncpg://` URL as a DSN that asyncpg.connect accepts."""
    from sqlalchemy import make_url

    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def process_env(**overrides: str) -> dict[str, str]:
    """`service_env` for a process started in a tmp dir (so no `.env` is read either).

    Also drops OTEL_* (tracing stays off) and puts the repository on PYTHONPATH, so that
    `python -m tests...` modules import from any working directory.
    """
    env = {k: v for k, v in service_env().items() if not k.startswith("OTEL_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPOSITORY), env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(overrides)
    return env


def stop_process_group(process: subprocess.Popen[Any], timeout: float) -> None:
    """SIGTERM the process group, then SIGKILL what is left after `timeout`; reaped."""
    if process.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


class Spawned:
    """A process started in its own session (process group), output kept in files."""

    def __init__(self, args: list[str], *, env: dict[str, str], cwd: Path, name: str) -> None:
        import subprocess

        self.args = args
        self.stdout_path = cwd / f"{name}.stdout"
        self.stderr_path = cwd / f"{name}.stderr"
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.process = subprocess.Popen(
                args, env=env, cwd=cwd, stdout=out, stderr=err, start_new_session=True
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def running(self) -> bool:
        return self.process.poll() is None

    def stdout(self) -> str:
        return self.stdout_path.read_text(encoding="utf-8", errors="replace")

    def stderr(self) -> str:
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")

    def events(self) -> list[dict[str, object]]:
        """The JSON log lines on stdout, in order."""
        return json_lines(self.stdout())

    def describe(self) -> str:
        return (
            f"{' '.join(self.args)} (exit {self.process.poll()})\n"
            f"--- stdout ---\n{self.stdout()[-4000:]}\n--- stderr ---\n{self.stderr()[-4000:]}"
        )

    async def wait(self, timeout: float) -> int:
        """The exit code; fails (and kills the group) if it takes longer than `timeout`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (code := self.process.poll()) is None:
            if loop.time() > deadline:
                self.kill()
                pytest.fail(f"still running after {timeout} s: {self.describe()}", pytrace=False)
            await asyncio.sleep(0.05)
        return code

    def signal(self, signum: int) -> None:
        """Send `signum` to the process itself (not its group), as a container runtime does."""
        self.process.send_signal(signum)

    def kill(self) -> None:
        """SIGKILL the whole process group and reap the leader; safe to call twice."""
        import signal

        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(Exception):
            self.process.wait(timeout=10)


async def wait_until_live(base_url: str, server: Spawned, timeout: float = 30) -> None:
    """Poll the liveness probe until it answers 200; fail early if the server exits."""
    import httpx

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    async with httpx.AsyncClient(base_url=base_url, timeout=1) as client:
        while loop.time() < deadline:
            if not server.running():
                pytest.fail(f"server exited before it was live: {server.describe()}", pytrace=False)
            with contextlib.suppress(httpx.TransportError):
                if (await client.get("/api/v1/health/live")).status_code == 200:
                    return
            await asyncio.sleep(0.1)
    pytest.fail(f"server not live within {timeout} s: {server.describe()}", pytrace=False)


async def connection_refused(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a new TCP connection to host:port is refused right now."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout=1)
    except ConnectionRefusedError:
        return True
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return False


def migrations_head() -> str | None:
    """The head revision of berth's migration scripts."""
    from alembic.script import ScriptDirectory

    from service.db.migrate import alembic_config

    return ScriptDirectory.from_config(alembic_config()).get_current_head()


# Identity: settings for fast Argon2, users with a known password, bearer headers.

FAST_ARGON2: dict[str, int] = {
    "argon2_time_cost": 1,
    "argon2_memory_kib": 8,
    "argon2_parallelism": 1,
}
TEST_PASSWORD = "correct horse battery staple"


@dataclasses.dataclass(frozen=True)
class KnownUser:
    """A user inserted by `create_user`, with the password it was given."""

    id: uuid.UUID
    email: str
    password: str
    role: str
    tenant_slug: str | None


def identity_groups(database_url: str, **groups: Any) -> dict[str, Any]:
    """Settings groups for an app on `database_url` with fast Argon2 (merged into any `auth`
    given) and, unless `rate_limits` is given, rate limiting off."""
    auth = {**FAST_ARGON2, **groups.pop("auth", {})}
    rate_limits = groups.pop("rate_limits", {"enabled": False})
    return {"database": {"url": database_url}, "auth": auth, "rate_limits": rate_limits, **groups}


async def create_user(
    app: Any,
    *,
    role: str = "member",
    tenant_slug: str | None = None,
    email: str | None = None,
    password: str = TEST_PASSWORD,
    is_active: bool = True,
) -> KnownUser:
    """Insert a user through the service's own code path into a started app's database.

    Tenant roles default to tenant "acme"; the hash uses the app's Argon2 parameters.
    """
    from service.container import container_of
    from service.identity.principal import Role
    from service.identity.users_service import NewUser, provision_user

    if role != Role.PLATFORM_ADMIN and tenant_slug is None:
        tenant_slug = "acme"
    email = email or f"{role.replace('_', '-')}-{uuid.uuid4().hex[:10]}@example.com"
    new = NewUser(email=email, password=password, role=Role(role), tenant_slug=tenant_slug)
    container = container_of(app)
    async with container.control_plane.sessions.write.begin() as session:
        user = await provision_user(session, container.identity.passwords, new)
        user.is_active = is_active
    return KnownUser(user.id, email, password, role, tenant_slug)


def bearer(app: Any, user: KnownUser, *, token_version: int = 0) -> dict[str, str]:
    """An Authorization header for `user`, minted by the app's own codec (no login call)."""
    from service.container import container_of

    token = container_of(app).identity.tokens.issue(
        user_id=user.id,
        tenant_slug=user.tenant_slug,
        role=user.role,
        token_version=token_version,
        family_id=uuid.uuid4(),
    )
    return {"Authorization": f"Bearer {token.token}"}


async def run_sync_on(url: str, work: Callable[[Connection], T]) -> T:
    """Run synchronous database work (an inspector, Alembic's comparison) on a connection of
    its own to `url`, disposed afterwards."""
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(url)
    try:
        async with engine.connect() as connection:
            return await connection.run_sync(work)
    finally:
        await engine.dispose()


# pg_constraint.contype -> the kind the tests name.
PG_CONSTRAINT_KINDS = {"p": "PRIMARY KEY", "u": "UNIQUE", "c": "CHECK", "f": "FOREIGN KEY"}


def set_tenants(app: Any, *entries: TenantEntry) -> None:
    """Make `entries` the whole tenant registry of a started app: its registry directory
    rewritten, and read again at once (rather than at the watcher's next poll)."""
    from service.container import container_of
    from service.tenants.registry import write_entry

    registry = container_of(app).tenancy.registry
    registry.directory.mkdir(parents=True, exist_ok=True)
    for stale in registry.directory.glob("*.json"):
        stale.unlink()
    for entry in entries:
        write_entry(registry.directory, entry)
    registry.refresh()


def tenant_entry(slug: str, **fields: Any) -> TenantEntry:
    """A registry entry for rules that never open the tenant's database."""
    from service.tenants.schemas import TenantEntry

    return TenantEntry(slug=slug, database_url=f"sqlite+aiosqlite:///{slug}.db", **fields)


async def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll `condition` every 10 ms; fail the test if it is not true within `timeout`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            pytest.fail("condition not met in time", pytrace=False)
        await asyncio.sleep(0.01)


def metric_value(app: Any, name: str, **labels: str) -> float:
    """A sample of the app's own registry, as a scrape would read it (0 when absent)."""
    from service.container import container_of

    value = container_of(app).core.metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def eventually(probe: Callable[[], Any], timeout: float = 5.0, pause: float = 0.02) -> Any:
    """The first truthy result of `probe` (sync or async), polled until `timeout`;
    AssertionError after."""

    async def value() -> Any:
        result = probe()
        return await result if inspect.isawaitable(result) else result

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last = await value()
    while not last:
        if loop.time() > deadline:
            raise AssertionError(f"not true within {timeout} s (last: {last!r})")
        await asyncio.sleep(pause)
        last = await value()
    return last


def run_service_cli(args: list[str], env: dict[str, str], cwd: Path) -> None:
    """Run `python -m service <args>` to completion; a non-zero exit fails the test."""
    result = subprocess.run(
        [sys.executable, "-m", "service", *args], env=env, cwd=cwd,
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr


MetricSamples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape_metrics(base_url: str) -> MetricSamples:
    """A served process's /metrics samples by (name, sorted labels)."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    async with httpx.AsyncClient(base_url=base_url, timeout=5) as client:
        response = await client.get("/metrics")
    assert response.status_code == 200, response.text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }
