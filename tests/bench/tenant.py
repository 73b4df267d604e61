"""The PostgreSQL side of `make bench`: a throwaway control plane, one tenant, its articles.

`bench_tenant()` is a context manager used by `tests.bench.run`. On entry it creates a
control-plane database, migrates it with `python -m service migrate`, provisions a tenant the
way a developer does (`python -m service tenants create <slug> --postgres-admin-url ...`: its
own database and least-privilege role) and its owner (`users create-admin --tenant`). Articles
are written later, through the first berth server's HTTP API (`seed_articles`), so the rows are
exactly what the service itself writes. On exit the tenant (database and role) and the control
plane are dropped, however the run ended.

The admin URL comes from BENCH_POSTGRES_ADMIN_URL (default: the local trust-auth server).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support import own_redis_database

ADMIN_URL_ENV = "BENCH_POSTGRES_ADMIN_URL"
DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
ARTICLE_SLUG = "bench-article"  # the row that targets c, d and e fetch
ARTICLE_COUNT = 60  # enough for three full pages of 20 (target f)
TAGS = [f"tag-{n}" for n in range(8)]
TAGS_PER_ARTICLE = 3
OWNER_EMAIL = "owner@bench.example.com"
SETUP_TIMEOUT_SECONDS = 180.0
# One process serves the bench: a token outliving the longest run avoids re-login mid-run.
ACCESS_TOKEN_TTL_SECONDS = 4 * 3600


class TenantSetupError(RuntimeError):
    """The PostgreSQL fixture could not be created (message says which step)."""


@dataclass
class BenchTenant:
    """What servers need to reach the fixture; `env` goes into every berth server using it."""

    slug: str
    owner_email: str
    owner_password: str
    env: dict[str, str]
    tenant_dsn: str  # libpq URL with the tenant's own role (for the asyncpg reference app)
    seeded: bool = False
    tokens: dict[str, str] = field(default_factory=dict)


def _admin_url() -> str:
    return os.environ.get(ADMIN_URL_ENV, DEFAULT_ADMIN_URL)


def _database_url(admin_url: str, database: str, driver: str) -> str:
    from sqlalchemy import make_url

    url = make_url(admin_url).set(drivername=driver, database=database)
    return url.render_as_string(hide_password=False)


def _execute_admin(admin_url: str, statement: str) -> None:
    import psycopg

    try:
        with psycopg.connect(admin_url, autocommit=True, connect_timeout=10) as connection:
            connection.execute(statement.encode())  # our own literal SQL, no parameters
    except psycopg.Error as exc:
        raise TenantSetupError(f"PostgreSQL at {ADMIN_URL_ENV}: {exc}".strip()) from exc


def _run(step: list[str], env: Mapping[str, str], cwd: Path, log: Path) -> None:
    with log.open("ab") as out:
        result = subprocess.run(
            step, env=dict(env), cwd=cwd, stdout=out, stderr=out,
            timeout=SETUP_TIMEOUT_SECONDS, check=False,
        )  # fmt: skip
    if result.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:])
        raise TenantSetupError(f"{' '.join(step[1:])!r} exited {result.returncode}:\n{tail}")


def _tenant_dsn(registry_dir: Path, slug: str) -> str:
    from sqlalchemy import make_url

    entry = json.loads((registry_dir / f"{slug}.json").read_text())
    url = make_url(entry["database_url"]).set(drivername="postgresql")
    return url.render_as_string(hide_password=False)


@contextlib.contextmanager
def bench_tenant(workdir: Path, python: str, base_env: Mapping[str, str]) -> Iterator[BenchTenant]:
    """Create the control plane, the tenant, its owner and a Redis database of the run's own;
    drop them all on exit."""
    redis_base = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
    with own_redis_database(redis_base) as redis_url:
        yield from _bench_tenant(workdir, python, base_env, redis_url)


def _bench_tenant(
    workdir: Path, python: str, base_env: Mapping[str, str], redis_url: str
) -> Iterator[BenchTenant]:
    admin_url = _admin_url()
    suffix = secrets.token_hex(4)
    control_db = f"berth_bench_{suffix}"
    slug = f"bench-{suffix}"
    password = secrets.token_urlsafe(18)
    registry_dir = workdir / "tenants"
    env = {
        "BERTH_DATABASE__URL": _database_url(admin_url, control_db, "postgresql+asyncpg"),
        "BERTH_TENANTS__REGISTRY_DIR": str(registry_dir),
        "BERTH_REDIS__URL": redis_url,
        "BERTH_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
        "BERTH_AUTH__ACCESS_TOKEN_TTL_SECONDS": str(ACCESS_TOKEN_TTL_SECONDS),
    }
    setup_env = {**base_env, **env}
    log = workdir / "tenant-setup.log"
    _execute_admin(admin_url, f'CREATE DATABASE "{control_db}"')
    try:
        _run([python, "-m", "service", "migrate"], setup_env, workdir, log)
        create = [python, "-m", "service", "tenants", "create", slug]
        _run([*create, "--postgres-admin-url", admin_url], setup_env, workdir, log)
        try:
            owner = [python, "-m", "service", "users", "create-admin", "--email", OWNER_EMAIL]
            owner_env = {**setup_env, "BERTH_ADMIN_PASSWORD": password}
            _run([*owner, "--tenant", slug], owner_env, workdir, log)
            yield BenchTenant(
                slug=slug,
                owner_email=OWNER_EMAIL,
                owner_password=password,
                env=env,
                tenant_dsn=_tenant_dsn(registry_dir, slug),
            )
        finally:
            drop = [python, "-m", "service", "tenants", "delete", slug, "--drop"]
            _run([*drop, "--postgres-admin-url", admin_url], setup_env, workdir, log)
    finally:
        _execute_admin(admin_url, f'DROP DATABASE IF EXISTS "{control_db}" WITH (FORCE)')


# --- over HTTP, once a berth server using the fixture is up ------------------------------------


def _post_json(url: str, payload: Mapping[str, Any], headers: Mapping[str, str]) -> Any:
    request = urllib.request.Request(
        url,
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json", **headers},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        body = exc.read()[:300]
        raise TenantSetupError(f"POST {url} answered {exc.code}: {body!r}") from exc


def login(base_url: str, tenant: BenchTenant) -> dict[str, str]:
    """The owner's bearer header, from a real login (one per server: it has its own secret)."""
    return login_as(base_url, tenant.owner_email, tenant.owner_password)


