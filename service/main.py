"""The composition root: `uvicorn service.main:create_app --factory`.

`create_app` builds the app's container once (`service/container.py`), puts its parts in
their slots, adds the routers and middleware, and starts and closes the container in the
lifespan. No other module wires features together.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware
from starlette.middleware.trustedhost import TrustedHostMiddleware

from service.articles.router import router as articles_router
from service.container import Container, build_container, install
from service.core.config import Settings, ensure_safe
from service.core.docs import install_docs
from service.core.error_handlers import install_error_handlers
from service.core.errors import ERROR_RESPONSES
from service.core.gc_policy import apply_gc_policy
from service.core.http import API_PREFIX
from service.core.logging import access_log, configure_logging, get_logger
from service.core.metrics import (
    Metrics,
    install_metrics_route,
    is_multiprocess,
    mark_process_dead,
    serve_metrics,
)
from service.core.middleware import (
    BodySizeLimitMiddleware,
    ErrorEnvelopeMiddleware,
    ObservabilityMiddleware,
    SecurityHeadersMiddleware,
    StorableTextMiddleware,
)
from service.core.protocol import configure_protocol
from service.core.proxies import ForwardedHeadersMiddleware, TrustedProxies
from service.core.tracing import instrument_app, instrument_clients, tracing_enabled
from service.db.errors import install_database_error_handlers
from service.documents.errors import install_document_error_handlers
from service.health.router import router as health_router
from service.identity.auth_router import router as auth_router
from service.identity.users_router import router as users_router
from service.info.router import build_router as build_info_router
from service.submissions.router import router as submissions_router

METRICS_PATH = "/metrics"
DOCS_PATH = "/docs"
OPENAPI_PATH = "/openapi.json"
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
    {
        "name": "submissions",
        "description": "Declarations of the caller's tenant, in its own MongoDB database.",
    },
]

log = get_logger(__name__)


def _lifespan(
    container: Container, tracer_provider: object | None
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settings = container.settings
        await container.start()
        if tracer_provider is not None:
            container.on_close.append(
                instrument_clients(tracer_provider, container.control_plane.engine)
            )
        _serve_metrics_port(container)
        # Last of start-up, in every worker: freeze what it built, widen the young
        # generation (service/core/gc_policy.py).
        apply_gc_policy(settings.gc)
        log.info(
            "startup_complete",
            environment=settings.environment.value,
            version=settings.version,
            store=container.core.store.backend,
        )
        background = [asyncio.create_task(access_log.flush_periodically())]
        if settings.observability.metrics_enabled:
            background.append(asyncio.create_task(container.core.metrics.watch_event_loop()))
        try:
            yield
        finally:
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            await container.close()
            mark_process_dead()
            log.info("shutdown_complete")

    return lifespan


def _serve_metrics_port(container: Container) -> None:
    """The metrics port, when one is set and this process is the only one (with several
    workers, `serve` runs it in the parent over the shared files)."""
    settings = container.settings
    port = settings.observability.metrics_port
    if port is None or not settings.observability.metrics_enabled or is_multiprocess():
        return
    stop = serve_metrics(container.core.metrics.registry, settings.http.host, port)
    container.on_close.append(stop)
    log.info("metrics_port_serving", port=port)


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
    app.add_middleware(StorableTextMiddleware)
    app.add_middleware(ErrorEnvelopeMiddleware)
    app.add_middleware(BodySizeLimitMiddleware, max_body_bytes=settings.http.max_body_bytes)
    app.add_middleware(SecurityHeadersMiddleware, hsts=settings.is_production)
    http_metrics = (
        metrics.http_metrics(UNOBSERVED_PATHS) if settings.observability.metrics_enabled else None
    )
    app.add_middleware(
        ObservabilityMiddleware, excluded_paths=UNOBSERVED_PATHS, http_metrics=http_metrics
    )
    proxies = TrustedProxies.of(settings.http)
    if proxies:
        app.add_middleware(ForwardedHeadersMiddleware, proxies=proxies)


def create_app(settings: Settings | None = None, *, container: Container | None = None) -> FastAPI:
    """Build the app; reads the environment only when neither `settings` nor a prebuilt
    `container` (tests: `build_container(settings, hasher=...)`) is given."""
    settings = container.settings if container is not None else settings or Settings()
    ensure_safe(settings)
    configure_logging(settings.observability, with_trace=tracing_enabled(settings))
    configure_protocol(settings.http)
    container = container or build_container(settings)
    metrics = container.core.metrics
    app = FastAPI(
        # FastAPI's native telemetry looks up the global OTel providers on every request;
        # tracing is ours (service/core/tracing.py), on only when an endpoint is configured.
        telemetry={"tracing": False, "metrics": False, "logs": False},
        title="berth",
        version=settings.version,
        description=DESCRIPTION,
        openapi_tags=OPENAPI_TAGS,
        # Served by `install_docs` from files in the image, not from a CDN.
        docs_url=None,
        redoc_url=None,
        openapi_url=OPENAPI_PATH if settings.docs_enabled else None,
    )
    install(app, container)
    # Each feature router is included directly under the prefix: in this FastAPI a router
    # nested in another costs measurable time per request (docs/benchmarks.md). Matching
    # tries routes in order, so the busiest come first (no two routers share a path).
    routers = [articles_router, build_info_router(settings), health_router, auth_router,
               users_router]  # fmt: skip
    if settings.submissions.enabled:
        routers.append(submissions_router)
    for router in routers:
        app.include_router(router, prefix=API_PREFIX, responses=ERROR_RESPONSES)
    if settings.docs_enabled:
        install_docs(app, DOCS_PATH)
    observability = settings.observability
    if observability.metrics_enabled and observability.metrics_port is None:
        install_metrics_route(app, metrics, METRICS_PATH)
    install_error_handlers(app)
    install_database_error_handlers(app)
    install_document_error_handlers(app)
    _add_middleware(app, settings, metrics)
    tracer_provider = (
        instrument_app(app, settings, list(UNOBSERVED_PATHS)) if tracing_enabled(settings) else None
    )
    app.router.lifespan_context = _lifespan(container, tracer_provider)
    return app
