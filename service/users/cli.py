"""`python -m service users create-admin --email ...`: bootstrap the first accounts.

The password comes from BERTH_ADMIN_PASSWORD or an interactive prompt, never from an
argument (arguments end up in shell history and in `ps`). Heavy imports stay inside the
handler so that other commands (check-config) stay fast.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from service.core.config import Settings

PASSWORD_ENV = "BERTH_ADMIN_PASSWORD"  # noqa: S105 - the variable's name, not a password
EXIT_FAILED = 1
EXIT_INVALID = 2


def register(subparsers: Any) -> None:
    users = subparsers.add_parser("users", help="manage users")
    commands = users.add_subparsers(dest="users_command", required=True)
    create = commands.add_parser(
        "create-admin",
        help="create a platform admin, or with --tenant a tenant owner",
        description=(
            f"Create a platform admin (or, with --tenant, the tenant's owner). The password "
            f"is read from {PASSWORD_ENV} or prompted for. Exit 0 created, 1 failed "
            "(e.g. the email is taken), 2 invalid input or configuration."
        ),
    )
    create.add_argument("--email", required=True)
    create.add_argument("--tenant", metavar="SLUG", help="create an owner of this tenant")
    create.add_argument(
        "--role",
        choices=["platform_admin", "owner"],
        help="default: platform_admin, or owner with --tenant",
    )
    create.set_defaults(handler=cmd_create_admin)
    seed = commands.add_parser(
        "seed-demo",
        help="local only: a 'demo' tenant and its owner, credentials printed once",
    )
    seed.set_defaults(handler=cmd_seed_demo)


def _fail(message: str, code: int) -> int:
    print(f"berth: {message}", file=sys.stderr)
    return code


def _read_password() -> str | None:
    from_env = os.environ.get(PASSWORD_ENV)
    if from_env:
        return from_env
    import getpass

    password = getpass.getpass("Password: ")
    if sys.stdin.isatty() and getpass.getpass("Repeat password: ") != password:
        return None
    return password


def _role_and_tenant(args: argparse.Namespace) -> tuple[str, str | None]:
    role = args.role or ("owner" if args.tenant else "platform_admin")
    if role == "platform_admin" and args.tenant:
        raise ValueError("a platform admin belongs to no tenant: drop --tenant")
    if role == "owner" and not args.tenant:
        raise ValueError("--role owner needs --tenant SLUG")
    if args.tenant:
        from service.tenants.schemas import is_valid_slug

        if not is_valid_slug(args.tenant):
            raise ValueError(f"--tenant: {args.tenant!r} is not a valid tenant slug")
    return role, args.tenant


def cmd_create_admin(args: argparse.Namespace) -> int:
    import asyncio

    from pydantic import TypeAdapter, ValidationError

    from service.auth.passwords import password_problems
    from service.cli import load_settings
    from service.users.schemas import Email

    settings = load_settings()
    try:
        role, tenant = _role_and_tenant(args)
    except ValueError as exc:
        return _fail(str(exc), EXIT_INVALID)
    try:
        email = TypeAdapter(Email).validate_python(args.email)
    except ValidationError as exc:
        return _fail(f"--email: {exc.errors()[0]['msg']}", EXIT_INVALID)
    password = _read_password()
    if password is None:
        return _fail("the passwords do not match", EXIT_INVALID)
    problems = password_problems(password, email)
    if problems:
        return _fail("; ".join(problems), EXIT_INVALID)
    return asyncio.run(_create(settings, email=email, password=password, role=role, tenant=tenant))


async def _create(
    settings: Settings, *, email: str, password: str, role: str, tenant: str | None
) -> int:
    from sqlalchemy.exc import SQLAlchemyError

    from service.auth.passwords import Passwords, build_hasher
    from service.core.errors import Conflict
    from service.db.engine import create_engine, create_session_factory
    from service.users.models import Role
    from service.users.repository import UserRepository
    from service.users.service import NewUser, provision_user

    engine = create_engine(settings.database)
    new = NewUser(email=email, password=password, role=Role(role), tenant_slug=tenant)
    try:
        async with create_session_factory(engine).begin() as session:
            user = await provision_user(
                UserRepository(session), Passwords(build_hasher(settings.auth), 1), new
            )
    except Conflict as exc:
        return _fail(f"{email}: {exc.message}", EXIT_FAILED)
    except SQLAlchemyError as exc:
        # Parameters are hidden by the engine (hide_parameters): no hash in this message.
        return _fail(f"cannot create the user (is the database migrated?): {exc}", EXIT_FAILED)
    finally:
        await engine.dispose()
    where = f" of tenant {tenant}" if tenant else ""
    print(f"created {role}{where}: {user.email} ({user.id})")
    return 0


DEMO_TENANT = "demo"
DEMO_OWNER_EMAIL = "owner@demo.example.com"


def cmd_seed_demo(args: argparse.Namespace) -> int:
    """`make run`'s seed: idempotent; the owner's password is printed only when created."""
    import asyncio

    from service.cli import load_settings

    settings = load_settings()
    if settings.is_production:
        return _fail("seed-demo is for local use; it refuses a production environment", 2)
    return asyncio.run(_seed_demo(settings))


async def _seed_demo(settings: Settings) -> int:
    import secrets

    from service.tenants.migrate import upgrade_tenant
    from service.tenants.provisioning import create_tenant
    from service.tenants.registry import TenantRegistry

    registry = TenantRegistry(settings.tenants.registry_dir)
    registry.refresh()
    existing = registry.get(DEMO_TENANT)
    if existing is None:
        await create_tenant(settings.tenants, DEMO_TENANT, self_signup=True)
    else:
        await upgrade_tenant(existing)
    if await _user_exists(settings, DEMO_OWNER_EMAIL):
        print(f"demo tenant ready; its owner {DEMO_OWNER_EMAIL} exists already")
        return 0
    password = secrets.token_urlsafe(12)
    created = await _create(
        settings, email=DEMO_OWNER_EMAIL, password=password, role="owner", tenant=DEMO_TENANT
    )
    if created != 0:
        return created
    print(
        "\n  demo tenant and owner created; these credentials are shown only this once:\n"
        f"    tenant:   {DEMO_TENANT}\n    email:    {DEMO_OWNER_EMAIL}\n"
        f"    password: {password}\n"
    )
    return 0


async def _user_exists(settings: Settings, email: str) -> bool:
    from service.db.engine import create_engine, create_session_factory
    from service.users.repository import UserRepository

    engine = create_engine(settings.database)
    try:
        async with create_session_factory(engine)() as session:
            return await UserRepository(session).get_by_email(email) is not None
    finally:
        await engine.dispose()
