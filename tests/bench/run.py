"""`make bench`: wrk against a bare FastAPI reference and against berth, side by side.

    python -m tests.bench.run                    # 5 interleaved rounds of 5 s per target
    python -m tests.bench.run --quick            # 1 round of 2 s (CI smoke)
    python -m tests.bench.run --rounds 7 --duration 10 --connections 128 --targets a,b
    python -m tests.bench.run --baseline /tmp/berth-main   # also berth from another checkout

Method (see docs/benchmarks.md): every server is one uvicorn process (uvloop, httptools, no
uvicorn access log) pinned to CPU 0; wrk is pinned to CPU 1 and only ever talks to 127.0.0.1.
Rounds are interleaved (a, b, a, b, ...) so drift of the machine hits every target alike, and
the reported figure per target is the median over rounds. Results are printed as a table and
written to `bench-results/latest.json`. The exit code is 0 whether or not a ratio target is
met: this is a measurement, not a test; a missed target is printed as MISSED.

Targets c-h, s and t run on a throwaway PostgreSQL control plane and tenant
(tests/bench/tenant.py), created at the start of the run and dropped at the end; s and t also
on a throwaway secantusdb (tests/bench/submissions.py, `:memory:`, a free port): s POSTs a
10-item JSON declaration (worker off), t reads the stats of a tenant database holding 5,000
processed submissions. Target r reads c's article over 200 tenants of their own databases
in rotation (tests/bench/rotation.py), on a server whose engine cache is smaller than that;
any failed request of r is an ERROR. For every berth server the run also reports RSS at
the end over RSS after its first warm-up, and its local cache's gauges beside their bounds
(tests/bench/measures.py). `--baseline TREE` adds, for each berth
target that is not a stall check, a twin served from another checkout of berth (its own
`.venv`, e.g. the last commit in a git worktree) on the same fixture, interleaved in the same
rounds, and prints each target over its twin: a before/after measured side by side.

Adding a target: append a `Target` to `TARGETS` and, if it has a goal, a `Ratio` to `RATIOS`;
see "Adding targets" in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

from tests.bench.measures import (
    MeasureError,
    RssSample,
    evaluate_memory,
    gauge_value,
    local_cache_bounds,
    local_cache_rows,
    rss_kib,
    server_pid,
)
from tests.bench.rotation import (
    ROTATION_TENANTS,
    TENANT_HEADER,
    BenchRotation,
    bench_rotation,
    check_rotation,
    rotation_script,
)
from tests.bench.submissions import (
    STATS,
    SUBMISSIONS,
    BenchMongo,
    MongoSetupError,
    bench_mongo,
    declaration_body,
    wrk_script,
)
from tests.bench.tenant import (
    ARTICLE_SLUG,
    BenchTenant,
    TenantSetupError,
    bench_tenant,
    login_as,
)
from tests.support import stop_process_group

REPO_ROOT = Path(__file__).resolve().parents[2]
RESULTS_PATH = REPO_ROOT / "bench-results" / "latest.json"
HOST = "127.0.0.1"  # loopback only, never anything else
SERVER_CPU = 0
CLIENT_CPU = 1
READY_TIMEOUT_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 10.0
SETUP_TIMEOUT_SECONDS = 180.0
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# Inherited variables that would change what is measured (a developer's shell, CI).
_SCRUBBED_ENV_PREFIXES = ("BERTH_", "OTEL_", "PROMETHEUS_MULTIPROC_DIR")


class BenchError(RuntimeError):
    """The benchmark cannot run (tool missing, server did not start); exits non-zero."""


# --- what is measured ------------------------------------------------------------------------


@dataclass(frozen=True)
class ServerSpec:
    """How to start one server: optional setup commands, then the long-running command."""

    command: list[str]
    env: dict[str, str]
    cwd: Path
    setup: list[list[str]] = field(default_factory=list)


BASELINE_SUFFIX = "0"  # target "c" measured on the baseline tree is "c0"


@dataclass(frozen=True)
class ServerContext:
    python: str
    port: int
    workdir: Path  # a fresh temp dir per server; removed at the end
    tenant: BenchTenant | None  # the PostgreSQL fixture, for servers with `needs_tenant`
    mongo: BenchMongo | None = None  # the secantusdb fixture, for servers with `needs_mongo`
    rotation: BenchRotation | None = None  # target r's tenants, for `needs_rotation`

    def require_tenant(self) -> BenchTenant:
        if self.tenant is None:
            raise BenchError("this server needs the PostgreSQL fixture (needs_tenant=True)")
        return self.tenant

    def require_mongo(self) -> BenchMongo:
        if self.mongo is None:
            raise BenchError("this server needs the MongoDB fixture (needs_mongo=True)")
        return self.mongo

    def require_rotation(self) -> BenchRotation:
        if self.rotation is None:
            raise BenchError("this server needs the rotation fixture (needs_rotation=True)")
        return self.rotation


@dataclass(frozen=True)
class Server:
    name: str
    build: Callable[[ServerContext], ServerSpec]
    ready_path: str
    # Run once after readiness with the base URL; returns headers every target of this
    # server sends (a bearer token). May seed rows or prime a cache.
    prepare: Callable[[str, ServerContext], Mapping[str, str]] | None = None
    needs_tenant: bool = False  # a PostgreSQL control plane, tenant and owner (tenant.py)
    needs_mongo: bool = False  # a secantusdb for the tenant's documents (submissions.py)
    needs_rotation: bool = False  # ROTATION_TENANTS tenants and a platform admin (rotation.py)


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    server: Server
    path: str
    headers: Mapping[str, str] = field(default_factory=dict)
    expect_status: int = 200
    method: str = "GET"
    body: bytes | None = None  # sent with every request (a wrk Lua script sets it)
    connections: int | None = None  # overrides --connections (the 256-connection checks)
    # wrk's own per-request timeout (2 s by default: a slower answer is a socket timeout)
    # and a floor under --duration, for a target that answers in seconds (t).
    wrk_timeout: float | None = None
    min_duration: float | None = None
    # A stall check: any non-2xx answer (a pool timeout is a 503) or socket error (wrk gives
    # up on a request after 2 s) in any round is a failure of the target's goal.
    must_not_stall: bool = False
    # Any non-2xx or socket error in any round fails the target's check and every ratio of
    # it (printed ERROR): fast 404s or 503s would only inflate its throughput.
    no_errors: bool = False
    # A wrk Lua script of the target's own, built from the server's context (r's rotation).
    script: Callable[[ServerContext], str] | None = None


@dataclass(frozen=True)
class Ratio:
    """`numerator` / `denominator` of a median metric, with a floor (or, `at_most`, a ceiling).

    Throughput ratios have floors (c/d >= 0.45); latency ratios have ceilings (p99 <= 3x).
    """

    name: str
    numerator: str
    denominator: str
    bound: float | None  # None: reported, no goal (a before/after comparison)
    metric: str = "requests_per_second"
    at_most: bool = False

    def met(self, value: float) -> bool:
        if self.bound is None:
            return True
        return value <= self.bound if self.at_most else value >= self.bound


def base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_SCRUBBED_ENV_PREFIXES)}
    env["PYTHONPATH"] = str(REPO_ROOT)
    return env


def uvicorn_command(ctx: ServerContext, app: str) -> list[str]:
    """A reference app served the way `python -m service serve` serves berth."""
    return [
        ctx.python, "-m", "uvicorn", app,
        "--host", HOST, "--port", str(ctx.port),
        "--loop", "uvloop", "--http", "httptools",
        "--no-access-log", "--workers", "1", "--log-level", "warning",
    ]  # fmt: skip


def build_reference(ctx: ServerContext) -> ServerSpec:
    command = uvicorn_command(ctx, "tests.bench.reference_app:app")
    return ServerSpec(command=command, env=base_env(), cwd=REPO_ROOT)


BERTH_READY_PATH = "/api/v1/health/live"


def _berth_spec(
    ctx: ServerContext, env_overrides: Mapping[str, str], setup: list[list[str]]
) -> ServerSpec:
    """berth exactly as production starts it: the CLI, JSON logs, stdout to a file."""
    env = base_env()
    env.update(
        {
            "BERTH_HTTP__HOST": HOST,
            "BERTH_HTTP__PORT": str(ctx.port),
            "BERTH_OBSERVABILITY__LOG_FORMAT": "json",
            **env_overrides,
        }
    )
    # cwd is the temp dir, so a developer's `.env` in the repository cannot leak in.
    return ServerSpec(
        command=[ctx.python, "-m", "service", "serve"], env=env, cwd=ctx.workdir, setup=setup
    )


def build_berth(ctx: ServerContext) -> ServerSpec:
    """berth on a migrated SQLite control plane: what `/api/v1/info` needs."""
    database = {"BERTH_DATABASE__URL": f"sqlite+aiosqlite:///{ctx.workdir / 'b.db'}"}
    return _berth_spec(ctx, database, setup=[[ctx.python, "-m", "service", "migrate"]])


def berth_postgres(name: str, *, cache: bool) -> Server:
    """berth on the PostgreSQL fixture (control plane, tenant, Redis), article cache on or off;
    logged in (and, first of all, seeding the articles) once ready."""

    def build(ctx: ServerContext) -> ServerSpec:
        env = {**ctx.require_tenant().env, "BERTH_CACHE__ENABLED": str(cache).lower()}
        return _berth_spec(ctx, env, setup=[])

    def prepare(base_url: str, ctx: ServerContext) -> Mapping[str, str]:
        from tests.bench.tenant import prepare_server

        return prepare_server(base_url, ctx.require_tenant())

    return Server(name, build, BERTH_READY_PATH, prepare=prepare, needs_tenant=True)


def berth_rotation(name: str) -> Server:
    """berth on the PostgreSQL fixture, cache off as for c, serving target r's tenants (a
    registry of its own, ENGINE_CACHE_SIZE below their number); logged in as the platform
    admin once ready, after checking that every tenant answers the article."""

    def build(ctx: ServerContext) -> ServerSpec:
        rotation = ctx.require_rotation()
        env = {**ctx.require_tenant().env, **rotation.env, "BERTH_CACHE__ENABLED": "false"}
        return _berth_spec(ctx, env, setup=[])

    def prepare(base_url: str, ctx: ServerContext) -> Mapping[str, str]:
        rotation = ctx.require_rotation()
        headers = login_as(base_url, rotation.admin_email, rotation.admin_password)
        check_rotation(base_url, headers, rotation.slugs)
        # The first tenant as a header: the one-request check and warm-up need a tenant;
        # r's script replaces it on every request.
        return {**headers, TENANT_HEADER: rotation.slugs[0]}

    return Server(name, build, BERTH_READY_PATH, prepare=prepare, needs_tenant=True,
                  needs_rotation=True)  # fmt: skip


def rotation_lua(ctx: ServerContext) -> str:
    return rotation_script(TENANT_HEADER, ctx.require_rotation().slugs)


# The submissions servers raise two rate limits, and only those: the 5,000-submission seed and
# target s write far beyond 120/minute, and their logins come after the article servers'
# (5/minute per account, counted in the shared Redis).
SUBMISSION_LIMITS = {
    "BERTH_RATE_LIMITS__WRITES_PER_PRINCIPAL": "100000000/hour",
    "BERTH_RATE_LIMITS__LOGIN_PER_ACCOUNT": "1000/minute",
}


def berth_mongo(
    name: str,
    *,
    database_prefix: str,
    worker: bool,
    seed: bool,
    extra_env: Mapping[str, str] | None = None,
) -> Server:
    """berth on the PostgreSQL fixture with the tenant's documents on the MongoDB fixture, in
    databases `<database_prefix><slug>` of their own; logged in once ready, and with `seed`,
    first of all filling the tenant's database (5,000 submissions, through the API)."""

    def build(ctx: ServerContext) -> ServerSpec:
        env = {
            **ctx.require_tenant().env,
            "BERTH_MONGO__URL": ctx.require_mongo().url,
            "BERTH_MONGO__DATABASE_PREFIX": database_prefix,
            "BERTH_SUBMISSIONS__WORKER_ENABLED": str(worker).lower(),
            **SUBMISSION_LIMITS,
            **(extra_env or {}),
        }
        return _berth_spec(ctx, env, setup=[])

    def prepare(base_url: str, ctx: ServerContext) -> Mapping[str, str]:
        from tests.bench.submissions import STATS_SUBMISSIONS, seed_submissions, time_direct_stats
        from tests.bench.tenant import login

        tenant, mongo = ctx.require_tenant(), ctx.require_mongo()
        headers = login(base_url, tenant)
        database = f"{database_prefix}{tenant.slug}"
        if seed and database_prefix not in mongo.seeded:
            print(f"  {name}: POSTing {STATS_SUBMISSIONS} submissions ...", flush=True)
            started = time.monotonic()
            seed_submissions(base_url, headers)
            mongo.seeded.add(database_prefix)
            print(f"  {name}: posted in {time.monotonic() - started:.0f} s")
            seconds = time_direct_stats(mongo, database)
            print(f"  {name}: the stats pipeline straight from pymongo: {seconds} s")
        return headers

    return Server(name, build, BERTH_READY_PATH, prepare=prepare, needs_tenant=True,
                  needs_mongo=True)  # fmt: skip


