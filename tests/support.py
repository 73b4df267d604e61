"""Test helpers that are not fixtures: service discovery, a TCP relay, free ports."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest

IS_CI = os.environ.get("CI", "").lower() == "true"
PG_ADMIN_URL = os.environ.get(
    "BERTH_TEST_DATABASE_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("BERTH_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def unavailable(what: str, why: object) -> None:
    """Fail under CI=true, skip loudly elsewhere: a missing service is never a silent pass."""
    message = f"{what} is not reachable ({why}); CI requires it"
    if IS_CI:
        pytest.fail(message, pytrace=False)
    pytest.skip(f"SKIPPED LOUDLY: {message}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class TcpRelay:
    """A real TCP forwarder on a fixed local port that can be taken down and brought back.

    Lets a test make PostgreSQL or Redis unreachable (a closed port) and reachable again
    without touching the real servers.
    """

    def __init__(self, target_host: str, target_port: int, listen_port: int | None = None):
        self.target = (target_host, target_port)
        self.port = listen_port or free_port()
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)

    async def stop(self) -> None:
        """Close the port and cut every relayed connection."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._writers):
            writer.close()
        for task in list(self._pipes):
            task.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._writers.update((writer, up_writer))
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pipe(source, sink))
            self._pipes.add(task)
            task.add_done_callback(self._pipes.discard)

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()
        sink.close()
        self._writers.discard(sink)


@contextlib.asynccontextmanager
async def relay(target_host: str, target_port: int) -> AsyncIterator[TcpRelay]:
    proxy = TcpRelay(target_host, target_port)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.stop()


def json_lines(output: str) -> list[dict[str, object]]:
    """Parse the JSON log lines of captured stdout; anything else is a test failure."""
    import json

    return [json.loads(line) for line in output.splitlines() if line.strip()]


def assert_envelope(response: Any, status: int, name: str, path: str) -> dict[str, Any]:
    """Assert `response` is the standard error envelope; return its body."""
    from datetime import datetime

    from service.core.errors import ErrorEnvelope

    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    body: dict[str, Any] = response.json()
    ErrorEnvelope.model_validate(body)
    assert body["success"] is False
    assert body["statusCode"] == status
    assert body["name"] == name
    assert body["path"] == path
    assert body["correlationId"] == response.headers["x-request-id"]
    offset = datetime.fromisoformat(body["timestamp"]).utcoffset()
    assert offset is not None
    assert offset.total_seconds() == 0
    return body


class OtlpReceiver:
    """A real OTLP/HTTP endpoint on 127.0.0.1 that keeps the spans it receives."""

    def __init__(self) -> None:
        import http.server
        import threading

        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
        )

        self.spans: list[Any] = []
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                request = ExportTraceServiceRequest.FromString(body)
                for resource_spans in request.resource_spans:
                    for scope_spans in resource_spans.scope_spans:
                        receiver.spans.extend(scope_spans.spans)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                return

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> OtlpReceiver:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.shutdown()
        self._server.server_close()


def service_env(**overrides: str) -> dict[str, str]:
    """The environment for a `python -m service` subprocess: no BERTH_* from outside."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BERTH_")}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env.update(overrides)
    return env
