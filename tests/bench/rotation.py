"""Target r's fixture: ROTATION_TENANTS tenants, each its own database holding the article.

`bench_rotation()` is a context manager used by `tests.bench.run`, inside the PostgreSQL
fixture (tests/bench/tenant.py: it shares the control plane, Redis and JWT secret). On entry:

1. a platform admin in the control plane (`users create-admin`, no `--tenant`): target r
   sends its one token and names the tenant with `X-Tenant-ID`, rotating over all of them;
2. the first tenant exactly as a developer makes one (`tenants create --postgres-admin-url`:
   its database, least-privilege role, migrations, registry entry), in a registry directory
   of its own, so the servers of the other targets do not see these tenants;
3. the article written into it through the HTTP API of a short-lived berth server, so the
   row is what the service writes (the same payload as the main tenant's `bench-article`);
4. the other tenants cloned from it, which is what keeps the setup to seconds: their roles
   in one statement, then on a few connections at once `CREATE DATABASE ... TEMPLATE` (no
   migration run per tenant), CONNECT revoked from PUBLIC and granted to the tenant's role,
   and the copied tables given to that role (a clone's tables would still be the first
   tenant's); then one registry entry each, written with the service's own `write_entry`.

On exit every database and role is dropped (`IF EXISTS`, so after a failure or Ctrl-C at
any step too), with SIGINT/SIGTERM ignored meanwhile: a second Ctrl-C must not leave 200
databases behind.
"""

from __future__ import annotations

import contextlib
import secrets
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from tests.bench.submissions import _lua_string
from tests.bench.tenant import (
    ARTICLE_SLUG,
    BenchTenant,
    TenantSetupError,
    _admin_url,
    _execute_admin,
    _run,
    article_payload,
    login_as,
    post_article,
)
from tests.support import free_port, stop_process_group

ROTATION_TENANTS = 200
# Pinned below ROTATION_TENANTS (it is TenantSettings' default today), so a rotation over
# every tenant evicts engines whatever the default becomes. Under rotation each engine holds
# about one connection; with a baseline twin both servers' 32 fit max_connections 100 only if
# the idle one gives its connections back (ROTATION_ENGINE_IDLE_SECONDS).
ROTATION_ENGINE_CACHE_SIZE = 32
# A rotation server idle while its baseline twin runs gives its connections back within a few
# seconds (the idle sweep runs every registry poll): at the default 300 s both servers' 32
# connections, beside every other server's pools, filled max_connections 100, and the twin
# measured PostgreSQL refusing connections ("remaining connection slots are reserved"). Under
# rotation an engine is evicted for capacity long before it could be idle this long.
ROTATION_ENGINE_IDLE_SECONDS = 2.0
ADMIN_EMAIL = "platform-admin@bench.example.com"
TENANT_HEADER = "X-Tenant-ID"
# FILE_COPY copies the template's files. WAL_LOG, PostgreSQL 15's default, writes every
# block of every clone (7.5 MB, mostly catalogs) to the WAL and to shared buffers, which the
# DROP DATABASE checkpoints then flush: measured here 10 s to create the 199 clones and 19 s
# to drop the 200, against 8-9 s and 5-6 s with FILE_COPY.
CLONE_STRATEGY = "FILE_COPY"
# CREATE DATABASE is serialised by its checkpoints (2 or 12 connections: both ~9 s); a few
# connections overlap the GRANTs and ownership changes with it.
CLONE_THREADS = 6
READY_TIMEOUT_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 10.0
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@dataclass
class BenchRotation:
    """What the servers of target r need: the tenants, the admin, and their registry."""

    slugs: list[str]
    admin_email: str
    admin_password: str
    env: dict[str, str]  # on top of the PostgreSQL fixture's env
    setup_seconds: float = 0.0
    setup_steps: dict[str, float] = field(default_factory=dict)  # seconds per step
    drop_seconds: float | None = None
    direct_connects_per_second: float = 0.0  # `time_direct_connects`


def rotation_env(registry_dir: Path) -> dict[str, str]:
    """What a rotation server runs with on top of c's settings."""
    return {
        "BERTH_TENANTS__REGISTRY_DIR": str(registry_dir),
        "BERTH_TENANTS__ENGINE_CACHE_SIZE": str(ROTATION_ENGINE_CACHE_SIZE),
        "BERTH_TENANTS__ENGINE_IDLE_SECONDS": str(ROTATION_ENGINE_IDLE_SECONDS),
    }