def on_tree(server: Server, tree: Path) -> Server:
    """`server` run from another checkout of berth: its own virtualenv and source tree."""
    python = tree / ".venv" / "bin" / "python"
    if not python.is_file():
        raise BenchError(f"--baseline {tree}: no {python} (run `make install` there first)")

    def build(ctx: ServerContext) -> ServerSpec:
        spec = server.build(dataclasses.replace(ctx, python=str(python)))
        return dataclasses.replace(spec, env={**spec.env, "PYTHONPATH": str(tree)})

    return dataclasses.replace(server, name=f"{server.name}-baseline", build=build)


def with_baseline(targets: Sequence[Target], tree: Path) -> tuple[list[Target], list[Ratio]]:
    """Each berth target (stall checks aside) followed by its twin on `tree`, and the ratio
    of the two; one baseline server per berth server."""
    twins: dict[str, Server] = {}
    selected: list[Target] = []
    ratios: list[Ratio] = []
    for target in targets:
        selected.append(target)
        if not target.server.name.startswith("berth") or target.must_not_stall:
            continue
        if target.server.needs_mongo and not has_submissions(tree):
            print(f"  {target.name}: no twin, {tree} has no submissions feature")
            continue
        server = twins.setdefault(target.server.name, on_tree(target.server, tree))
        twin = f"{target.name}{BASELINE_SUFFIX}"
        description = f"{target.description} [baseline]"
        selected.append(dataclasses.replace(target, name=twin, description=description,
                                            server=server))  # fmt: skip
        ratios.append(Ratio(f"{target.name}/{twin}", target.name, twin, bound=None))
        ratios.append(Ratio(f"{target.name}/{twin} p99", target.name, twin, bound=None,
                            metric="p99_ms"))  # fmt: skip
    return selected, ratios


