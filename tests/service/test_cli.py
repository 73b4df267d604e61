"""`python -m service ...` as a real subprocess, with a controlled environment.

Every command runs with cwd in a tmp dir (no `.env`) and an environment without any BERTH_*
variable from outside (`process_env`); each test sets exactly what it needs.
"""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from service import package_version
from service.cli import EXIT_CONFIG
from service.core.config import DEFAULT_SQLITE_URL
from tests.conftest import SpawnFactory
from tests.support import (
    connection_refused,
    free_port,
    migrations_head,
    process_env,
    wait_until_live,
)

HEAD = migrations_head()
SAFE_SECRET = "k" * 48
PRODUCTION = {
    "BERTH_ENVIRONMENT": "production",
    "BERTH_DATABASE__URL": "postgresql+asyncpg://berth@db.internal:5432/berth",
    "BERTH_REDIS__URL": "redis://redis.internal:6379/0",
    "BERTH_MONGO__URL": "mongodb://mongo.internal:27017",
    "BERTH_AUTH__JWT_SECRET": SAFE_SECRET,
    "BERTH_PAGINATION__CURSOR_SECRET": "c" * 48,
}
JWT = "BERTH_AUTH__JWT_SECRET"
CURSOR = "BERTH_PAGINATION__CURSOR_SECRET"
MONGO = "BERTH_MONGO__URL"
CORS = "BERTH_HTTP__CORS_ORIGINS"
DOCS = "BERTH_HTTP__DOCS_ENABLED"
DATABASE = "BERTH_DATABASE__URL"
REDIS = "BERTH_REDIS__URL"


