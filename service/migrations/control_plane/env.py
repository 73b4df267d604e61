"""Alembic environment for the control-plane database.

`service.db.migrate` hands over an open connection (the normal path). Run as plain `alembic`
(e.g. `alembic revision --autogenerate`), it connects to BERTH_DATABASE__URL itself.
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import Connection

from service.core.config import Settings
from service.db.engine import create_engine_for_migrations
from service.db.migrate import CONTROL_PLANE, advisory_lock_key, run_locked_migrations
from service.migrations.metadata import CONTROL_PLANE_METADATA

config = context.config


def run_with_connection(connection: Connection) -> None:
    run_locked_migrations(connection, CONTROL_PLANE_METADATA)


async def _run_standalone() -> None:
    config.attributes.setdefault("advisory_lock_key", advisory_lock_key(CONTROL_PLANE.lock_name))
    engine = create_engine_for_migrations(Settings().database.url.get_secret_value())
    async with engine.connect() as connection:
        await connection.run_sync(run_with_connection)
        await connection.commit()
    await engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported; run against a database")

connection = config.attributes.get("connection")
if connection is None:
    asyncio.run(_run_standalone())
else:
    run_with_connection(connection)