def has_submissions(tree: Path) -> bool:
    return (tree / "service" / "submissions" / "router.py").is_file()


def build_reference_db(ctx: ServerContext) -> ServerSpec:
    from service.core.config import TenantSettings

    tenant_engine = TenantSettings()
    env = base_env()
    env["BENCH_REFERENCE_DSN"] = ctx.require_tenant().tenant_dsn
    # As many connections as one berth tenant engine may hold (pool + overflow).
    pool_max = tenant_engine.engine_pool_size + tenant_engine.engine_max_overflow
    env["BENCH_REFERENCE_POOL_MAX"] = str(pool_max)
    command = uvicorn_command(ctx, "tests.bench.reference_db_app:app")
    return ServerSpec(command=command, env=env, cwd=REPO_ROOT)


REFERENCE = Server(name="reference", build=build_reference, ready_path="/info")
BERTH = Server(name="berth", build=build_berth, ready_path=BERTH_READY_PATH)
REFERENCE_DB = Server(
    name="reference-db", build=build_reference_db, ready_path="/health", needs_tenant=True
)
BERTH_PG = berth_postgres("berth-pg", cache=True)
BERTH_PG_NO_CACHE = berth_postgres("berth-pg-nocache", cache=False)
BERTH_PG_ROTATION = berth_rotation("berth-pg-rotation")
# Two servers, two databases of the one tenant: s's grows while it is measured, t's holds
# exactly the 5,000 seeded submissions. Both run without the worker, so the queue does not
# compete with what is measured; t's submissions stay PENDING, which changes nothing for the
# aggregation (every stored item has its line value from the start). With the worker on,
# secantusdb processed ~1 submission a second with 4,500 queued (docs/benchmarks.md).
BERTH_MONGO_POST = berth_mongo("berth-mongo", database_prefix="bench_post_", worker=False,
                               seed=False)  # fmt: skip
# secantusdb takes seconds for that aggregation (docs/benchmarks.md, "Submissions"): the stats
# server waits for it up to STATS_TIMEOUT_SECONDS instead of answering 503 after 5 s.
STATS_TIMEOUT_SECONDS = 120
BERTH_MONGO_STATS = berth_mongo(
    "berth-mongo-stats",
    database_prefix="bench_stats_",
    worker=False,
    seed=True,
    extra_env={"BERTH_MONGO__TIMEOUT_SECONDS": str(STATS_TIMEOUT_SECONDS)},
)
SUBMISSION_BODY = declaration_body()
# t answers in seconds on secantusdb: one connection (more only queue in its one process) and
# long enough a run for a few answers per round.
STATS_CONNECTIONS = 1
STATS_MIN_DURATION = 30.0
JSON_HEADERS = {"Content-Type": "application/json"}

ARTICLE = f"/api/v1/articles/{ARTICLE_SLUG}"
REFERENCE_ARTICLE = f"/articles/{ARTICLE_SLUG}"
LIST_PAGE = "/api/v1/articles?limit=20"
STALL_CONNECTIONS = 256
TARGETS: list[Target] = [
    Target("a", "reference: bare FastAPI GET /info", REFERENCE, "/info"),
    Target("b", "berth GET /api/v1/info, full stack", BERTH, "/api/v1/info"),
    Target("c", "berth GET article by slug, cache off", BERTH_PG_NO_CACHE, ARTICLE),
    Target("d", "reference: same row, bare asyncpg pool", REFERENCE_DB, REFERENCE_ARTICLE),
    Target(
        "r",
        f"c for {ROTATION_TENANTS} tenants in rotation (X-Tenant-ID)",
        BERTH_PG_ROTATION,
        ARTICLE,
        no_errors=True,
        script=rotation_lua,
    ),
    Target("e", "berth GET article by slug, cache hit", BERTH_PG, ARTICLE),
    Target("f", "berth GET list page of 20 with tags", BERTH_PG, LIST_PAGE),
    Target(
        "g",
        "c at 256 connections (stall check)",
        BERTH_PG_NO_CACHE,
        ARTICLE,
        connections=STALL_CONNECTIONS,
        must_not_stall=True,
    ),
    Target(
        "h",
        "f at 256 connections (stall check)",
        BERTH_PG,
        LIST_PAGE,
        connections=STALL_CONNECTIONS,
        must_not_stall=True,
    ),
    Target(
        "s",
        "berth POST a 10-item JSON submission, worker off",
        BERTH_MONGO_POST,
        SUBMISSIONS,
        headers=JSON_HEADERS,
        expect_status=202,
        method="POST",
        body=SUBMISSION_BODY,
    ),
    Target(
        "t",
        "berth GET submission stats over 5,000",
        BERTH_MONGO_STATS,
        STATS,
        connections=STATS_CONNECTIONS,
        wrk_timeout=STATS_TIMEOUT_SECONDS,
        min_duration=STATS_MIN_DURATION,
    ),
]
RATIOS: list[Ratio] = [
    Ratio("b/a", numerator="b", denominator="a", bound=0.75),
    Ratio("c/d", numerator="c", denominator="d", bound=0.45),
    Ratio("c/d p99", numerator="c", denominator="d", bound=3.0, metric="p99_ms", at_most=True),
    Ratio("r/c", numerator="r", denominator="c", bound=0.5),
    Ratio("r0/c0", numerator="r0", denominator="c0", bound=None),  # the baseline's own r/c
    Ratio("e/b", numerator="e", denominator="b", bound=0.60),
    Ratio("f/b", numerator="f", denominator="b", bound=0.30),
    # Submissions: measured against /api/v1/info, no goal set yet.
    Ratio("s/b", numerator="s", denominator="b", bound=None),
    Ratio("s/b p99", numerator="s", denominator="b", bound=None, metric="p99_ms"),
    Ratio("t/b", numerator="t", denominator="b", bound=None),
    Ratio("t/b p99", numerator="t", denominator="b", bound=None, metric="p99_ms"),
]