def rotation_slugs(prefix: str, count: int = ROTATION_TENANTS) -> list[str]:
    return [f"{prefix}-{number:03d}" for number in range(count)]


def rotation_script(header: str, values: Sequence[str]) -> str:
    """A wrk Lua script sending wrk's request (method, path, `-H` headers) with `header` set
    to each of `values` in turn. The requests are formatted once per thread in `init`
    (wrk.headers and wrk.host are set by then), so rotating costs wrk one table lookup.

    The header's name is a local: `headers[[[X-Tenant-ID]]]` would be read by Lua as a call
    `headers [[...` with a long string, a syntax error."""
    items = ",\n".join(f"  {_lua_string(value)}" for value in values)
    return f"""-- {len(values)} values of {header} in rotation
local values = {{
{items}
}}
local header = {_lua_string(header)}
local requests = {{}}
local position = 0

function init(args)
  for index, value in ipairs(values) do
    local headers = {{}}
    for name, existing in pairs(wrk.headers) do
      headers[name] = existing
    end
    headers[header] = value
    requests[index] = wrk.format(nil, nil, headers)
  end
end

function request()
  position = position % #requests + 1
  return requests[position]
end
"""


# --- PostgreSQL ---------------------------------------------------------------------------


def _quoted(name: str) -> str:
    # Role and database names come from tenant_names(): [a-z0-9_] only, never user input.
    return f'"{name}"'


def _create_roles(roles: Sequence[str], passwords: Sequence[str]) -> None:
    """Every role in one statement string (one round trip), passwords SCRAM-hashed by libpq
    as service/tenants/postgres.py sends them. The membership lets an admin that is not a
    superuser give each role its database and tables (harmless for a superuser)."""
    import psycopg

    statements = []
    try:
        with psycopg.connect(_admin_url(), autocommit=True, connect_timeout=10) as connection:
            for role, password in zip(roles, passwords, strict=True):
                hashed = connection.pgconn.encrypt_password(
                    password.encode(), role.encode(), b"scram-sha-256"
                ).decode()
                statements.append(f"CREATE ROLE {_quoted(role)} WITH LOGIN PASSWORD '{hashed}'")
            statements.append(f"GRANT {', '.join(_quoted(r) for r in roles)} TO CURRENT_USER")
            connection.execute(";\n".join(statements).encode())
    except psycopg.Error as exc:
        raise TenantSetupError(f"creating the rotation roles: {exc}".strip()) from exc


def _give_tables_sql(old_owner: str, new_owner: str) -> str:
    """Run inside a clone: its tables (indexes follow) become its own role's."""
    return f"""DO $$
DECLARE item record;
BEGIN
  FOR item IN SELECT c.oid::regclass AS name FROM pg_class c
      JOIN pg_namespace n ON n.oid = c.relnamespace
      WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
        AND c.relowner = '{old_owner}'::regrole
  LOOP
    EXECUTE format('ALTER TABLE %s OWNER TO %I', item.name, '{new_owner}');
  END LOOP;
END $$"""


def _clone(template: str, template_role: str, name: str) -> None:
    """Database `name` (owned by role `name`) as a copy of `template`, closed to others."""
    from service.tenants.postgres import libpq_url

    admin = _admin_url()
    _execute_admin(admin, f"CREATE DATABASE {_quoted(name)} TEMPLATE {_quoted(template)} "
                          f"OWNER {_quoted(name)} STRATEGY {CLONE_STRATEGY}")  # fmt: skip
    _execute_admin(
        admin,
        f"REVOKE CONNECT ON DATABASE {_quoted(name)} FROM PUBLIC; "
        f"GRANT CONNECT ON DATABASE {_quoted(name)} TO {_quoted(name)}",
    )
    _execute_admin(libpq_url(admin, name), _give_tables_sql(template_role, name))


