"""Alembic, driven from code: `python -m service migrate`.

On PostgreSQL the whole upgrade runs in one transaction that first takes an advisory lock,
so two runs at once (two Job pods, a Job and a developer) serialize instead of racing; the
second one then finds the schema at head and does nothing. Migrations must connect directly:
PgBouncer in transaction mode does not keep session state and breaks this.

Two histories share this runner (`MigrationHistory`), both under `service/migrations/`: the
control plane's and the tenant databases' (one advisory lock per tenant,
`service/tenants/migrate.py`). Alembic keeps its
environment in module globals, so runs inside one process (e.g. an operator migrating many
tenants) take turns; separate processes coordinate through the advisory lock.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass
from pathlib import Path
from weakref import WeakKeyDictionary

from alembic import command, context
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, MetaData, text

from service.db.engine import create_engine_for_migrations

MIGRATIONS_ROOT = Path(__file__).resolve().parent.parent / "migrations"
CONTROL_PLANE_MIGRATIONS_DIR = MIGRATIONS_ROOT / "control_plane"
TENANT_MIGRATIONS_DIR = MIGRATIONS_ROOT / "tenant"
CONTROL_PLANE_LOCK = "berth:migrations:control-plane"


def advisory_lock_key(name: str) -> int:
    """A stable signed 64-bit key for pg_advisory_xact_lock, derived from a name."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


@dataclass(frozen=True)
class MigrationHistory:
    """One Alembic history (scripts) and the advisory lock its runs serialize on."""

    script_location: Path
    lock_name: str

    def config(self) -> Config:
        return alembic_config(self.lock_name, self.script_location)

    def head(self) -> str | None:
        return ScriptDirectory.from_config(self.config()).get_current_head()


CONTROL_PLANE = MigrationHistory(CONTROL_PLANE_MIGRATIONS_DIR, CONTROL_PLANE_LOCK)


def alembic_config(
    lock_name: str = CONTROL_PLANE_LOCK, script_location: Path = CONTROL_PLANE_MIGRATIONS_DIR
) -> Config:
    config = Config()
    config.set_main_option("script_location", str(script_location))
    config.attributes["advisory_lock_key"] = advisory_lock_key(lock_name)
    return config


def run_locked_migrations(connection: Connection, target_metadata: MetaData) -> None:
    """The body of an env.py: run the pending revisions in one transaction that first takes
    the history's advisory lock (PostgreSQL), so concurrent runs wait here and then see head."""
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        lock_key = context.config.attributes.get("advisory_lock_key")
        if connection.dialect.name == "postgresql" and lock_key is not None:
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": lock_key})
        context.run_migrations()


# One lock per event loop (an asyncio.Lock belongs to the loop it is first used on).
_in_process: WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = WeakKeyDictionary()


def _in_process_lock() -> asyncio.Lock:
    loop = asyncio.get_running_loop()
    lock = _in_process.get(loop)
    if lock is None:
        lock = _in_process[loop] = asyncio.Lock()
    return lock


async def _run(
    url: str, action: str, revision: str, history: MigrationHistory = CONTROL_PLANE
) -> None:
    async with _in_process_lock():  # interleaved runs would clobber alembic's global context
        await _run_alone(url, action, revision, history)


async def _run_alone(url: str, action: str, revision: str, history: MigrationHistory) -> None:
    engine = create_engine_for_migrations(url)
    config = history.config()

    def run(connection: Connection) -> None:
        config.attributes["connection"] = connection
        if action == "upgrade":
            command.upgrade(config, revision)
        else:
            command.downgrade(config, revision)

    try:
        async with engine.connect() as connection:
            await connection.run_sync(run)
    finally:
        await engine.dispose()


async def upgrade(
    url: str, revision: str = "head", *, history: MigrationHistory = CONTROL_PLANE
) -> None:
    await _run(url, "upgrade", revision, history)


async def downgrade(url: str, revision: str, *, history: MigrationHistory = CONTROL_PLANE) -> None:
    await _run(url, "downgrade", revision, history)


async def current_revision(url: str) -> str | None:
    engine = create_engine_for_migrations(url)
    try:
        async with engine.connect() as connection:
            return await connection.run_sync(
                lambda sync: MigrationContext.configure(sync).get_current_revision()
            )
    finally:
        await engine.dispose()
