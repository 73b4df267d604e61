"""Argon2id password hashing and the password policy.

Hashing is CPU- and memory-bound (64 MiB per hash with the defaults), so it runs in worker
threads (argon2-cffi releases the GIL) behind a semaphore that bounds how many run at once
(AuthSettings.argon2_max_concurrent): a burst of logins must not take the event loop, or
the pod's memory, with it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from functools import cached_property

import argon2
from argon2.exceptions import InvalidHashError, VerificationError

from service.core.config import AuthSettings

MIN_PASSWORD_LENGTH = 10
MAX_PASSWORD_LENGTH = 128
# Not a real credential: hashed once so unknown emails cost the same verification work.
_DUMMY_PASSWORD = "berth-dummy-password-for-unknown-accounts"  # noqa: S105


def password_problems(password: str, email: str | None = None) -> list[str]:
    """Why `password` is refused by the policy; empty when it is acceptable."""
    problems: list[str] = []
    if len(password) < MIN_PASSWORD_LENGTH:
        problems.append(f"password must be at least {MIN_PASSWORD_LENGTH} characters")
    if len(password) > MAX_PASSWORD_LENGTH:
        problems.append(f"password must be at most {MAX_PASSWORD_LENGTH} characters")
    if email:
        candidate = password.strip().lower()
        address = email.strip().lower()
        if candidate in {address, address.partition("@")[0]}:
            problems.append("password must not be the email address or its local part")
    return problems


def build_hasher(settings: AuthSettings) -> argon2.PasswordHasher:
    return argon2.PasswordHasher(
        time_cost=settings.argon2_time_cost,
        memory_cost=settings.argon2_memory_kib,
        parallelism=settings.argon2_parallelism,
        type=argon2.Type.ID,
    )


@dataclass(frozen=True)
class Verification:
    valid: bool
    # Set when the stored hash was made with other parameters than the current ones.
    new_hash: str | None = None


class Passwords:
    """Hash and verify off the event loop; the same work for unknown accounts as for known."""

    def __init__(self, hasher: argon2.PasswordHasher, max_concurrent: int) -> None:
        self.hasher = hasher
        self._slots = asyncio.Semaphore(max_concurrent)

    @cached_property
    def _dummy_hash(self) -> str:
        # Lazily: an app that never sees a login should not pay for a 64 MiB hash at start.
        return self.hasher.hash(_DUMMY_PASSWORD)

    async def hash(self, password: str) -> str:
        async with self._slots:
            return await asyncio.to_thread(self.hasher.hash, password)

    async def verify(self, stored_hash: str | None, password: str) -> Verification:
        """Check `password`; with no stored hash (unknown account) verify against a dummy."""
        async with self._slots:
            return await asyncio.to_thread(self._verify, stored_hash, password)

    def _verify(self, stored_hash: str | None, password: str) -> Verification:
        dummy_hash = self._dummy_hash  # made on the first call of either kind, not only unknown
        if stored_hash is None:
            self._check(dummy_hash, password)
            return Verification(valid=False)
        if not self._check(stored_hash, password):
            return Verification(valid=False)
        if self.hasher.check_needs_rehash(stored_hash):
            return Verification(valid=True, new_hash=self.hasher.hash(password))
        return Verification(valid=True)

    def _check(self, stored_hash: str, password: str) -> bool:
        try:
            return self.hasher.verify(stored_hash, password)
        except (VerificationError, InvalidHashError):  # a mismatch is a VerificationError
            return False