def _in_parallel(work: Callable[[str], None], names: Sequence[str]) -> None:
    """`work(name)` for each name on CLONE_THREADS threads; on any failure or Ctrl-C the
    names not started yet are dropped from the queue (the caller's cleanup drops the rest)."""
    pool = ThreadPoolExecutor(CLONE_THREADS)
    try:
        for future in [pool.submit(work, name) for name in names]:
            future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _drop_all(databases: Sequence[str], roles: Sequence[str]) -> list[str]:
    """Drop what exists of `databases`, then `roles`; returns what could not be dropped."""
    admin = _admin_url()
    failed: list[str] = []
    lock = threading.Lock()

    def drop_database(name: str) -> None:
        try:
            _execute_admin(admin, f"DROP DATABASE IF EXISTS {_quoted(name)} WITH (FORCE)")
        except TenantSetupError:
            with lock:
                failed.append(f"database {name}")

    _in_parallel(drop_database, databases)
    for role in roles:  # one by one: a role still owning something must not block the rest
        try:
            _execute_admin(admin, f"DROP ROLE IF EXISTS {_quoted(role)}")
        except TenantSetupError:
            failed.append(f"role {role}")
    return failed


@contextlib.contextmanager
def _stop_signals_ignored() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in _STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# --- the article, written by a short-lived berth server ------------------------------------


def _status(url: str, headers: Mapping[str, str] | None = None) -> int:
    request = urllib.request.Request(url, headers=dict(headers or {}))
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def _wait_live(base_url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:])
            raise TenantSetupError(f"the seeding server exited with {process.returncode}:\n{tail}")
        with contextlib.suppress(OSError):
            if _status(f"{base_url}/api/v1/health/live") == 200:
                return
        time.sleep(0.1)
    raise TenantSetupError(f"the seeding server was not live after {READY_TIMEOUT_SECONDS} s")


def _seed_template(
    python: str, env: Mapping[str, str], workdir: Path, slug: str, password: str
) -> None:
    """POST the article into tenant `slug` through berth's API, then stop the server (its
    connections to the database must be gone before the database is a template)."""
    port = free_port()
    server_env = {**env, "BERTH_HTTP__HOST": "127.0.0.1", "BERTH_HTTP__PORT": str(port)}
    log = workdir / "seed-server.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [python, "-m", "service", "serve"], env=server_env, cwd=workdir, stdout=out,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
    try:
        base_url = f"http://127.0.0.1:{port}"
        _wait_live(base_url, process, log)
        headers = {**login_as(base_url, ADMIN_EMAIL, password), TENANT_HEADER: slug}
        post_article(base_url, article_payload(0), headers)
    finally:
        stop_process_group(process, STOP_TIMEOUT_SECONDS)


def check_rotation(base_url: str, headers: Mapping[str, str], slugs: Sequence[str]) -> None:
    """Every tenant answers the article (a rotation over 404s would measure nothing)."""
    path = f"{base_url}/api/v1/articles/{ARTICLE_SLUG}"
    wrong = {slug: code for slug in slugs
             if (code := _status(path, {**headers, TENANT_HEADER: slug})) != 200}  # fmt: skip
    if wrong:
        sample = dict(list(wrong.items())[:5])
        raise TenantSetupError(f"{len(wrong)} of {len(slugs)} tenants did not answer 200: {sample}")


# --- the fixture ----------------------------------------------------------------------------


@contextlib.contextmanager
def bench_rotation(
    workdir: Path, python: str, base_env: Mapping[str, str], tenant: BenchTenant
) -> Iterator[BenchRotation]:
    """Create the admin and ROTATION_TENANTS tenants; drop their databases and roles on exit."""
    from service.tenants.postgres import tenant_names

    started = time.monotonic()
    slugs = rotation_slugs(f"rot-{secrets.token_hex(4)}")
    names = [tenant_names(slug).database for slug in slugs]  # role and database: same name
    registry_dir = workdir / "tenants"
    env = rotation_env(registry_dir)
    rotation = BenchRotation(slugs, ADMIN_EMAIL, secrets.token_urlsafe(18), env)
    setup_env = {**base_env, **tenant.env, **env, "BERTH_CACHE__ENABLED": "false"}
    try:
        _create(rotation, python, setup_env, workdir, names)
        rotation.setup_seconds = round(time.monotonic() - started, 1)
        rotation.direct_connects_per_second = time_direct_connects(registry_dir, slugs)
        yield rotation
    finally:
        dropping = time.monotonic()
        with _stop_signals_ignored():
            failed = _drop_all(names, names)
        rotation.drop_seconds = round(time.monotonic() - dropping, 1)
        if failed:
            print(f"bench: could not drop {', '.join(failed)}", file=sys.stderr)