def run_cli(
    *args: str, cwd: Path, settings: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service", *args],
        env=process_env(**(settings or {})),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def production(*, drop: tuple[str, ...] = (), **changes: str) -> dict[str, str]:
    settings = {k: v for k, v in PRODUCTION.items() if k not in drop}
    settings.update(changes)
    return settings


def offending_variables(stderr: str) -> set[str]:
    """The variables a one-line refusal leads with: `berth: VAR: why; VAR: why`.

    Only a variable that opens a problem counts (the reasons mention others, e.g. the opt-in).
    """
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("berth: "), stderr
    return set(re.findall(r"(?:^|; )(BERTH_\w+): ", lines[0].removeprefix("berth: ")))


def test_check_config_accepts_the_local_defaults(tmp_path: Path) -> None:
    """Real `python -m service check-config`, nothing configured."""
    result = run_cli("check-config", cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "configuration ok (environment=local)"
    assert result.stderr == ""


UNSAFE_PRODUCTION = [
    pytest.param(production(drop=(JWT,)), {JWT}, id="default-jwt-secret"),
    pytest.param(production(**{JWT: "s" * 31}), {JWT}, id="jwt-secret-under-32-bytes"),
    pytest.param(
        production(**{CORS: "*", "BERTH_HTTP__CORS_ALLOW_CREDENTIALS": "true"}),
        {CORS},
        id="cors-wildcard-with-credentials",
    ),
    pytest.param(production(**{DOCS: "true"}), {DOCS}, id="docs-without-opt-in"),
    pytest.param(production(**{DATABASE: DEFAULT_SQLITE_URL}), {DATABASE}, id="sqlite-url"),
    pytest.param(production(drop=(REDIS,)), {REDIS}, id="no-redis-url"),
    pytest.param(
        {"BERTH_ENVIRONMENT": "production"},
        {JWT, DATABASE, REDIS, CURSOR, MONGO},
        id="all-local-defaults",
    ),
]


@pytest.mark.parametrize(("settings", "offending"), UNSAFE_PRODUCTION)
def test_check_config_refuses_unsafe_production_settings_in_one_line_naming_each_variable(
    tmp_path: Path, settings: dict[str, str], offending: set[str]
) -> None:
    """Real `python -m service check-config` under BERTH_ENVIRONMENT=production."""
    result = run_cli("check-config", cwd=tmp_path, settings=settings)

    assert result.returncode == EXIT_CONFIG == 2
    assert offending_variables(result.stderr) == offending
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


SAFE_PRODUCTION = [
    pytest.param(production(), id="postgres-redis-48-char-secret"),
    pytest.param(
        production(**{DOCS: "true", "BERTH_HTTP__DOCS_ALLOW_IN_PRODUCTION": "true"}),
        id="docs-opted-in",
    ),
    pytest.param(
        production(
            **{CORS: "https://app.example.com", "BERTH_HTTP__CORS_ALLOW_CREDENTIALS": "true"}
        ),
        id="listed-origins-with-credentials",
    ),
]


@pytest.mark.parametrize("settings", SAFE_PRODUCTION)
def test_check_config_accepts_a_safe_production_configuration(
    tmp_path: Path, settings: dict[str, str]
) -> None:
    """Real `python -m service check-config` under BERTH_ENVIRONMENT=production."""
    result = run_cli("check-config", cwd=tmp_path, settings=settings)

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "configuration ok (environment=production)"


def test_an_invalid_value_is_one_line_naming_the_variable_without_a_traceback(
    tmp_path: Path,
) -> None:
    """Real `python -m service check-config` with BERTH_HTTP__PORT=abc."""
    result = run_cli("check-config", cwd=tmp_path, settings={"BERTH_HTTP__PORT": "abc"})

    assert result.returncode == 2
    assert offending_variables(result.stderr) == {"BERTH_HTTP__PORT"}
    assert "Traceback" not in result.stderr


async def test_serve_refuses_an_unsafe_production_config_without_binding_the_port(
    spawn: SpawnFactory,
) -> None:
    """Real `python -m service serve` process, production with SQLite and no Redis."""
    port = free_port()
    env = process_env(BERTH_HTTP__PORT=str(port), **production(**{DATABASE: DEFAULT_SQLITE_URL}))
    server = spawn("-m", "service", "serve", env=env, name="serve")

    code = await server.wait(timeout=30)

    assert code == 2, server.describe()
    assert offending_variables(server.stderr()) == {DATABASE}
    assert "Traceback" not in server.stderr()
    assert "Uvicorn running" not in server.stdout()
    assert "startup_complete" not in server.stdout()
    assert await connection_refused(port)


def test_check_config_show_prints_json_alone_with_every_secret_masked(tmp_path: Path) -> None:
    """Real `python -m service check-config --show` with secrets and passwords set: stdout is
    one JSON document (parseable as is), the verdict goes to stderr, URLs keep all but their
    password."""
    db_password = "db-pass-5f1c9e"
    redis_password = "redis-pass-8a2d41"
    secret = "jwt-secret-" + "q" * 40
    settings = production(
        **{
            JWT: secret,
            DATABASE: f"postgresql+asyncpg://berth:{db_password}@db.internal:5432/berth",
            REDIS: f"redis://:{redis_password}@redis.internal:6379/0",
        }
    )

    result = run_cli("check-config", "--show", cwd=tmp_path, settings=settings)

    assert result.returncode == 0, result.stderr
    output = result.stdout + result.stderr
    for value in (secret, db_password, redis_password):
        assert value not in output
    shown = json.loads(result.stdout)
    assert result.stderr.strip() == "configuration ok (environment=production)"
    assert shown["environment"] == "production"
    assert shown["auth"]["jwt_secret"] == "**********"
    assert shown["pagination"]["cursor_secret"] == "**********"
    assert shown["database"]["url"] == "postgresql+asyncpg://berth:***@db.internal:5432/berth"
    assert shown["redis"]["url"] == "redis://:***@redis.internal:6379/0"
    assert shown["redis"]["required"] is True


def test_check_config_show_says_what_local_mode_really_uses(tmp_path: Path) -> None:
    """Nothing configured: a SQLite URL holds no secret and is shown as is, and without a
    Redis URL nothing waits for Redis, so `required` is false."""
    result = run_cli("check-config", "--show", cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["database"]["url"] == DEFAULT_SQLITE_URL
    assert shown["redis"] == {**shown["redis"], "url": None, "required": False}


def assert_openapi_document(text: str) -> dict[str, object]:
    document = json.loads(text)
    assert document["info"]["title"] == "berth"
    assert document["info"]["version"] == package_version()
    assert {tag["name"] for tag in document["tags"]} >= {"health", "info"}
    assert "/api/v1/info" in document["paths"]
    return dict(document)


async def test_openapi_prints_the_document_and_writes_it_with_o(tmp_path: Path) -> None:
    """Real `python -m service openapi` and `openapi -o file`, run side by side."""
    target = tmp_path / "openapi.json"
    printed, written = await asyncio.gather(
        asyncio.to_thread(run_cli, "openapi", cwd=tmp_path),
        asyncio.to_thread(run_cli, "openapi", "-o", str(target), cwd=tmp_path),
    )

    assert printed.returncode == 0, printed.stderr
    assert written.returncode == 0, written.stderr
    assert written.stdout == ""
    assert assert_openapi_document(target.read_text()) == assert_openapi_document(printed.stdout)


def test_openapi_is_generated_inside_a_production_configured_environment(tmp_path: Path) -> None:
    """Real `python -m service openapi` with a safe production config (docs off there)."""
    result = run_cli("openapi", cwd=tmp_path, settings=production())

    assert result.returncode == 0, result.stderr
    assert_openapi_document(result.stdout)


def sqlite_state(path: Path) -> tuple[set[str], list[str]]:
    with sqlite3.connect(path) as connection:
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master")}
        versions = [row[0] for row in connection.execute("SELECT version_num FROM alembic_version")]
    connection.close()
    return tables, versions


def test_migrate_creates_the_sqlite_file_at_head_and_downgrades_to_base(tmp_path: Path) -> None:
    """Real `python -m service migrate` on the default relative SQLite URL, cwd a tmp dir."""
    database = tmp_path / "data" / "berth.db"  # DEFAULT_SQLITE_URL, relative to the cwd
    assert not database.exists()

    up = run_cli("migrate", cwd=tmp_path, settings={"BERTH_OBSERVABILITY__LOG_FORMAT": "json"})

    assert up.returncode == 0, up.stderr
    assert database.is_file()
    tables, versions = sqlite_state(database)
    assert {"users", "alembic_version", "ix_users_tenant_slug"} <= tables
    assert versions == [HEAD]
    applied = [json.loads(line) for line in up.stdout.splitlines() if "migrations_applied" in line]
    assert [event["revision"] for event in applied] == [HEAD]

    down = run_cli("migrate", "--downgrade", "base", cwd=tmp_path)

    assert down.returncode == 0, down.stderr
    tables, versions = sqlite_state(database)
    assert "users" not in tables
    assert versions == []


def test_migrate_check_passes_only_at_the_images_head_and_changes_nothing(
    tmp_path: Path,
) -> None:
    """What the pods' init container runs: it must not migrate, only look."""
    before = run_cli("migrate", "--check", cwd=tmp_path)

    assert before.returncode == 1
    assert f"this image needs {HEAD}" in before.stderr
    assert "no revision" in before.stderr
    with sqlite3.connect(tmp_path / "data" / "berth.db") as connection:  # nothing applied
        assert connection.execute("SELECT name FROM sqlite_master").fetchall() == []
    connection.close()

    assert run_cli("migrate", cwd=tmp_path).returncode == 0
    after = run_cli("migrate", "--check", cwd=tmp_path)

    assert after.returncode == 0, after.stderr
    assert HEAD is not None
    assert HEAD in after.stdout


def test_migrate_check_waits_as_long_as_asked_then_gives_up(tmp_path: Path) -> None:
    started = time.monotonic()
    waited = run_cli("migrate", "--check", "--wait", "1.5", cwd=tmp_path)

    assert waited.returncode == 1
    assert time.monotonic() - started >= 1.5


def test_migrate_check_with_another_migrate_option_is_a_usage_error(tmp_path: Path) -> None:
    result = run_cli("migrate", "--check", "--downgrade", "base", cwd=tmp_path)

    assert result.returncode == 2
    assert "--check takes no other migrate option" in result.stderr


async def test_uvicorn_factory_serves_the_app(spawn: SpawnFactory, migrated_sqlite: str) -> None:
    """Real `uvicorn service.main:create_app --factory` process on a free port, real HTTP."""
    port = free_port()
    env = process_env(BERTH_DATABASE__URL=migrated_sqlite, BERTH_OBSERVABILITY__LOG_FORMAT="json")
    server = spawn(
        "-m", "uvicorn", "service.main:create_app", "--factory",
        "--host", "127.0.0.1", "--port", str(port),
        env=env, name="uvicorn",
    )  # fmt: skip

    await wait_until_live(f"http://127.0.0.1:{port}", server)
    async with httpx.AsyncClient(timeout=5) as client:
        response = await client.get(f"http://127.0.0.1:{port}/api/v1/health/live")

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert "startup_complete" in [event.get("event") for event in server.events()]
    assert "Traceback" not in server.stderr()
