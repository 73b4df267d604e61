"""`python -m service tenants ...` and `migrate --tenant/--all-tenants` as real processes.

Each process costs seconds to start here, so independent commands run side by side.
"""

from __future__ import annotations

import sqlite3
import stat
from pathlib import Path

import asyncpg

from service.tenants.migrate import downgrade_tenant
from service.tenants.postgres import drop_postgres, tenant_names
from service.tenants.schemas import TenantEntry
from tests.conftest import SpawnFactory
from tests.service.tenants.conftest import unique_slug
from tests.support import Spawned, asyncpg_dsn, process_env


def tenant_env(tmp_path: Path) -> dict[str, str]:
    return process_env(
        BERTH_ENVIRONMENT="test",
        BERTH_OBSERVABILITY__LOG_FORMAT="json",
        BERTH_TENANTS__REGISTRY_DIR=str(tmp_path / "registry"),
        BERTH_TENANTS__SQLITE_DIR=str(tmp_path / "dbs"),
    )


async def run_all(spawn: SpawnFactory, env: dict[str, str], *commands: list[str]) -> list[Spawned]:
    """Start every command at once, then wait for each."""
    runs = [spawn("-m", "service", *command, env=env, name=command[0]) for command in commands]
    for run in runs:
        await run.wait(timeout=60)
    return runs


def events(run: Spawned, name: str) -> list[dict[str, object]]:
    return [event for event in run.events() if event.get("event") == name]


def alembic_setup_lines(run: Spawned) -> list[str]:
    """Lines Alembic logs about itself on every run (its plugins, the dialect it picked)."""
    setup = ("setup plugin ", "Context impl ", "Will assume ")
    return [str(e["event"]) for e in run.events() if str(e["event"]).startswith(setup)]


def table_rows(run: Spawned) -> list[list[str]]:
    """The `tenants list` table (stdout lines that are not JSON log lines)."""
    return [line.split() for line in run.stdout().splitlines() if not line.startswith("{")]


def sqlite_version(path: Path) -> list[str]:
    with sqlite3.connect(path) as connection:
        versions = [row[0] for row in connection.execute("SELECT version_num FROM alembic_version")]
    connection.close()
    return versions


async def test_sqlite_tenants_are_created_listed_migrated_and_deleted(
    tmp_path: Path, spawn: SpawnFactory
) -> None:
    env = tenant_env(tmp_path)
    registry, dbs = tmp_path / "registry", tmp_path / "dbs"

    acme, beta, bad = await run_all(
        spawn, env, ["tenants", "create", "acme", "--self-signup"], ["tenants", "create", "beta"],
        ["tenants", "create", "Not_A_Slug"],
    )  # fmt: skip

    assert acme.process.returncode == 0, acme.describe()
    assert beta.process.returncode == 0, beta.describe()
    assert "tenant acme is ready (sqlite, schema 0001)" in acme.stdout()
    assert bad.process.returncode == 2
    assert "not a tenant slug" in bad.stderr()
    entry = TenantEntry.model_validate_json((registry / "acme.json").read_bytes())
    assert stat.S_IMODE((registry / "acme.json").stat().st_mode) == 0o600
    assert entry.self_signup is True
    assert entry.database_url.get_secret_value() == f"sqlite+aiosqlite:///{dbs / 'acme.db'}"
    assert sqlite_version(dbs / "acme.db") == ["0001"]

    beta_entry = TenantEntry.model_validate_json((registry / "beta.json").read_bytes())
    await downgrade_tenant(beta_entry, "base")  # so that --all-tenants has work to do
    (registry / "broken.json").write_text("{")
    listing, migrate = await run_all(
        spawn, env, ["tenants", "list"], ["migrate", "--all-tenants"]
    )  # fmt: skip

    assert listing.process.returncode == 0, listing.describe()
    assert table_rows(listing) == [
        ["SLUG", "STATUS", "BACKEND"], ["acme", "ready", "sqlite"], ["beta", "ready", "sqlite"],
    ]  # fmt: skip
    assert "skipped broken.json" in listing.stderr()
    assert migrate.process.returncode == 0, migrate.describe()
    applied = events(migrate, "tenant_migrations_applied")
    assert [(e["tenant"], e["revision"]) for e in applied] == [("acme", "0001"), ("beta", "0001")]
    assert sqlite_version(dbs / "beta.db") == ["0001"]
    assert alembic_setup_lines(migrate) == []  # what ran is logged, Alembic's set-up is not
    assert any("Running upgrade  -> 0001" in str(e["event"]) for e in migrate.events())

    delete, unknown = await run_all(
        spawn, env, ["tenants", "delete", "acme", "--drop"], ["migrate", "--tenant", "nobody"]
    )  # fmt: skip

    assert delete.process.returncode == 0, delete.describe()
    assert "tenant acme removed from the registry" in delete.stdout()
    assert not (registry / "acme.json").exists()
    assert not (dbs / "acme.db").exists()
    assert (registry / "beta.json").exists()
    assert unknown.process.returncode == 1
    assert "unknown tenant 'nobody'" in unknown.stderr()


async def test_a_postgres_tenant_from_the_command_line_never_shows_its_password(
    tmp_path: Path, spawn: SpawnFactory, pg_server: str
) -> None:
    env = tenant_env(tmp_path)
    slug = unique_slug("cli")
    names = tenant_names(slug)
    try:
        [create] = await run_all(
            spawn, env, ["tenants", "create", slug, "--postgres-admin-url", pg_server]
        )
        assert create.process.returncode == 0, create.describe()
        entry = TenantEntry.model_validate_json(
            (tmp_path / "registry" / f"{slug}.json").read_bytes()
        )
        url = entry.database_url.get_secret_value()
        password = url.split(":", 2)[2].split("@", 1)[0]
        assert len(password) >= 40

        listing, migrate = await run_all(
            spawn, env, ["tenants", "list"], ["migrate", "--tenant", slug]
        )  # fmt: skip
        for run in (create, listing, migrate):
            assert password not in run.stdout() + run.stderr()
        assert [slug, "ready", "postgresql"] in table_rows(listing)
        assert migrate.process.returncode == 0, migrate.describe()
        [applied] = events(migrate, "tenant_migrations_applied")
        assert applied["database"] == url.replace(password, "***")

        [delete] = await run_all(
            spawn, env, ["tenants", "delete", slug, "--drop", "--postgres-admin-url", pg_server]
        )
        assert delete.process.returncode == 0, delete.describe()
        assert f"dropped database {names.database}" in delete.stdout()
    finally:
        await drop_postgres(pg_server, slug)
    admin = await asyncpg.connect(asyncpg_dsn(pg_server), timeout=5)
    try:
        left = await admin.fetchval(
            "SELECT count(*) FROM pg_database WHERE datname = $1", names.database
        )
    finally:
        await admin.close()
    assert left == 0
