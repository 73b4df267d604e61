"""Passwords: Argon2id with the configured parameters, rehash on login, a policy, and the
same verification work for unknown accounts as for known ones.

Real PostgreSQL (a fresh migrated database per test), real argon2-cffi.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import argon2
import pytest
from sqlalchemy import select

from service.core.config import AuthSettings
from service.identity.models import User
from service.identity.passwords import Passwords, build_hasher, password_problems
from tests.conftest import IdentityAppFactory
from tests.service.identity.helpers import LOGIN, USERS, Api, query
from tests.support import assert_envelope

GOOD = "a long enough passphrase"


async def stored_hash(api: Api, email: str) -> str:
    rows = await query(api.database_url, select(User.password_hash).where(User.email == email))
    return str(rows[0][0])


@pytest.mark.parametrize(
    ("password", "email", "problem"),
    [
        ("short-pw1", "a@example.com", "at least 10 characters"),
        ("x" * 129, "a@example.com", "at most 128 characters"),
        ("alice@example.com", "alice@example.com", "must not be the email"),
        (" Alice@Example.com ", "alice@example.com", "must not be the email"),
        ("alicealice", "alicealice@example.com", "must not be the email"),
    ],
)
def test_policy_names_what_is_wrong(password: str, email: str, problem: str) -> None:
    """Pure function: 10..128 characters, not the email, not its local part."""
    problems = password_problems(password, email)

    assert len(problems) == 1
    assert problem in problems[0]


def test_policy_accepts_the_bounds() -> None:
    assert password_problems("x" * 10, "a@example.com") == []
    assert password_problems("x" * 128, "a@example.com") == []


@pytest.mark.parametrize(
    ("password", "message"),
    [
        ("too-short", "at least 10 characters"),
        ("y" * 129, "at most 128 characters"),
        ("policy-victim@example.com", "must not be the email"),
        ("policy-victim", "must not be the email"),
    ],
)
async def test_refused_passwords_are_a_422_naming_the_field_without_echoing_it(
    api: Api, password: str, message: str
) -> None:
    admin = await api.user(role="platform_admin")
    body = {"email": "policy-victim@example.com", "password": password, "tenant_slug": "acme"}

    response = await api.client.post(USERS, json=body, headers=api.headers(admin))

    envelope = assert_envelope(response, 422, "ValidationError", USERS)
    [error] = envelope["data"]["errors"]
    assert error["loc"] == ["body", "password"]
    assert message in error["msg"]
    assert password not in response.text


async def test_hashes_are_argon2id_with_the_configured_parameters(api: Api) -> None:
    user = await api.user()

    encoded = await stored_hash(api, user.email)

    assert encoded.startswith("$argon2id$v=19$m=8,t=1,p=1$")
    assert user.password not in encoded


def test_default_parameters_are_rfc_9106_low_memory_argon2id() -> None:
    """No database: the defaults of AuthSettings produce the profile that README promises."""
    hasher = build_hasher(AuthSettings())

    assert hasher.type is argon2.Type.ID
    assert (hasher.time_cost, hasher.memory_cost, hasher.parallelism) == (3, 65_536, 4)


async def test_login_rehashes_when_the_parameters_changed(
    identity_app: IdentityAppFactory, pg_database: str
) -> None:
    """Two apps on one real database: a user hashed with small parameters logs in to an app
    with the default (64 MiB) ones, and leaves with a hash of the default parameters."""
    old_app, _ = await identity_app(pg_database)
    old = Api(old_app, _, pg_database)
    user = await old.user()
    defaults = {"argon2_time_cost": 3, "argon2_memory_kib": 65_536, "argon2_parallelism": 4}
    new_app, new_client = await identity_app(pg_database, auth=defaults)
    new = Api(new_app, new_client, pg_database)

    first = await new.client.post(LOGIN, json={"email": user.email, "password": user.password})
    rehashed = await stored_hash(new, user.email)
    second = await new.client.post(LOGIN, json={"email": user.email, "password": user.password})

    assert first.status_code == 200
    assert rehashed.startswith("$argon2id$v=19$m=65536,t=3,p=4$")
    assert second.status_code == 200
    assert await stored_hash(new, user.email) == rehashed  # no second rehash


class CountingHasher(argon2.PasswordHasher):
    """A real Argon2 hasher that counts its verifications."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.verified: list[str] = []

    def verify(self, hash: str | bytes, password: str | bytes) -> bool:
        self.verified.append(str(hash))
        return super().verify(hash, password)