def _create(
    rotation: BenchRotation, python: str, env: dict[str, str], workdir: Path, names: list[str]
) -> None:
    log = workdir / "rotation-setup.log"
    first, template = rotation.slugs[0], names[0]
    passwords = [secrets.token_urlsafe(32) for _ in names[1:]]
    admin = [python, "-m", "service", "users", "create-admin", "--email", rotation.admin_email]
    admin_env = {**env, "BERTH_ADMIN_PASSWORD": rotation.admin_password}
    create = [python, "-m", "service", "tenants", "create", first, "--postgres-admin-url",
              _admin_url()]  # fmt: skip
    registry_dir = Path(env["BERTH_TENANTS__REGISTRY_DIR"])
    steps: list[tuple[str, Callable[[], None]]] = [
        ("admin", partial(_run, admin, admin_env, workdir, log)),
        ("first tenant", partial(_run, create, env, workdir, log)),
        ("article", partial(_seed_template, python, env, workdir, first, rotation.admin_password)),
        ("roles", partial(_create_roles, names[1:], passwords)),
        ("clones", partial(_in_parallel, partial(_clone, template, template), names[1:])),
        ("registry", partial(_register_clones, registry_dir, rotation.slugs, passwords)),
    ]
    for step, work in steps:
        started = time.monotonic()
        work()
        rotation.setup_steps[step] = round(time.monotonic() - started, 2)


def time_direct_connects(registry_dir: Path, slugs: Sequence[str]) -> float:
    """Tenant switches per second straight from asyncpg, with berth's servers idle: for each
    tenant in turn a new connection as its own role, `SELECT 1`, close;
    ROTATION_ENGINE_CACHE_SIZE at a time, three times round after one unmeasured round.

    A tenant is a database and a connection cannot change database, so with more tenants in
    rotation than PostgreSQL can hold connections, each request of r needs a new one: this
    is the ceiling of r however lean berth is (docs/benchmarks.md, "Why r misses"). Not the
    article's statements: on a new backend every relation, function and operator a query
    names is first looked up in the catalogs, so the ceiling takes the fewest.
    """
    import asyncio

    import asyncpg

    from service.tenants.registry import entry_path
    from service.tenants.schemas import TenantEntry
    from tests.support import asyncpg_dsn

    dsns = [asyncpg_dsn(TenantEntry.model_validate_json(entry_path(registry_dir, slug)
            .read_bytes()).database_url.get_secret_value()) for slug in slugs]  # fmt: skip

    async def switch(dsn: str, room: asyncio.Semaphore) -> None:
        async with room:
            connection = await asyncpg.connect(dsn)
            try:
                await connection.fetchval("SELECT 1")
            finally:
                await connection.close()

    async def rotate() -> float:
        room = asyncio.Semaphore(ROTATION_ENGINE_CACHE_SIZE)
        # Unmeasured: a database's first backend also writes its relation cache file.
        await asyncio.gather(*(switch(dsn, room) for dsn in dsns))
        started = time.perf_counter()
        await asyncio.gather(*(switch(dsn, room) for dsn in dsns * 3))
        return round(3 * len(dsns) / (time.perf_counter() - started), 1)

    return asyncio.run(rotate())


def _register_clones(registry_dir: Path, slugs: Sequence[str], passwords: Sequence[str]) -> None:
    """A registry entry per clone: the first tenant's (status, schema version) with the
    clone's own database URL."""
    from pydantic import SecretStr

    from service.tenants.postgres import tenant_database_url, tenant_names
    from service.tenants.registry import entry_path, write_entry
    from service.tenants.schemas import TenantEntry

    first = TenantEntry.model_validate_json(entry_path(registry_dir, slugs[0]).read_bytes())
    for slug, password in zip(slugs[1:], passwords, strict=True):
        url = tenant_database_url(_admin_url(), tenant_names(slug), password)
        entry = first.model_copy(update={"slug": slug, "database_url": SecretStr(url)})
        write_entry(registry_dir, entry)