# --- processes -------------------------------------------------------------------------------


def _pinned(cpu: int, command: Sequence[str]) -> list[str]:
    return ["taskset", "-c", str(cpu), *command]


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no output)"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


class RunningServer:
    """One server process in its own process group, output in files of its temp dir."""

    def __init__(
        self,
        server: Server,
        python: str,
        root: Path,
        tenant: BenchTenant | None,
        mongo: BenchMongo | None = None,
        rotation: BenchRotation | None = None,
    ) -> None:
        self.server = server
        self.workdir = root / server.name
        self.workdir.mkdir()
        self.port = free_port()
        self.context = ServerContext(
            python=python, port=self.port, workdir=self.workdir, tenant=tenant, mongo=mongo,
            rotation=rotation,
        )  # fmt: skip
        self.spec = server.build(self.context)
        self.headers: Mapping[str, str] = {}  # from `prepare`, sent by every target
        self.stdout_path = self.workdir / "stdout.log"
        self.stderr_path = self.workdir / "stderr.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self) -> None:
        for step in self.spec.setup:
            log_path = self.workdir / "setup.log"
            with log_path.open("ab") as log:
                result = subprocess.run(
                    step, env=self.spec.env, cwd=self.spec.cwd, stdout=log, stderr=log,
                    timeout=SETUP_TIMEOUT_SECONDS, check=False,
                )  # fmt: skip
            if result.returncode != 0:
                raise BenchError(
                    f"{self.server.name}: setup {' '.join(step[1:])!r} failed "
                    f"(exit {result.returncode}):\n{_tail(log_path)}"
                )
        # stdout (berth's JSON access log) goes to a file: writing it is part of the cost.
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.process = subprocess.Popen(
                _pinned(SERVER_CPU, self.spec.command),
                env=self.spec.env, cwd=self.spec.cwd, stdout=out, stderr=err,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
        self._wait_ready()
        if self.server.prepare is not None:
            try:
                self.headers = self.server.prepare(self.base_url, self.context)
            except (TenantSetupError, MongoSetupError) as exc:
                raise BenchError(f"{self.server.name}: preparing failed: {exc}") from exc

    def _wait_ready(self) -> None:
        url = self.base_url + self.server.ready_path
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise BenchError(
                    f"{self.server.name} exited with {self.process.returncode} before it was "
                    f"ready.\nstderr:\n{_tail(self.stderr_path)}\nstdout:\n"
                    f"{_tail(self.stdout_path)}"
                )
            with contextlib.suppress(OSError):
                if http_get(url)[0] == 200:
                    return
            time.sleep(0.1)
        raise BenchError(f"{self.server.name} not ready at {url} after {READY_TIMEOUT_SECONDS}s")

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def stop(self) -> None:
        if self.process is not None:
            stop_process_group(self.process, STOP_TIMEOUT_SECONDS)

    def output_lines(self) -> int:
        with contextlib.suppress(OSError), self.stdout_path.open("rb") as out:
            return sum(1 for _ in out)
        return 0


def http_get(
    url: str,
    headers: Mapping[str, str] | None = None,
    *,
    method: str = "GET",
    body: bytes | None = None,
    timeout: float = 2.0,
) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, headers=dict(headers or {}), method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@contextlib.contextmanager
def postgres_fixture(
    servers: Sequence[Server], python: str, root: Path
) -> Iterator[BenchTenant | None]:
    """The PostgreSQL tenant when a selected server needs it (dropped on exit), else None."""
    if not any(server.needs_tenant for server in servers):
        yield None
        return
    workdir = root / "postgres"
    workdir.mkdir()
    print("  creating the PostgreSQL control plane, tenant and owner ...", flush=True)
    try:
        with bench_tenant(workdir, python, base_env()) as tenant:
            print(f"  tenant {tenant.slug} ready", flush=True)
            yield tenant
    except TenantSetupError as exc:
        raise BenchError(f"PostgreSQL fixture: {exc}") from exc


@contextlib.contextmanager
def rotation_fixture(
    servers: Sequence[Server], python: str, root: Path, tenant: BenchTenant | None
) -> Iterator[BenchRotation | None]:
    """Target r's tenants when a selected server needs them (dropped on exit), else None."""
    if not any(server.needs_rotation for server in servers):
        yield None
        return
    if tenant is None:
        raise BenchError("the rotation fixture needs the PostgreSQL fixture (needs_tenant)")
    workdir = root / "rotation"
    workdir.mkdir()
    print(f"  creating {ROTATION_TENANTS} tenants for target r ...", flush=True)
    try:
        with bench_rotation(workdir, python, base_env(), tenant) as rotation:
            steps = ", ".join(f"{step} {seconds:g} s" for step, seconds in
                              rotation.setup_steps.items())  # fmt: skip
            print(f"  {ROTATION_TENANTS} tenants ready in {rotation.setup_seconds:g} s ({steps})")
            print(f"  r's ceiling, tenant switches straight from asyncpg (a new connection "
                  f"each): {rotation.direct_connects_per_second:g}/s", flush=True)  # fmt: skip
            yield rotation
        print(f"  {ROTATION_TENANTS} tenants dropped in {rotation.drop_seconds:g} s", flush=True)
    except TenantSetupError as exc:
        raise BenchError(f"rotation fixture: {exc}") from exc


@contextlib.contextmanager
def mongo_fixture(servers: Sequence[Server], root: Path) -> Iterator[BenchMongo | None]:
    """A throwaway secantusdb when a selected server needs it (stopped on exit), else None."""
    if not any(server.needs_mongo for server in servers):
        yield None
        return
    workdir = root / "mongo"
    workdir.mkdir()
    try:
        with bench_mongo(workdir) as mongo:
            print(f"  MongoDB (secantusdb, in memory) ready on {mongo.url}", flush=True)
            yield mongo
    except MongoSetupError as exc:
        raise BenchError(f"MongoDB fixture: {exc}") from exc


@contextlib.contextmanager
def running(servers: Sequence[Server], python: str) -> Iterator[dict[str, RunningServer]]:
    """Start every server; stop them all (process groups) however the block ends, then drop
    the PostgreSQL and MongoDB fixtures."""
    started: dict[str, RunningServer] = {}
    with (
        tempfile.TemporaryDirectory(prefix="berth-bench-") as tmp,
        postgres_fixture(servers, python, Path(tmp)) as tenant,
        rotation_fixture(servers, python, Path(tmp), tenant) as rotation,
        mongo_fixture(servers, Path(tmp)) as mongo,
    ):
        try:
            for server in servers:
                instance = RunningServer(server, python, Path(tmp), tenant, mongo, rotation)
                started[server.name] = instance
                instance.start()
                print(f"  {server.name} ready on {instance.base_url} (pid {instance.pid})")
            yield started
        finally:
            # A second Ctrl-C must not cut the cleanup short and leave servers running.
            previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in _STOP_SIGNALS}
            try:
                for instance in started.values():
                    instance.stop()
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