def stable(envelope: dict[str, Any]) -> dict[str, Any]:
    """The envelope without what differs on every response."""
    return {k: v for k, v in envelope.items() if k not in {"correlationId", "timestamp"}}


async def test_unknown_email_costs_the_same_argon2_verification_as_a_wrong_password(
    identity_app: IdentityAppFactory, pg_database: str
) -> None:
    """No wall-clock timing: a counting subclass of the real hasher is injected, and each
    failed login, whether the account exists or not, must have run exactly one verify."""
    hasher = CountingHasher(time_cost=1, memory_cost=8, parallelism=1)
    app, client = await identity_app(pg_database, hasher=hasher)
    api = Api(app, client, pg_database)
    user = await api.user()  # hashed with the injected hasher

    wrong = await api.client.post(LOGIN, json={"email": user.email, "password": "wrong" * 3})
    after_wrong = len(hasher.verified)
    unknown = await api.client.post(
        LOGIN, json={"email": "nobody-here@example.com", "password": "wrong" * 3}
    )

    assert after_wrong == 1
    assert len(hasher.verified) == 2
    assert hasher.verified[1].startswith("$argon2id$")  # a real hash, not a shortcut
    assert hasher.verified[1] != await stored_hash(api, user.email)
    assert wrong.status_code == unknown.status_code == 401
    assert stable(wrong.json()) == stable(unknown.json())
    assert wrong.headers["www-authenticate"] == unknown.headers["www-authenticate"] == "Bearer"


async def test_verify_reports_validity_and_a_needed_rehash() -> None:
    """Pure argon2-cffi: verify answers valid/invalid and reports a needed rehash."""
    small = argon2.PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
    bigger = argon2.PasswordHasher(time_cost=2, memory_cost=16, parallelism=1)
    passwords = Passwords(bigger, max_concurrent=1)
    old_hash = small.hash(GOOD)

    good = await passwords.verify(old_hash, GOOD)
    bad = await passwords.verify(old_hash, "not the password")
    unknown = await passwords.verify(None, GOOD)

    assert good.valid
    assert good.new_hash is not None
    assert good.new_hash.startswith("$argon2id$v=19$m=16,t=2,p=1$")
    assert not bad.valid
    assert bad.new_hash is None
    assert not unknown.valid


class SlowHasher(argon2.PasswordHasher):
    """A real hasher whose verifications take a while and record how many overlap."""

    def __init__(self) -> None:
        super().__init__(time_cost=1, memory_cost=8, parallelism=1)
        self._lock = threading.Lock()
        self.running = 0
        self.most = 0

    def verify(self, hash: str | bytes, password: str | bytes) -> bool:
        with self._lock:
            self.running += 1
            self.most = max(self.most, self.running)
        try:
            time.sleep(0.05)
            return super().verify(hash, password)
        finally:
            with self._lock:
                self.running -= 1


async def test_at_most_the_configured_number_of_hashes_run_at_once() -> None:
    """Each Argon2 hash claims argon2_memory_kib: a burst of logins queues instead."""
    hasher = SlowHasher()
    passwords = Passwords(hasher, max_concurrent=2)
    stored = hasher.hash(GOOD)

    results = await asyncio.gather(*(passwords.verify(stored, GOOD) for _ in range(6)))

    assert all(result.valid for result in results)
    assert hasher.most == 2  # in parallel (off the event loop), but never more than two
