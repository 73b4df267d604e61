"""Tracing: off by default at no cost; on with an endpoint, spans reach a real OTLP receiver."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from fastapi import FastAPI

from service.container import container_of
from tests.conftest import ClientFactory
from tests.support import OtlpReceiver, json_lines


def has_otel_middleware(app: FastAPI) -> bool:
    return bool(getattr(app, "_is_instrumented_by_opentelemetry", False))


async def test_tracing_is_off_without_an_endpoint(
    probe_app: Callable[..., FastAPI],
    migrated_sqlite: str,
    client_for: ClientFactory,
    capsys: pytest.CaptureFixture[str],
) -> None:
    app = probe_app()
    client = await client_for(app)
    capsys.readouterr()

    await client.get("/api/v1/info")

    assert not has_otel_middleware(app)
    [access] = [line for line in json_lines(capsys.readouterr().out) if line["event"] == "request"]
    assert "trace_id" not in access


async def test_spans_are_exported_over_otlp_and_logs_carry_trace_ids(
    probe_app: Callable[..., FastAPI],
    migrated_sqlite: str,
    redis_server: str,
    client_for: ClientFactory,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with OtlpReceiver() as receiver:
        app = probe_app(otel_exporter_otlp_endpoint=receiver.endpoint, redis={"url": redis_server})
        client = await client_for(app)
        capsys.readouterr()

        await client.post("/api/v1/test/users", params={"email": "t@example.com", "outcome": "ok"})
        access_lines = json_lines(capsys.readouterr().out)
        await client.get("/api/v1/health/ready")  # pings Redis
        container_of(app).on_close[-1]()  # shut the provider down: flushes the batch

    assert has_otel_middleware(app)
    names = {span.name for span in receiver.spans}
    assert "POST /api/v1/test/users" in names
    assert any(name.startswith("INSERT") for name in names), names
    assert "PING" in names, names
    trace_ids = {span.trace_id.hex() for span in receiver.spans}
    [access] = [line for line in access_lines if line["event"] == "request"]
    assert access["trace_id"] in trace_ids
    assert len(access["span_id"]) == 16