# --- wrk -------------------------------------------------------------------------------------


def ensure_wrk() -> str:
    """wrk's path; installs it with apt-get when it is missing, or raises BenchError."""
    found = shutil.which("wrk")
    if found:
        return found
    apt = shutil.which("apt-get")
    if apt is None:
        raise BenchError("wrk is not installed and apt-get is not available; install wrk")
    print("wrk not found; installing it with `apt-get install -y wrk` ...", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}

    def apt_get(*arguments: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [apt, *arguments], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
            check=False, timeout=600,
        )  # fmt: skip

    result = apt_get("install", "-y", "wrk")
    if result.returncode != 0:
        print("apt-get install failed; running `apt-get update` and retrying ...", flush=True)
        apt_get("update")
        result = apt_get("install", "-y", "wrk")
    found = shutil.which("wrk")
    if result.returncode != 0 or not found:
        detail = (result.stderr or b"").decode(errors="replace").strip().splitlines()[-3:]
        raise BenchError(
            "could not install wrk with `apt-get install -y wrk` (needs root and the Debian "
            "mirror): " + " | ".join(detail)
        )
    return found


def check_machine() -> None:
    if shutil.which("taskset") is None:
        raise BenchError("taskset is missing (Debian package util-linux)")
    cpus = os.sched_getaffinity(0)
    if not {SERVER_CPU, CLIENT_CPU} <= cpus:
        raise BenchError(
            f"needs CPUs {SERVER_CPU} (server) and {CLIENT_CPU} (wrk); this process may use "
            f"{sorted(cpus)}"
        )


_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
_LATENCY_LINE = re.compile(r"^\s*(\d+(?:\.\d+)?)%\s+(\d+(?:\.\d+)?)(us|ms|s|m|h)\s*$", re.M)
_RPS_LINE = re.compile(r"^Requests/sec:\s+(\d+(?:\.\d+)?)", re.M)
_TOTAL_LINE = re.compile(r"^\s*(\d+) requests in", re.M)
_NON_2XX_LINE = re.compile(r"Non-2xx or 3xx responses:\s+(\d+)")
_SOCKET_ERRORS = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")


@dataclass(frozen=True)
class WrkResult:
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    requests: int
    non_2xx: int
    socket_errors: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests_per_second": round(self.requests_per_second, 2),
            "p50_ms": round(self.p50_ms, 3),
            "p99_ms": round(self.p99_ms, 3),
            "requests": self.requests,
            "non_2xx": self.non_2xx,
            "socket_errors": self.socket_errors,
        }


def parse_wrk(output: str) -> WrkResult:
    """Parse `wrk --latency` output; latencies are converted to milliseconds."""
    rps = _RPS_LINE.search(output)
    total = _TOTAL_LINE.search(output)
    percentiles = {
        float(p): float(value) * _UNIT_MS[unit] for p, value, unit in _LATENCY_LINE.findall(output)
    }
    if rps is None or total is None or 50.0 not in percentiles or 99.0 not in percentiles:
        raise BenchError(f"could not parse wrk output:\n{output}")
    non_2xx = _NON_2XX_LINE.search(output)
    sockets = _SOCKET_ERRORS.search(output)
    return WrkResult(
        requests_per_second=float(rps.group(1)),
        p50_ms=percentiles[50.0],
        p99_ms=percentiles[99.0],
        requests=int(total.group(1)),
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=sum(int(n) for n in sockets.groups()) if sockets else 0,
    )


def wrk_command(
    wrk: str,
    url: str,
    duration: float,
    connections: int,
    headers: Mapping[str, str],
    script: Path | None = None,
    timeout: float | None = None,
) -> list[str]:
    command = [wrk, "-t1", f"-c{connections}", f"-d{duration:g}s", "--latency"]
    for name, value in headers.items():
        command += ["-H", f"{name}: {value}"]
    if script is not None:
        command += ["-s", str(script)]
    if timeout is not None:
        command += ["--timeout", f"{timeout:g}s"]
    command.append(url)
    return command


def script_for(
    target: Target, directory: Path, context: ServerContext | None = None
) -> Path | None:
    """The wrk Lua script of a target with a script of its own (built from `context`) or
    that is not a plain GET (method, body), else None."""
    if target.script is not None:
        if context is None:
            raise BenchError(f"target {target.name}: its script needs the server's context")
        text = target.script(context)
    elif target.method == "GET" and target.body is None:
        return None
    else:
        text = wrk_script(target.method, target.body)
    path = directory / f"{target.name}.lua"
    path.write_text(text, encoding="utf-8")
    return path


