"""Alembic environment for tenant databases (articles, tags): a history of its own.

`service.tenants.migrate` hands over an open connection (the normal path: the CLI's
`migrate --tenant/--all-tenants`, `tenants create`, and the operator). Run as plain `alembic`
to write a new revision, it connects to the database given with `-x url=...`:

    .venv/bin/alembic -c service/migrations/tenant/alembic.ini \
        -x url=sqlite+aiosqlite:///./data/tenant-dbs/acme.db revision --autogenerate -m "..."
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import Connection

from service.db.engine import create_engine_for_migrations
from service.db.migrate import run_locked_migrations
from service.migrations.metadata import TENANT_METADATA

config = context.config


def run_with_connection(connection: Connection) -> None:
    run_locked_migrations(connection, TENANT_METADATA)


async def _run_standalone(url: str) -> None:
    engine = create_engine_for_migrations(url)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(run_with_connection)
            await connection.commit()
    finally:
        await engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported; run against a database")

connection = config.attributes.get("connection")
if connection is not None:
    run_with_connection(connection)
else:
    url = context.get_x_argument(as_dictionary=True).get("url")
    if not url:
        raise SystemExit("give the tenant database with -x url=<SQLAlchemy URL>")
    asyncio.run(_run_standalone(url))
