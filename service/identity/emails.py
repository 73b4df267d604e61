"""Email addresses: how they are normalised, checked and named without being written."""

from __future__ import annotations

import hashlib
import re
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, StringConstraints

from service.identity.models import MAX_EMAIL_LENGTH

# Deliberately loose: one @, no spaces, a dot in the domain. Deliverability is not our job.
EMAIL_PATTERN = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


def normalise_email(value: Any) -> Any:
    """Trimmed and lower-case: the form every email is stored and looked up in."""
    return value.strip().lower() if isinstance(value, str) else value


def _looks_like_email(value: str) -> str:
    if EMAIL_PATTERN.fullmatch(value) is None:
        raise ValueError("must be an email address (name@example.com)")
    return value


Email = Annotated[
    str,
    BeforeValidator(normalise_email),
    StringConstraints(max_length=MAX_EMAIL_LENGTH),
    AfterValidator(_looks_like_email),
]


def email_hash(email: str) -> str:
    """Names one account without writing its address: in log lines (to correlate them) and
    in rate-limit keys (no addresses in Redis, a bounded key length)."""
    return hashlib.sha256(normalise_email(email).encode()).hexdigest()[:32]