def login_as(base_url: str, email: str, password: str) -> dict[str, str]:
    """The bearer header of one account, from a real login."""
    credentials = {"email": email, "password": password}
    tokens = _post_json(f"{base_url}/api/v1/auth/login", credentials, {})
    return {"Authorization": f"Bearer {tokens['access_token']}"}


def article_payload(number: int) -> dict[str, Any]:
    """Article `number` of the seed; number 0 is ARTICLE_SLUG, the row c, d, e and r fetch."""
    slug = ARTICLE_SLUG if number == 0 else f"bench-article-{number}"
    tags = [TAGS[(number + k) % len(TAGS)] for k in range(TAGS_PER_ARTICLE)]
    return {
        "title": f"Bench article {number}",
        "slug": slug,
        "body": "A paragraph of about the size of a short article. " * 20,
        "status": "published",
        "tags": tags,
    }


def post_article(base_url: str, article: Mapping[str, Any], headers: Mapping[str, str]) -> None:
    _post_json(f"{base_url}/api/v1/articles", article, headers)


def seed_articles(base_url: str, headers: Mapping[str, str]) -> None:
    """ARTICLE_COUNT published articles with TAGS_PER_ARTICLE tags each, via POST."""
    for number in range(ARTICLE_COUNT):
        post_article(base_url, article_payload(number), headers)


def prepare_server(base_url: str, tenant: BenchTenant) -> dict[str, str]:
    """Log in; the first server to get here also writes the articles."""
    headers = login(base_url, tenant)
    if not tenant.seeded:
        seed_articles(base_url, headers)
        tenant.seeded = True
    return headers
