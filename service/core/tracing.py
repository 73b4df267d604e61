"""OpenTelemetry tracing: on only when OTEL_EXPORTER_OTLP_ENDPOINT is set, free when off."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine

from service.core.config import Settings
from service.core.logging import get_logger

log = get_logger(__name__)


def tracing_enabled(settings: Settings) -> bool:
    return bool(settings.otel_exporter_otlp_endpoint)


def instrument_app(app: FastAPI, settings: Settings, excluded_paths: list[str]) -> Any:
    """Install the tracer provider and the FastAPI instrumentation; returns the provider."""
    try:
        from opentelemetry import trace
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise RuntimeError(
            "OTEL_EXPORTER_OTLP_ENDPOINT is set but the tracing extra is missing: "
            "pip install 'berth[tracing]'"
        ) from exc
    resource = Resource.create(
        {"service.name": settings.service_name, "service.version": settings.version}
    )
    provider = TracerProvider(resource=resource)
    # The signal path is appended as the OTLP spec says for OTEL_EXPORTER_OTLP_ENDPOINT.
    endpoint = f"{str(settings.otel_exporter_otlp_endpoint).rstrip('/')}/v1/traces"
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    trace.set_tracer_provider(provider)
    FastAPIInstrumentor.instrument_app(
        app, tracer_provider=provider, excluded_urls=",".join(excluded_paths)
    )
    log.info("tracing_enabled", endpoint=settings.otel_exporter_otlp_endpoint)
    return provider


def instrument_clients(provider: Any, engine: AsyncEngine) -> Callable[[], None]:
    """Trace SQL and Redis calls; returns the function that undoes it at shutdown."""
    from opentelemetry.instrumentation.redis import RedisInstrumentor
    from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor

    sqlalchemy = SQLAlchemyInstrumentor()
    # The instrumentation declares SQLAlchemy < 2.1 and otherwise refuses; its engine events
    # work on 2.1 (tests/service/core/test_tracing.py proves the INSERT span arrives).
    sqlalchemy.instrument(engine=engine.sync_engine, tracer_provider=provider, skip_dep_check=True)
    redis = RedisInstrumentor()
    if not redis.is_instrumented_by_opentelemetry:
        redis.instrument(tracer_provider=provider)

    def undo() -> None:
        sqlalchemy.uninstrument()
        provider.shutdown()

    return undo
