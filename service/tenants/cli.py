"""`python -m service tenants create|list|delete` and `migrate --tenant/--all-tenants`.

For local use: in Kubernetes the operator provisions tenants and writes the registry. The
heavy imports (psycopg, SQLAlchemy, Alembic) stay inside the handlers so that other
commands start fast. Passwords are never printed.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from service.core.commands import EXIT_FAILED, command_settings, fail, first_line
from service.core.tenancy import TENANT_SLUG_HELP, is_valid_tenant_slug
from service.tenants.schemas import TenantEntry, TenantStatus


def slug_argument(value: str) -> str:
    if not is_valid_tenant_slug(value):
        raise argparse.ArgumentTypeError(f"not a tenant slug ({TENANT_SLUG_HELP})")
    return value


def _failed(what: str, exc: BaseException) -> int:
    return fail(f"{what}: {first_line(exc)}", EXIT_FAILED)


def _expected_errors() -> tuple[type[BaseException], ...]:
    import psycopg
    from sqlalchemy.exc import SQLAlchemyError

    from service.tenants.postgres import ProvisioningError

    return (ProvisioningError, psycopg.Error, SQLAlchemyError, OSError)


def cmd_create(args: argparse.Namespace) -> int:
    from service.tenants.provisioning import create_tenant
    from service.tenants.registry import backend_of, entry_path

    settings = command_settings()
    try:
        entry = asyncio.run(
            create_tenant(
                settings.tenants,
                args.slug,
                admin_url=args.postgres_admin_url,
                self_signup=args.self_signup,
            )
        )
    except _expected_errors() as exc:
        return _failed(f"cannot create tenant {args.slug}", exc)
    path = entry_path(settings.tenants.registry_dir, entry.slug)
    print(
        f"tenant {entry.slug} is ready ({backend_of(entry)}, schema {entry.schema_version}); "
        f"registry entry {path}"
    )
    return 0


def format_table(entries: list[TenantEntry]) -> str:
    from service.tenants.registry import backend_of

    rows = [("SLUG", "STATUS", "BACKEND")]
    rows += [(entry.slug, entry.status.value, backend_of(entry)) for entry in entries]
    widths = [max(len(row[column]) for row in rows) for column in range(3)]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
             for row in rows]  # fmt: skip
    return "\n".join(line.rstrip() for line in lines)


def cmd_list(args: argparse.Namespace) -> int:
    from service.tenants.registry import TenantRegistry

    settings = command_settings()
    registry = TenantRegistry.read(settings.tenants.registry_dir)
    print(format_table(registry.entries()))
    for name, problem in registry.problems().items():
        print(f"berth: skipped {name}: {problem}", file=sys.stderr)
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    from service.tenants.provisioning import delete_tenant

    settings = command_settings()
    try:
        deletion = asyncio.run(
            delete_tenant(
                settings.tenants, args.slug, drop=args.drop, admin_url=args.postgres_admin_url
            )
        )
    except _expected_errors() as exc:
        return _failed(f"cannot delete tenant {args.slug}", exc)
    if deletion.entry_removed:
        print(f"tenant {args.slug} removed from the registry")
    else:
        print(f"tenant {args.slug} had no registry entry")
    if deletion.dropped:
        print(f"dropped {deletion.dropped}")
    return 0


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    tenants = subparsers.add_parser("tenants", help="local tenants: create, list, delete")
    commands = tenants.add_subparsers(dest="tenants_command", required=True)
    admin_help = "PostgreSQL admin URL: a real database and role instead of a SQLite file"

    create = commands.add_parser("create", help="provision, migrate and register a tenant")
    create.add_argument("slug", type=slug_argument, help=TENANT_SLUG_HELP)
    create.add_argument("--postgres-admin-url", metavar="URL", help=admin_help)
    create.add_argument("--self-signup", action="store_true", help="let users register")
    create.set_defaults(handler=cmd_create)

    listing = commands.add_parser("list", help="slug, status and backend of each tenant")
    listing.set_defaults(handler=cmd_list)

    delete = commands.add_parser("delete", help="remove a tenant from the registry")
    delete.add_argument("slug", type=slug_argument, help=TENANT_SLUG_HELP)
    delete.add_argument("--drop", action="store_true", help="also drop its database or file")
    delete.add_argument("--postgres-admin-url", metavar="URL", help="needed to drop PostgreSQL")
    delete.set_defaults(handler=cmd_delete)


async def _migrate(entries: list[TenantEntry], args: argparse.Namespace) -> int:
    """Each tenant in turn, under its own lock; a failure is reported and the rest go on."""
    from service.core.config import safe_url
    from service.core.logging import get_logger
    from service.tenants.migrate import downgrade_tenant, upgrade_tenant

    log = get_logger("berth.migrate")
    failures = 0
    for entry in entries:
        url = safe_url(entry.database_url.get_secret_value())
        try:
            if args.downgrade:
                revision = await downgrade_tenant(entry, args.downgrade)
            else:
                revision = await upgrade_tenant(entry, args.revision)
        except _expected_errors() as exc:
            failures += 1
            log.error("tenant_migrations_failed", tenant=entry.slug, database=url,
                      error=type(exc).__name__)  # fmt: skip
            continue
        log.info("tenant_migrations_applied", tenant=entry.slug, database=url, revision=revision)
    return failures


def cmd_migrate_tenants(args: argparse.Namespace) -> int:
    """`migrate --tenant SLUG` or `migrate --all-tenants` (tenants from the registry)."""
    from service.tenants.registry import TenantRegistry

    settings = command_settings()
    registry = TenantRegistry.read(settings.tenants.registry_dir)
    if args.tenant:
        entry = registry.get(args.tenant)
        if entry is None:
            return fail(f"unknown tenant {args.tenant!r} (no valid entry in "
                        f"{settings.tenants.registry_dir})")  # fmt: skip
        entries = [entry]
    else:
        # A tenant being deleted is on its way out; its database may already be gone.
        entries = [e for e in registry.entries() if e.status is not TenantStatus.DELETING]
    failures = asyncio.run(_migrate(entries, args))
    return EXIT_FAILED if failures else 0
