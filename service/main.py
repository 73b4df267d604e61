"""The application factory: `uvicorn service.main:create_app --factory`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI
from starlette.middleware.cors import CORSMiddleware
from starlette.middleware.trustedhost import TrustedHostMiddleware

from service.core.config import Settings, ensure_safe
from service.core.errors import ERROR_RESPONSES, install_error_handlers
from service.core.logging import configure_logging, get_logger
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
from service.core.resources import close_resources, open_resources
from service.core.tracing import instrument_app, instrument_clients, tracing_enabled
from service.health.router import router as health_router
from service.health.service import build_probe
from service.info.router import router as info_router

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
        app.state.readiness = build_probe(resources)
        log.info(
            "startup_complete",
            environment=settings.environment.value,
            version=settings.version,
            store=resources.store.backend,
        )
        try:
            yield
        finally:
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
    api = APIRouter(prefix=API_PREFIX, responses=ERROR_RESPONSES)
    api.include_router(health_router)
    api.include_router(info_router)
    app.include_router(api)
    if settings.observability.metrics_enabled:
        install_metrics_route(app, metrics, METRICS_PATH)
    install_error_handlers(app)
    _add_middleware(app, settings, metrics)
    tracer_provider = (
        instrument_app(app, settings, list(UNOBSERVED_PATHS)) if tracing_enabled(settings) else None
    )
    app.router.lifespan_context = _lifespan(settings, metrics, tracer_provider)
    return app
