"""Start-up: wait for a required dependency with bounded retries, then fail in one line."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from tenacity import AsyncRetrying, RetryError, stop_after_attempt, wait_exponential

from service.core.config import Settings
from service.core.logging import get_logger

log = get_logger(__name__)
T = TypeVar("T")


class StartupError(RuntimeError):
    """A required dependency stayed unreachable through every start-up attempt."""


async def with_startup_retries(
    settings: Settings, what: str, attempt: Callable[[], Awaitable[T]]
) -> T:
    """Run `attempt` up to `startup_retries` times with backoff, then fail with one message."""
    retrying = AsyncRetrying(
        stop=stop_after_attempt(settings.startup_retries),
        wait=wait_exponential(multiplier=0.1, max=settings.startup_retry_max_wait_seconds),
        before_sleep=lambda state: log.warning(
            "startup_dependency_retry",
            dependency=what,
            attempt=state.attempt_number,
            error=type(state.outcome.exception()).__name__ if state.outcome else None,
        ),
    )
    try:
        async for retry_state in retrying:
            with retry_state:
                return await attempt()
    except RetryError as exc:
        cause = exc.last_attempt.exception()
        message = (
            f"{what} unreachable after {settings.startup_retries} attempts: "
            f"{type(cause).__name__}: {cause}"
        )
        log.error("startup_failed", dependency=what, error=message)
        raise StartupError(message) from cause
    raise AssertionError("unreachable")  # pragma: no cover