def run_wrk(
    wrk: str,
    url: str,
    duration: float,
    connections: int,
    headers: Mapping[str, str],
    script: Path | None = None,
    timeout: float | None = None,
) -> WrkResult:
    command = wrk_command(wrk, url, duration, connections, headers, script, timeout)
    process = subprocess.Popen(
        _pinned(CLIENT_CPU, command),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        output, _ = process.communicate(timeout=duration + (timeout or 2.0) + 30)
    finally:
        stop_process_group(process, 2.0)
    text = output.decode(errors="replace")
    if process.returncode != 0:
        raise BenchError(f"wrk exited with {process.returncode}:\n{text}")
    if script is not None and script_failed(text, script):
        raise BenchError(f"wrk could not run {script}:\n{text}")
    return parse_wrk(text)


def script_failed(output: str, script: Path) -> bool:
    """wrk reports a Lua error as `<script>: <error>` and then measures on without the
    script, exit status 0: plain requests that would pass for the target's own."""
    return any(line.startswith(f"{script}:") for line in output.splitlines())


# --- the run ---------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.bench.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per run (5)")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections (64)")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds before each run (1)")
    parser.add_argument("--quick", action="store_true", help="1 round of 2 s (CI smoke)")
    parser.add_argument("--targets", help="comma-separated target names (default: all)")
    parser.add_argument("--output", type=Path, default=RESULTS_PATH, help="results JSON path")
    parser.add_argument(
        "--baseline",
        type=Path,
        metavar="TREE",
        help="another checkout of berth (with its .venv) to measure side by side",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.duration = 1, 2.0
    if args.rounds < 1 or args.duration <= 0 or args.connections < 1 or args.warmup < 0:
        parser.error("--rounds, --duration and --connections must be positive")
    return args


def select_targets(names: str | None) -> list[Target]:
    if not names:
        return list(TARGETS)
    wanted = [name.strip() for name in names.split(",") if name.strip()]
    known = {target.name: target for target in TARGETS}
    unknown = [name for name in wanted if name not in known]
    if unknown:
        raise BenchError(f"unknown target(s) {unknown}; known: {sorted(known)}")
    return [known[name] for name in wanted]


def check_targets(targets: Sequence[Target], servers: Mapping[str, RunningServer]) -> None:
    """One request per target before measuring: a benchmark of 404s measures nothing."""
    for target in targets:
        server = servers[target.server.name]
        url = server.base_url + target.path
        status, body = http_get(
            url, headers_of(target, server), method=target.method, body=target.body,
            timeout=target.wrk_timeout or 2.0,
        )  # fmt: skip
        if status != target.expect_status:
            raise BenchError(
                f"target {target.name}: {target.method} {url} answered {status}, expected "
                f"{target.expect_status}: {body[:300]!r}"
            )
        print(
            f"  {target.name}: {target.method} {target.path} -> {status} "
            f"{body[:120].decode(errors='replace')}"
        )


def headers_of(target: Target, server: RunningServer) -> dict[str, str]:
    return {**server.headers, **target.headers}


def median_of(runs: Sequence[WrkResult]) -> dict[str, float]:
    return {
        "requests_per_second": round(statistics.median(r.requests_per_second for r in runs), 2),
        "p50_ms": round(statistics.median(r.p50_ms for r in runs), 3),
        "p99_ms": round(statistics.median(r.p99_ms for r in runs), 3),
    }


def evaluate_ratios(
    medians: Mapping[str, Mapping[str, float]],
    extra: Sequence[Ratio] = (),
    errors: Mapping[str, int] | None = None,
) -> list[dict[str, Any]]:
    """Each ratio whose two targets ran. `errors`: failed requests of the `no_errors`
    targets; a ratio of a target that had any is not met, whatever its value ("error")."""
    results = []
    for ratio in [*RATIOS, *extra]:
        if ratio.numerator not in medians or ratio.denominator not in medians:
            continue
        value = medians[ratio.numerator][ratio.metric] / medians[ratio.denominator][ratio.metric]
        failed = sum((errors or {}).get(name, 0) for name in (ratio.numerator, ratio.denominator))
        results.append(
            {
                "name": ratio.name,
                "metric": ratio.metric,
                "numerator": ratio.numerator,
                "denominator": ratio.denominator,
                "value": round(value, 3) if value >= 0.01 else float(f"{value:.3g}"),
                "bound": ratio.bound,
                "at_most": ratio.at_most,
                "errors": failed,
                "met": ratio.met(value) and failed == 0,
            }
        )
    return results


def failed_requests(
    targets: Sequence[Target], runs: Mapping[str, Sequence[WrkResult]]
) -> dict[str, int]:
    """Non-2xx answers plus socket errors over all rounds, per `no_errors` target."""
    return {
        t.name: sum(r.non_2xx + r.socket_errors for r in runs[t.name])
        for t in targets
        if t.no_errors
    }


def evaluate_stalls(
    targets: Sequence[Target],
    runs: Mapping[str, Sequence[WrkResult]],
    default_connections: int | None = None,
) -> list[dict[str, Any]]:
    """One verdict per stall-check or `no_errors` target: no non-2xx and no socket error in
    any round."""
    results = []
    for target in targets:
        if not (target.must_not_stall or target.no_errors):
            continue
        non_2xx = sum(r.non_2xx for r in runs[target.name])
        socket_errors = sum(r.socket_errors for r in runs[target.name])
        results.append(
            {
                "name": f"{target.name} {'no stall' if target.must_not_stall else 'no error'}",
                "target": target.name,
                "connections": target.connections or default_connections,
                "non_2xx": non_2xx,
                "socket_errors": socket_errors,
                "met": non_2xx == 0 and socket_errors == 0,
                # A failed stall check is a missed goal; a target that must answer without
                # error and did not is an ERROR of the measurement itself.
                "failure": "MISSED" if target.must_not_stall else "ERROR",
            }
        )
    return results


def print_table(
    targets: Sequence[Target],
    medians: Mapping[str, Mapping[str, float]],
    ratios: Sequence[Mapping[str, Any]],
    stalls: Sequence[Mapping[str, Any]] = (),
    out: TextIO = sys.stdout,
    memory: Sequence[Mapping[str, Any]] = (),
    local_cache: Sequence[Mapping[str, Any]] = (),
) -> None:
    width = max(len(t.description) for t in targets)
    header = f"{'target':<7} {'':<{width}} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8}"
    print("", header, "-" * len(header), sep="\n", file=out)
    for target in targets:
        m = medians[target.name]
        print(
            f"{target.name:<7} {target.description:<{width}} {m['requests_per_second']:>10.1f} "
            f"{m['p50_ms']:>8.2f} {m['p99_ms']:>8.2f}",
            file=out,
        )
    if ratios or stalls:
        print(file=out)
    for ratio in ratios:
        print(ratio_line(ratio), file=out)
    for stall in stalls:
        verdict = "met" if stall["met"] else stall.get("failure", "MISSED")
        print(
            f"check {stall['name']} at {stall['connections']} connections: "
            f"non-2xx {stall['non_2xx']}, socket errors {stall['socket_errors']}   {verdict}",
            file=out,
        )
    if memory or local_cache:
        print(file=out)
    for sample in memory:
        print(memory_line(sample), file=out)
    for cache in local_cache:
        print(local_cache_line(cache), file=out)


def ratio_line(ratio: Mapping[str, Any]) -> str:
    unit = "req/s" if ratio["metric"] == "requests_per_second" else ratio["metric"]
    text = f"ratio {ratio['name']} ({unit}) = {_ratio_text(ratio['value'])}"
    errors = ratio.get("errors", 0)
    if ratio["bound"] is not None:
        text += f"   target {'<=' if ratio['at_most'] else '>='} {ratio['bound']:.2f}"
    if errors:
        return f"{text}   ERROR ({errors} failed requests: the figure counts failures)"
    if ratio["bound"] is None:
        return text
    return f"{text}   {'met' if ratio['met'] else 'MISSED'}"


def memory_line(sample: Mapping[str, Any]) -> str:
    text = (
        f"memory {sample['server']}: RSS {sample['start_kib'] / 1024:.1f} MiB after warm-up, "
        f"{sample['end_kib'] / 1024:.1f} MiB at the end, end/start = {sample['ratio']:.3f}"
    )
    if sample["bound"] is None:
        return text
    return f"{text}   target <= {sample['bound']:.2f}   {'met' if sample['met'] else 'MISSED'}"


def local_cache_line(cache: Mapping[str, Any]) -> str:
    value = "n/a" if cache["value"] is None else f"{cache['value']:,.0f}"
    bound = "no setting" if cache["bound"] is None else f"{cache['bound']:,}"
    text = f"local cache {cache['server']}: {cache['gauge']} {value} (bound {bound})"
    if cache["met"] is None:
        return text
    return f"{text}   {'met' if cache['met'] else 'MISSED'}"


def _ratio_text(value: float) -> str:
    return f"{value:.3f}" if value >= 0.01 else f"{value:.3g}"  # t/b is ~1e-4


def git_commit(tree: Path) -> str | None:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=tree, capture_output=True, text=True,
            timeout=5, check=False,
        )  # fmt: skip
        if result.returncode == 0:
            return result.stdout.strip()
    return None


def wrk_version(wrk: str) -> str:
    result = subprocess.run([wrk, "--version"], capture_output=True, text=True, check=False)
    lines = (result.stdout or result.stderr).splitlines()
    return lines[0].strip() if lines else ""


class ServerProbes:
    """RSS of each berth server (after its first warm-up, after the last round) and its
    local cache gauge at the end (tests/bench/measures.py)."""

    def __init__(self) -> None:
        self.samples: dict[str, RssSample] = {}
        self.metrics: dict[str, str] = {}  # server name -> its /metrics text at the end
        self.evictions_start: dict[str, float | None] = {}

    def start(self, server: RunningServer) -> None:
        """Once per server, at its first measured run: what prepare and warm-up left."""
        name = server.server.name
        if not name.startswith("berth") or name in self.samples or server.pid is None:
            return
        try:
            pid = server_pid(server.pid, server.port)
            self.samples[name] = RssSample(pid, rss_kib(pid))
        except MeasureError as exc:
            raise BenchError(f"{name}: {exc}") from exc
        if server.server.needs_rotation:  # prepare's check of every tenant evicted too
            self.evictions_start[name] = gauge_value(self._metrics_of(server), ENGINE_EVICTIONS)

    @staticmethod
    def _metrics_of(server: RunningServer) -> str:
        status, body = http_get(server.base_url + METRICS_PATH, timeout=5.0)
        return body.decode(errors="replace") if status == 200 else ""

    def end(self) -> None:
        for name, sample in self.samples.items():
            try:
                self.samples[name] = dataclasses.replace(sample, end_kib=rss_kib(sample.pid))
            except MeasureError as exc:
                raise BenchError(f"{name}: {exc}") from exc

    def memory(self) -> list[dict[str, Any]]:
        judged = {name for name in self.samples if not name.endswith("-baseline")}
        return evaluate_memory(self.samples, judged)

    def read_metrics(self, servers: Mapping[str, RunningServer]) -> None:
        """Each berth server's /metrics, once, after the RSS at the end was read."""
        for name in self.samples:
            self.metrics[name] = self._metrics_of(servers[name])

    def local_caches(self, servers: Mapping[str, RunningServer]) -> list[dict[str, Any]]:
        rows = []
        for name, text in self.metrics.items():
            rows += local_cache_rows(name, text, local_cache_bounds(servers[name].spec.env))
        return rows

    def engine_evictions(self) -> dict[str, float | None]:
        """Tenant engines evicted (all reasons) by each rotation server during the rounds:
        proof that r's rotation made the engine cache evict, as it is meant to."""
        evicted: dict[str, float | None] = {}
        for name, before in self.evictions_start.items():
            after = gauge_value(self.metrics[name], ENGINE_EVICTIONS)
            evicted[name] = None if before is None or after is None else after - before
        return evicted


METRICS_PATH = "/metrics"  # on the API port: the bench sets no BERTH_OBSERVABILITY__METRICS_PORT
ENGINE_EVICTIONS = "berth_tenant_engine_evictions_total"


def run_rounds(
    args: argparse.Namespace,
    wrk: str,
    targets: Sequence[Target],
    started: Mapping[str, RunningServer],
    probes: ServerProbes,
) -> dict[str, list[WrkResult]]:
    runs: dict[str, list[WrkResult]] = {t.name: [] for t in targets}
    scripts = {
        t.name: script_for(t, started[t.server.name].workdir, started[t.server.name].context)
        for t in targets
    }
    for round_number in range(1, args.rounds + 1):
        for target in targets:
            server = started[target.server.name]
            url = server.base_url + target.path
            headers = headers_of(target, server)
            connections = target.connections or args.connections
            script, timeout = scripts[target.name], target.wrk_timeout
            duration = max(args.duration, target.min_duration or 0.0)
            # Not before a target that answers in seconds: a warm-up shorter than one answer
            # only leaves an abandoned request that the measured run would wait behind.
            if args.warmup > 0 and target.min_duration is None:
                run_wrk(wrk, url, args.warmup, connections, headers, script, timeout)
            probes.start(server)
            result = run_wrk(wrk, url, duration, connections, headers, script, timeout)
            runs[target.name].append(result)
            print_round(round_number, args.rounds, target.name, result)
    return runs


def print_round(number: int, rounds: int, name: str, result: WrkResult) -> None:
    flag = ""
    if result.non_2xx or result.socket_errors:
        flag = f"  (non-2xx {result.non_2xx}, socket errors {result.socket_errors})"
    print(
        f"  round {number}/{rounds} {name}: {result.requests_per_second:>9.1f} req/s  "
        f"p50 {result.p50_ms:6.2f} ms  p99 {result.p99_ms:6.2f} ms{flag}",
        flush=True,
    )


def bench(args: argparse.Namespace) -> dict[str, Any]:
    check_machine()
    wrk = ensure_wrk()
    targets = select_targets(args.targets)
    comparisons: list[Ratio] = []
    if args.baseline is not None:
        targets, comparisons = with_baseline(targets, args.baseline.resolve())
    servers = list({t.server.name: t.server for t in targets}.values())
    probes = ServerProbes()
    print(
        f"bench: {args.rounds} round(s) x {args.duration:g} s, {args.connections} connections, "
        f"server on CPU {SERVER_CPU}, wrk on CPU {CLIENT_CPU}"
    )
    with running(servers, sys.executable) as started:
        check_targets(targets, started)
        runs = run_rounds(args, wrk, targets, started, probes)
        probes.end()
        probes.read_metrics(started)
        local_cache = probes.local_caches(started)
        evictions = probes.engine_evictions()
        output_lines = {name: s.output_lines() for name, s in started.items()}
        contexts = [s.context for s in started.values()]
        direct_stats = next((c.mongo.direct_stats_seconds for c in contexts if c.mongo), {})
        rotation = next((c.rotation for c in contexts if c.rotation), None)
    medians = {name: median_of(results) for name, results in runs.items()}
    ratios = evaluate_ratios(medians, comparisons, failed_requests(targets, runs))
    stalls = evaluate_stalls(targets, runs, args.connections)
    memory = probes.memory()
    print_table(targets, medians, ratios, stalls, memory=memory, local_cache=local_cache)
    for name, count in evictions.items():
        shown = "n/a" if count is None else f"{count:,.0f}"
        print(f"tenant engines {name}: {shown} evicted after its first warm-up")
    print_rotation_ceiling(rotation, medians)
    return {
        **run_header(args, wrk),
        "targets": {t.name: target_json(t, args, medians, runs) for t in targets},
        "server_stdout_lines": output_lines,
        "mongo_direct_stats_seconds": direct_stats,
        "rotation_fixture": rotation_json(rotation),
        "tenant_engine_evictions": evictions,
        "ratios": ratios,
        "stall_checks": stalls,
        "memory": memory,
        "local_cache": local_cache,
    }


def run_header(args: argparse.Namespace, wrk: str) -> dict[str, Any]:
    return {
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "git_commit": git_commit(REPO_ROOT),
        "baseline": (
            {"tree": str(args.baseline), "git_commit": git_commit(args.baseline)}
            if args.baseline is not None
            else None
        ),
        "python": platform.python_version(),
        "wrk": wrk_version(wrk),
        "settings": {
            "rounds": args.rounds,
            "duration_seconds": args.duration,
            "warmup_seconds": args.warmup,
            "connections": args.connections,
            "wrk_threads": 1,
            "server_cpu": SERVER_CPU,
            "client_cpu": CLIENT_CPU,
        },
    }


def target_json(
    target: Target,
    args: argparse.Namespace,
    medians: Mapping[str, Mapping[str, float]],
    runs: Mapping[str, Sequence[WrkResult]],
) -> dict[str, Any]:
    return {
        "description": target.description,
        "server": target.server.name,
        "method": target.method,
        "path": target.path,
        "connections": target.connections or args.connections,
        "duration_seconds": max(args.duration, target.min_duration or 0.0),
        "median": medians[target.name],
        "rounds": [r.as_dict() for r in runs[target.name]],
    }


def print_rotation_ceiling(rotation: BenchRotation | None, medians: Mapping[str, Any]) -> None:
    """r and its twin over the tenant switches asyncpg alone managed (`time_direct_connects`)."""
    if rotation is None or not rotation.direct_connects_per_second:
        return
    ceiling = rotation.direct_connects_per_second
    over_c = ""
    if "c" in medians:
        over_c = f" (the ceiling over c: {ceiling / medians['c']['requests_per_second']:.3f})"
    for name in ("r", "r0"):
        if name in medians:
            share = medians[name]["requests_per_second"] / ceiling
            print(f"{name} / its ceiling of {ceiling:g} new connections/s = {share:.3f}{over_c}")


def rotation_json(rotation: BenchRotation | None) -> dict[str, Any] | None:
    if rotation is None:
        return None
    return {
        "tenants": len(rotation.slugs),
        "engine_cache_size": int(rotation.env["BERTH_TENANTS__ENGINE_CACHE_SIZE"]),
        "setup_seconds": rotation.setup_seconds,
        "setup_steps_seconds": rotation.setup_steps,
        "drop_seconds": rotation.drop_seconds,
        "direct_connects_per_second": rotation.direct_connects_per_second,
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # Ctrl-C, `kill -INT` (even when inherited as ignored, as in background jobs) and SIGTERM
    # all unwind through `running()`, which stops the servers' process groups.
    for sig in _STOP_SIGNALS:
        signal.signal(sig, _interrupt)
    try:
        results = bench(args)
    except BenchError as exc:
        print(f"bench: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bench: interrupted; servers stopped, nothing written", file=sys.stderr)
        return 130
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    verdicts = [*results["ratios"], *results["stall_checks"]]
    missed = [r["name"] for r in verdicts if not r["met"]]
    # `met` is None for a cache without its gauge (n/a): not a miss.
    missed += [f"memory {m['server']}" for m in results["memory"] if not m["met"]]
    missed += [f"{c['gauge']} {c['server']}" for c in results["local_cache"] if c["met"] is False]
    print(f"\nresults written to {args.output}")
    if missed:
        print(f"MISSED: {', '.join(missed)} (a measurement, exit code stays 0)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
