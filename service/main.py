"""The application factory: `uvicorn service.main:create_app --factory`."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware
from starlette.middleware.trustedhost import TrustedHostMiddleware

from service.articles.router import router as articles_router
from service.auth.router import router as auth_router
from service.auth.service import build_auth_context
from service.core.config import Settings, ensure_safe
from service.core.errors import ERROR_RESPONSES, install_error_handlers
from service.core.logging import access_log, configure_logging, get_logger
from service.core.metrics import (
    InstrumentatorMiddleware,
    Metrics,
    install_metrics_route,
    mark_process_dead,
)
from service.core.middleware import (
    AccessLogMiddleware,
    BodySizeLimitMiddleware,
    ErrorEnvelopeMiddleware,
    RequestContextMiddleware,
    SecurityHeadersMiddleware,
)
from service.core.ratelimit import RateLimiter
from service.core.resources import close_resources, open_resources
from service.core.tracing import instrument_app, instrument_clients, tracing_enabled
from service.health.router import router as health_router
from service.health.service import build_probe
from service.info.router import build_router as build_info_router
from service.tenants.metrics import track_tenancy
from service.users.router import router as users_router

API_PREFIX = "/api/v1"
METRICS_PATH = "/metrics"
LIVE_PATH = f"{API_PREFIX}/health/live"
READY_PATH = f"{API_PREFIX}/health/ready"
# Probes and scrapes would drown the access log and skew the latency histograms.
UNOBSERVED_PATHS = (LIVE_PATH, READY_PATH, METRICS_PATH)

DESCRIPTION = (
    "berth: a Kubernetes-native FastAPI service whose tenant databases are provisioned by its "
    "own operator. Every error is answered in one envelope (see `ErrorEnvelope`)."
)
OPENAPI_TAGS = [
    {"name": "health", "description": "Liveness and readiness probes."},
    {"name": "info", "description": "Build and environment of the running service."},
    {"name": "auth", "description": "Log in, rotate and revoke tokens, self sign-up."},
    {"name": "users", "description": "User management: tenant owners/admins, platform admins."},
    {"name": "articles", "description": "Articles of the caller's tenant, in its own database."},
]

log = get_logger(__name__)


def _lifespan(settings: Settings, metrics: Metrics, tracer_provider: object | None):  # type: ignore[no-untyped-def]
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        resources = await open_resources(settings)
        metrics.track_pool(resources.engine, "control")
        if tracer_provider is not None:
            resources.on_close.append(instrument_clients(tracer_provider, resources.engine))
        app.state.resources = resources
        app.state.tenants = resources.tenants  # the TenantLookup other features read
        track_tenancy(metrics.registry, resources.tenants, resources.tenant_engines)
        app.state.readiness = build_probe(resources)
        # Start-up objects live as long as the process: take them out of the collector's
        # reach so full collections stop pausing the event loop (docs/benchmarks.md).
        gc.collect()
        gc.freeze()
        log.info(
            "startup_complete",
            environment=settings.environment.value,
            version=settings.version,
            store=resources.store.backend,
        )
        log_flusher = asyncio.create_task(access_log.flush_periodically())
        try:
            yield
        finally:
            log_flusher.cancel()
            await asyncio.gather(log_flusher, return_exceptions=True)
            await close_resources(resources)
            mark_process_dead()
            log.info("shutdown_complete")

    return lifespan


def _add_middleware(app: FastAPI, settings: Settings, metrics: Metrics) -> None:
    # add_middleware wraps what is there, so add innermost first.
    if settings.http.trusted_hosts:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=settings.http.trusted_hosts)
    if settings.http.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.http.cors_origins,
            allow_credentials=settings.http.cors_allow_credentials,
            allow_methods=["*"],
            allow_headers=["*"],
            expose_headers=["X-Request-ID"],
        )
    app.add_middleware(ErrorEnvelopeMiddleware)
    app.add_middleware(BodySizeLimitMiddleware, max_body_bytes=settings.http.max_body_bytes)
    app.add_middleware(SecurityHeadersMiddleware, hsts=settings.is_production)
    if settings.observability.metrics_enabled:
        # Upstream types the ASGI scope loosely, which Starlette's factory protocol rejects.
        app.add_middleware(
            InstrumentatorMiddleware,  # type: ignore[arg-type]
            **metrics.middleware_options(UNOBSERVED_PATHS),
        )
    app.add_middleware(AccessLogMiddleware, excluded_paths=UNOBSERVED_PATHS)
    app.add_middleware(RequestContextMiddleware)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app; reads the environment only when `settings` is not given."""
    settings = settings or Settings()
    ensure_safe(settings)
    configure_logging(settings.observability, with_trace=tracing_enabled(settings))
    metrics = Metrics(version=settings.version, commit=settings.commit)
    docs = settings.docs_enabled
    app = FastAPI(
        # FastAPI's native telemetry looks up the global OTel providers on every request;
        # tracing is ours (service/core/tracing.py), on only when an endpoint is configured.
        telemetry={"tracing": False, "metrics": False, "logs": False},
        title="berth",
        version=settings.version,
        description=DESCRIPTION,
        openapi_tags=OPENAPI_TAGS,
        docs_url="/docs" if docs else None,
        redoc_url="/redoc" if docs else None,
        openapi_url="/openapi.json" if docs else None,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    # Built here, not in the lifespan: bad keys or limits refuse the start (ConfigError).
    app.state.auth = build_auth_context(settings.auth)
    app.state.rate_limiter = RateLimiter(settings.rate_limits, settings.redis.memory_max_entries)
    # Each feature router is included directly under the prefix: in this FastAPI a router
    # nested in another costs measurable time per request (docs/benchmarks.md). Matching
    # tries routes in order, so the busiest come first (no two routers share a path).
    routers = (articles_router, build_info_router(settings), health_router, auth_router,
               users_router)  # fmt: skip
    for router in routers:
        app.include_router(router, prefix=API_PREFIX, responses=ERROR_RESPONSES)
    if settings.observability.metrics_enabled:
        install_metrics_route(app, metrics, METRICS_PATH)
    install_error_handlers(app)
    _add_middleware(app, settings, metrics)
    tracer_provider = (
        instrument_app(app, settings, list(UNOBSERVED_PATHS)) if tracing_enabled(settings) else None
    )
    app.router.lifespan_context = _lifespan(settings, metrics, tracer_provider)
    return app
