"""The app's container: everything that lives as long as the app, built once, typed.

`build_container` makes every long-lived object from the settings without touching the
network (engines and the Redis client connect on first use), so a bad key or limit refuses
the start at once (ConfigError). `start` then waits for the required dependencies (bounded
retries) and starts the tenant registry's watcher; `close` undoes it all, in reverse.
`service/main.py` builds it for each app and puts each part in its slot; tests build the
same container through the same function.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import argon2
from starlette.applications import Starlette

from service.articles.service import ArticleService
from service.articles.wiring import ARTICLE_LOCAL_PREFIXES, ARTICLES, build_articles
from service.core.config import Settings, safe_url
from service.core.dependencies import CORE, Core
from service.core.local_cache import LocallyCachedStore, locally_cached
from service.core.metrics import Metrics
from service.core.ratelimit import RateLimiter
from service.core.slots import AppSlot
from service.core.startup import with_startup_retries
from service.core.store import create_store
from service.db.dependencies import CONTROL_PLANE
from service.db.engine import Database
from service.health.service import READINESS, ReadinessProbe, build_probe
from service.identity.wiring import IDENTITY, IDENTITY_LOCAL_PREFIXES, Identity, build_identity
from service.submissions.wiring import SUBMISSIONS, Submissions, build_submissions
from service.tenants.wiring import TENANCY, Tenancy, build_tenancy


@dataclass(frozen=True)
class Container:
    """Non-optional parts, one per feature that keeps state for the app's lifetime."""

    core: Core
    control_plane: Database
    tenancy: Tenancy
    identity: Identity
    articles: ArticleService
    submissions: Submissions
    readiness: ReadinessProbe
    # The coherent in-process cache identity and articles read through (None without Redis).
    local_cache: LocallyCachedStore | None = None
    # Undone at close, last first (e.g. the tracing of the clients).
    on_close: list[Callable[[], object]] = field(default_factory=list)

    @property
    def settings(self) -> Settings:
        return self.core.settings

    async def start(self) -> None:
        """Wait for the control-plane database and a required Redis, then read and watch
        the tenant registry. Whatever was opened is closed again if this fails."""
        settings = self.settings
        try:
            await with_startup_retries(
                settings,
                f"database {safe_url(settings.database.url.get_secret_value())}",
                self.control_plane.ping,
            )
            redis_url = settings.redis.url
            if redis_url is not None and settings.redis.is_required:
                await with_startup_retries(
                    settings,
                    f"redis {safe_url(redis_url.get_secret_value())}",
                    self.core.store.ping,
                )
            if self.local_cache is not None:
                self.local_cache.start()
            await self.tenancy.start()
            self.submissions.start()
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        for undo in reversed(self.on_close):
            undo()
        self.on_close.clear()
        await self.submissions.stop()  # before the pools: held work is settled or handed back
        await self.tenancy.close()
        if self.local_cache is not None:
            await self.local_cache.close()
        await self.core.store.close()
        await self.control_plane.dispose()


def build_container(
    settings: Settings, *, hasher: argon2.PasswordHasher | None = None
) -> Container:
    """Every long-lived object of the app, wired; `hasher` replaces the configured Argon2
    hasher (tests count its calls)."""
    metrics = Metrics(version=settings.version, commit=settings.commit)
    store = create_store(settings.redis, errors=metrics.redis_errors)
    core = Core(
        settings=settings,
        store=store,
        rate_limiter=RateLimiter(
            settings.rate_limits,
            store,
            settings.redis.memory_max_entries,
            fallbacks=metrics.rate_limit_fallbacks,
        ),
        metrics=metrics,
    )
    control_plane = Database.open(settings.database)
    metrics.track_pool(control_plane.engine, "control")
    tenancy = build_tenancy(settings, metrics.registry)
    local_cache = locally_cached(
        store, settings, metrics, (*IDENTITY_LOCAL_PREFIXES, *ARTICLE_LOCAL_PREFIXES)
    )
    cached_store = store if local_cache is None else local_cache
    return Container(
        core=core,
        control_plane=control_plane,
        tenancy=tenancy,
        identity=build_identity(
            settings,
            store=cached_store,
            control_plane=control_plane.sessions,
            tenants=tenancy.registry,
            metrics=metrics,
            hasher=hasher,
        ),
        articles=build_articles(settings, cached_store, metrics),
        submissions=build_submissions(settings, tenancy, metrics),
        readiness=build_probe(
            settings,
            control_plane,
            store,
            mongo_ping=tenancy.documents.ping,
            ready=metrics.dependency_ready,
        ),
        local_cache=local_cache,
    )


CONTAINER: AppSlot[Container] = AppSlot("container")


def install(app: Starlette, container: Container) -> None:
    """Put the container and each of its parts in its slot on `app`."""
    CONTAINER.fill(app, container)
    CORE.fill(app, container.core)
    CONTROL_PLANE.fill(app, container.control_plane)
    TENANCY.fill(app, container.tenancy)
    IDENTITY.fill(app, container.identity)
    ARTICLES.fill(app, container.articles)
    SUBMISSIONS.fill(app, container.submissions)
    READINESS.fill(app, container.readiness)


def container_of(app: Starlette) -> Container:
    """The container of a built app (the CLI, tests)."""
    return CONTAINER.of_app(app)
