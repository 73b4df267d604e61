"""Alembic, driven from code: `python -m service migrate`.

On PostgreSQL the whole upgrade runs in one transaction that first takes an advisory lock,
so two runs at once (two Job pods, a Job and a developer) serialize instead of racing; the
second one then finds the schema at head and does nothing. Migrations must connect directly:
PgBouncer in transaction mode does not keep session state and breaks this.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection

from service.db.engine import create_engine_for_migrations

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
CONTROL_PLANE_LOCK = "berth:migrations:control-plane"


def advisory_lock_key(name: str) -> int:
    """A stable signed 64-bit key for pg_advisory_xact_lock, derived from a name."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


def alembic_config(lock_name: str = CONTROL_PLANE_LOCK) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["advisory_lock_key"] = advisory_lock_key(lock_name)
    return config


async def _run(url: str, action: str, revision: str) -> None:
    engine = create_engine_for_migrations(url)
    config = alembic_config()

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


async def upgrade(url: str, revision: str = "head") -> None:
    await _run(url, "upgrade", revision)


async def downgrade(url: str, revision: str) -> None:
    await _run(url, "downgrade", revision)


async def current_revision(url: str) -> str | None:
    engine = create_engine_for_migrations(url)
    try:
        async with engine.connect() as connection:
            return await connection.run_sync(
                lambda sync: MigrationContext.configure(sync).get_current_revision()
            )
    finally:
        await engine.dispose()
