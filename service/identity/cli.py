"""`python -m service users create-admin --email ...`: bootstrap the first accounts.

The password comes from BERTH_ADMIN_PASSWORD or an interactive prompt, never from an
argument (arguments end up in shell history and in `ps`). Heavy imports stay inside the
handler so that other commands (check-config) stay fast. The tenant of an owner must be in
the tenant registry: the composition root hands this module a way to read it
(`TenantDirectoryOf`), since identity does not depend on the tenants feature.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from functools import partial
from typing import Any

from service.core.commands import EXIT_FAILED, EXIT_INVALID, command_settings, fail
from service.core.config import Settings
from service.core.tenancy import TENANT_SLUG_HELP, TenantDirectory, is_valid_tenant_slug

PASSWORD_ENV = "BERTH_ADMIN_PASSWORD"  # noqa: S105 - the variable's name, not a password
TenantDirectoryOf = Callable[[Settings], TenantDirectory]


class CommandError(Exception):
    """A refusal to print as one line, with the exit code to leave with."""

    def __init__(self, message: str, code: int = EXIT_INVALID) -> None:
        super().__init__(message)
        self.code = code


def register(subparsers: Any, tenants_of: TenantDirectoryOf) -> None:
    users = subparsers.add_parser("users", help="manage users")
    commands = users.add_subparsers(dest="users_command", required=True)
    create = commands.add_parser(
        "create-admin",
        help="create a platform admin, or with --tenant a tenant owner",
        description=(
            f"Create a platform admin (or, with --tenant, the tenant's owner). The password "
            f"is read from {PASSWORD_ENV} or prompted for. Exit 0 created, 1 failed "
            "(e.g. the email is taken, the tenant is unknown), 2 invalid input or configuration."
        ),
    )
    create.add_argument("--email", required=True)
    create.add_argument("--tenant", metavar="SLUG", help="create an owner of this tenant")
    create.add_argument(
        "--role",
        choices=["platform_admin", "owner"],
        help="default: platform_admin, or owner with --tenant",
    )
    create.set_defaults(handler=partial(cmd_create_admin, tenants_of=tenants_of))


def read_password() -> str:
    """From the environment, else from a prompt (twice on a terminal)."""
    from_env = os.environ.get(PASSWORD_ENV)
    if from_env:
        return from_env
    import getpass

    try:
        password = getpass.getpass("Password: ")
        repeated = getpass.getpass("Repeat password: ") if sys.stdin.isatty() else password
    except (EOFError, OSError):  # no terminal and nothing on stdin (termios.error is OSError)
        raise CommandError(f"no password: set {PASSWORD_ENV} or run on a terminal") from None
    if repeated != password:
        raise CommandError("the passwords do not match")
    return password


def _role_and_tenant(args: argparse.Namespace) -> tuple[str, str | None]:
    role = args.role or ("owner" if args.tenant else "platform_admin")
    if role == "platform_admin" and args.tenant:
        raise CommandError("a platform admin belongs to no tenant: drop --tenant")
    if role == "owner" and not args.tenant:
        raise CommandError("--role owner needs --tenant SLUG")
    if args.tenant and not is_valid_tenant_slug(args.tenant):
        raise CommandError(f"--tenant: {args.tenant!r} is not a valid tenant slug "
                           f"({TENANT_SLUG_HELP})")  # fmt: skip
    return role, args.tenant


def _email(value: str) -> str:
    from pydantic import TypeAdapter, ValidationError

    from service.identity.emails import Email

    try:
        return TypeAdapter(Email).validate_python(value)
    except ValidationError as exc:
        raise CommandError(f"--email: {exc.errors()[0]['msg']}") from None


def check_tenant(tenants: TenantDirectory, slug: str, settings: Settings) -> None:
    """An owner needs a tenant that is registered and not on its way out."""
    tenant = tenants.get(slug)
    if tenant is None or not tenant.accepts_new_users:
        raise CommandError(
            f"unknown tenant {slug!r} (no live entry in {settings.tenants.registry_dir}; "
            "create it first: python -m service tenants create SLUG)",
            EXIT_FAILED,
        )


def cmd_create_admin(args: argparse.Namespace, tenants_of: TenantDirectoryOf) -> int:
    import asyncio

    from service.identity.passwords import password_problems

    settings = command_settings()
    try:
        role, tenant = _role_and_tenant(args)
        email = _email(args.email)
        password = read_password()
        problems = password_problems(password, email)
        if problems:
            raise CommandError("; ".join(problems))
        if tenant is not None:
            check_tenant(tenants_of(settings), tenant, settings)
    except CommandError as exc:
        return fail(str(exc), exc.code)
    return asyncio.run(create_user(settings, email=email, password=password, role=role,
                                   tenant=tenant))  # fmt: skip


async def create_user(
    settings: Settings, *, email: str, password: str, role: str, tenant: str | None
) -> int:
    """Insert the user (no permission check: whoever runs this owns the database)."""
    from sqlalchemy.exc import SQLAlchemyError

    from service.core.errors import Conflict
    from service.db.engine import Database
    from service.identity.passwords import Passwords, build_hasher
    from service.identity.principal import Role
    from service.identity.users_service import NewUser, provision_user

    database = Database.open(settings.database)
    new = NewUser(email=email, password=password, role=Role(role), tenant_slug=tenant)
    try:
        async with database.sessions.write.begin() as session:
            user = await provision_user(session, Passwords(build_hasher(settings.auth), 1), new)
    except Conflict as exc:
        return fail(f"{email}: {exc.message}", EXIT_FAILED)
    except SQLAlchemyError as exc:
        # Parameters are hidden by the engine (hide_parameters): no hash in this message.
        return fail(f"cannot create the user (is the database migrated?): {exc}", EXIT_FAILED)
    finally:
        await database.dispose()
    where = f" of tenant {tenant}" if tenant else ""
    print(f"created {role}{where}: {user.email} ({user.id})")
    return 0
