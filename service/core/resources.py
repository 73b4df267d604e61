"""What the lifespan opens once and closes once: engine, sessions, store, readiness probe."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from tenacity import AsyncRetrying, RetryError, stop_after_attempt, wait_exponential

from service.core.config import Settings
from service.core.logging import get_logger
from service.core.store import KeyValueStore, create_store
from service.db.engine import SessionFactories, create_engine, create_session_factories, safe_url
from service.tenants.engines import TenantEngines
from service.tenants.lifecycle import close_tenancy, open_tenancy
from service.tenants.registry import TenantRegistry

log = get_logger(__name__)
T = TypeVar("T")


class StartupError(RuntimeError):
    """A required dependency stayed unreachable through every start-up attempt."""


@dataclass
class Resources:
    settings: Settings
    engine: AsyncEngine
    sessions: SessionFactories
    store: KeyValueStore
    tenants: TenantRegistry  # also `app.state.tenants` (a TenantLookup)
    tenant_engines: TenantEngines
    on_close: list[Callable[[], Any]] = field(default_factory=list)


async def ping_database(engine: AsyncEngine) -> None:
    async with engine.connect() as connection:
        await connection.execute(text("SELECT 1"))


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


async def open_resources(settings: Settings) -> Resources:
    """Create the pools and check that required dependencies answer."""
    engine = create_engine(settings.database)
    store = create_store(settings.redis)
    try:
        await with_startup_retries(
            settings, f"database {safe_url(settings.database.url.get_secret_value())}",
            lambda: ping_database(engine),
        )  # fmt: skip
        if settings.redis.url is not None and settings.redis.required:
            await with_startup_retries(
                settings, f"redis {safe_url(settings.redis.url.get_secret_value())}", store.ping
            )
    except BaseException:
        await store.close()
        await engine.dispose()
        raise
    tenants, tenant_engines = await open_tenancy(settings)
    return Resources(
        settings=settings,
        engine=engine,
        sessions=create_session_factories(engine),
        store=store,
        tenants=tenants,
        tenant_engines=tenant_engines,
    )


async def close_resources(resources: Resources) -> None:
    for undo in reversed(resources.on_close):
        undo()
    await close_tenancy(resources.tenants, resources.tenant_engines)
    await resources.store.close()
    await resources.engine.dispose()
