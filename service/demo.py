"""`python -m service seed-demo`: `make run`'s local demo, a tenant and its owner.

Idempotent: the tenant `demo` is created (SQLite) or brought to the current schema, and its
owner created once; the owner's password is printed only when it is set, on creation or
with `--reset-password`. It composes the tenants and identity features, so it lives here,
beside the composition root, and refuses a production environment.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
from typing import Any

from service.core.commands import EXIT_INVALID, command_settings, fail
from service.core.config import Settings

DEMO_TENANT = "demo"
DEMO_OWNER_EMAIL = "owner@demo.example.com"


def register(subparsers: Any) -> None:
    seed = subparsers.add_parser(
        "seed-demo",
        help="local only: a 'demo' tenant and its owner, credentials printed once",
    )
    seed.add_argument(
        "--reset-password",
        action="store_true",
        help="give the demo owner a new password and print it",
    )
    seed.set_defaults(handler=cmd_seed_demo)


def cmd_seed_demo(args: argparse.Namespace) -> int:
    settings = command_settings()
    if settings.is_production:
        return fail("seed-demo is for local use; it refuses a production environment",
                    EXIT_INVALID)  # fmt: skip
    return asyncio.run(seed_demo(settings, reset_password=args.reset_password))


async def seed_demo(settings: Settings, *, reset_password: bool = False) -> int:
    from service.tenants.migrate import upgrade_tenant
    from service.tenants.provisioning import create_tenant
    from service.tenants.registry import TenantRegistry

    existing = TenantRegistry.read(settings.tenants.registry_dir).get(DEMO_TENANT)
    if existing is None:
        await create_tenant(settings.tenants, DEMO_TENANT, self_signup=True)
    else:
        await upgrade_tenant(existing)
    password = secrets.token_urlsafe(12)
    created = await _ensure_owner(settings, password, reset_password=reset_password)
    if created is None:
        print(
            f"demo tenant ready; its owner {DEMO_OWNER_EMAIL} exists already "
            "(python -m service seed-demo --reset-password gives it a new password)"
        )
        return 0
    what = "owner created" if created else "owner's password reset"
    print(
        f"\n  demo tenant ready, {what}; these credentials are shown only this once:\n"
        f"    tenant:   {DEMO_TENANT}\n    email:    {DEMO_OWNER_EMAIL}\n"
        f"    password: {password}\n"
    )
    return 0


async def _ensure_owner(settings: Settings, password: str, *, reset_password: bool) -> bool | None:
    """True: created with `password`; False: its password reset to it; None: left alone."""
    from service.db.engine import Database
    from service.identity.passwords import Passwords, build_hasher
    from service.identity.principal import Role
    from service.identity.repository import UserRepository
    from service.identity.users_service import NewUser, provision_user

    passwords = Passwords(build_hasher(settings.auth), 1)
    database = Database.open(settings.database)
    try:
        async with database.sessions.write.begin() as session:
            users = UserRepository(session)
            owner = await users.get_by_email(DEMO_OWNER_EMAIL, DEMO_TENANT)
            if owner is None:
                new = NewUser(DEMO_OWNER_EMAIL, password, Role.OWNER, DEMO_TENANT)
                await provision_user(session, passwords, new)
                return True
            if not reset_password:
                return None
            owner.password_hash = await passwords.hash(password)
            owner.token_version += 1  # a new password ends the sessions of the old one
            await users.save(owner)
            return False
    finally:
        await database.dispose()
