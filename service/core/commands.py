"""What every command of `python -m service` shares: settings read once, logging set up from
them, and failures as one line with an exit code (0 done, 1 failed, 2 invalid input or
configuration)."""

from __future__ import annotations

import sys

from service.core.config import Settings, load_settings
from service.core.logging import configure_logging

EXIT_FAILED = 1
EXIT_INVALID = 2


def command_settings() -> Settings:
    """The settings (a one-line ConfigError when invalid) with logging configured from
    them, so that every line a command logs has the service's one format."""
    settings = load_settings()
    configure_logging(settings.observability)
    return settings


def fail(message: str, code: int = EXIT_FAILED) -> int:
    """Say why on stderr, in one line; the exit code to return."""
    print(f"berth: {message}", file=sys.stderr)
    return code


def first_line(exc: BaseException) -> str:
    """`Type: first line of the message`: driver messages go on with the statement, never
    with credentials, but one line is what a terminal user needs."""
    detail = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {detail}"
