"""Request context, access log, security headers, CORS and trusted hosts, end to end."""

from __future__ import annotations

import re
from collections.abc import Callable

import httpx
import pytest
import structlog
from fastapi import FastAPI

from service.core.config import ObservabilitySettings, Settings
from service.core.http import REQUEST_ID_SCOPE_KEY
from service.core.logging import configure_logging
from service.core.metrics import HTTP_REQUEST_DURATION, HTTP_REQUESTS_INPROGRESS, Metrics
from service.core.middleware import (
    BodySizeLimitMiddleware,
    ErrorEnvelopeMiddleware,
    ObservabilityMiddleware,
    SecurityHeadersMiddleware,
    StorableTextMiddleware,
)
from service.core.proxies import ForwardedHeadersMiddleware
from service.main import UNOBSERVED_PATHS, create_app
from tests.conftest import ClientFactory
from tests.support import assert_envelope, json_lines

GENERATED_ID = re.compile(r"^[0-9a-f]{32}$")


async def test_well_formed_request_id_is_accepted_and_echoed(
    probe_client: httpx.AsyncClient,
) -> None:
    response = await probe_client.get("/api/v1/info", headers={"X-Request-ID": "req-42.a:b_c"})

    assert response.headers["x-request-id"] == "req-42.a:b_c"


@pytest.mark.parametrize(
    "incoming",
    ["x" * 65, "has space", "semi;colon", "", "ünïcode", "<script>"],
    ids=["too-long", "space", "semicolon", "empty", "non-ascii", "markup"],
)
async def test_malformed_request_id_is_replaced(
    probe_client: httpx.AsyncClient, incoming: str
) -> None:
    response = await probe_client.get(
        "/api/v1/info", headers=[(b"x-request-id", incoming.encode())]
    )

    assert GENERATED_ID.match(response.headers["x-request-id"])


async def test_request_id_of_64_chars_is_kept(probe_client: httpx.AsyncClient) -> None:
    response = await probe_client.get("/api/v1/info", headers={"X-Request-ID": "a" * 64})

    assert response.headers["x-request-id"] == "a" * 64


async def test_missing_request_id_is_generated_fresh_per_request(
    probe_client: httpx.AsyncClient,
) -> None:
    first = await probe_client.get("/api/v1/info")
    second = await probe_client.get("/api/v1/info")

    assert GENERATED_ID.match(first.headers["x-request-id"])
    assert first.headers["x-request-id"] != second.headers["x-request-id"]


async def test_every_log_line_of_a_request_carries_its_request_id(
    probe_client: httpx.AsyncClient, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    await probe_client.get("/api/v1/test/boom", headers={"X-Request-ID": "trace-me"})

    lines = [line for line in json_lines(capsys.readouterr().out) if line["logger"] != "httpx"]
    assert {line["event"] for line in lines} == {"about_to_fail", "unhandled_error", "request"}
    assert all(line["request_id"] == "trace-me" for line in lines)


async def test_access_log_is_one_line_with_route_template_and_timing(
    probe_client: httpx.AsyncClient, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    response = await probe_client.get("/api/v1/info?secret=x", headers={"X-Request-ID": "al-1"})

    access = [line for line in json_lines(capsys.readouterr().out) if line["event"] == "request"]
    assert len(access) == 1
    line = access[0]
    assert line["logger"] == "berth.access"
    assert line["method"] == "GET"
    assert line["route"] == "/api/v1/info"
    assert line["path"] == "/api/v1/info"  # no query string: it may carry secrets
    assert line["status"] == 200
    assert line["response_bytes"] == len(response.content)
    assert line["client"] == "127.0.0.1"
    assert line["request_id"] == "al-1"
    assert isinstance(line["duration_ms"], float)
    assert line["timestamp"].endswith("Z")


async def test_access_log_skips_probes_and_scrapes(
    probe_client: httpx.AsyncClient, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    for path in ("/api/v1/health/live", "/api/v1/health/ready", "/metrics"):
        assert (await probe_client.get(path)).status_code == 200

    lines = json_lines(capsys.readouterr().out)
    assert not [line for line in lines if line["event"] == "request"]


@pytest.mark.parametrize("proxies", [[], ["10.0.0.0/8"]], ids=["direct", "behind-proxies"])
def test_request_id_access_log_and_metrics_are_one_layer(
    make_settings: Callable[..., Settings], proxies: list[str]
) -> None:
    """They were three layers (request context, access log, instrumentator), each a closure,
    a send hop and an await per request; outside it only the forwarded headers, which name
    the client it logs."""
    app = create_app(make_settings(http={"trusted_proxies": proxies}))

    stack = [layer.cls for layer in app.user_middleware]

    outer = [ForwardedHeadersMiddleware] if proxies else []
    inner = [SecurityHeadersMiddleware, BodySizeLimitMiddleware, ErrorEnvelopeMiddleware,
             StorableTextMiddleware]  # fmt: skip
    assert stack == [*outer, ObservabilityMiddleware, *inner]
    [observability] = [m for m in app.user_middleware if m.cls is ObservabilityMiddleware]
    assert observability.kwargs["http_metrics"] is not None
    assert set(observability.kwargs["excluded_paths"]) == set(UNOBSERVED_PATHS)


async def test_a_request_the_app_fails_is_still_logged_counted_and_cleared(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """An exception escaping the app (nothing inside made it a response) is a 500 in the
    access log and the metrics, the gauge is back at 0, and the log context is cleared."""
    configure_logging(ObservabilitySettings(log_format="json"))
    metrics = Metrics(version="test", commit="test")

    async def failing(scope: dict, receive: object, send: object) -> None:
        raise RuntimeError("escaped")

    async def receive() -> dict:
        return {"type": "http.request", "body": b""}

    async def send(message: dict) -> None:
        raise AssertionError("nothing is sent")

    layer = ObservabilityMiddleware(failing, http_metrics=metrics.http_metrics(()))
    scope = {"type": "http", "method": "GET", "path": "/x", "headers": [], "app": FastAPI(),
             "client": ("192.0.2.1", 1)}  # fmt: skip
    capsys.readouterr()

    with pytest.raises(RuntimeError):
        await layer(scope, receive, send)

    [line] = json_lines(capsys.readouterr().out)
    assert line["status"] == 500
    assert line["request_id"] == scope[REQUEST_ID_SCOPE_KEY]
    assert line["client"] == "192.0.2.1"
    sample = metrics.registry.get_sample_value
    assert sample(f"{HTTP_REQUEST_DURATION}_count",
                  {"handler": "none", "method": "GET", "status": "500"}) == 1  # fmt: skip
    assert sample(HTTP_REQUESTS_INPROGRESS, {"handler": "none", "method": "GET"}) == 0
    assert structlog.contextvars.get_contextvars() == {}


async def test_security_headers_are_on_every_response(probe_client: httpx.AsyncClient) -> None:
    for response in (
        await probe_client.get("/api/v1/info"),
        await probe_client.get("/does-not-exist"),
        await probe_client.get("/api/v1/test/boom"),
    ):
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["referrer-policy"] == "strict-origin-when-cross-origin"
        assert "camera=()" in response.headers["permissions-policy"]
        assert "strict-transport-security" not in response.headers


async def _headers_from(app: SecurityHeadersMiddleware, scheme: str) -> dict[bytes, bytes]:
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b""}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "scheme": scheme, "method": "GET", "path": "/", "headers": []}
    await app(scope, receive, send)
    return dict(sent[0]["headers"])


async def _ok_app(scope: dict, receive: object, send: Callable) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b""})


@pytest.mark.parametrize(
    ("production", "scheme", "has_hsts"),
    [(True, "https", True), (True, "http", False), (False, "https", False)],
)
async def test_hsts_only_in_production_behind_https(
    production: bool, scheme: str, has_hsts: bool
) -> None:
    headers = await _headers_from(SecurityHeadersMiddleware(_ok_app, hsts=production), scheme)

    assert (b"strict-transport-security" in headers) is has_hsts


async def _read_all(scope: dict, receive: Callable, send: Callable) -> None:
    while (await receive()).get("more_body"):
        pass
    await _ok_app(scope, receive, send)


@pytest.mark.parametrize(
    ("http_version", "headers"),
    [("2", []), ("1.1", [(b"transfer-encoding", b"chunked")])],
    ids=["http2-without-length", "http1-chunked"],
)
async def test_a_body_without_content_length_is_still_counted(
    http_version: str, headers: list[tuple[bytes, bytes]]
) -> None:
    """Only an HTTP/1.x request with neither length nor chunking skips the counting."""
    chunks = [{"type": "http.request", "body": b"x" * 600, "more_body": True}] * 2
    sent: list[dict] = []

    async def receive() -> dict:
        return chunks.pop() if chunks else {"type": "http.request", "body": b""}

    async def send(message: dict) -> None:
        sent.append(message)

    app = BodySizeLimitMiddleware(_read_all, max_body_bytes=1000)
    scope = {"type": "http", "http_version": http_version, "method": "POST", "path": "/",
             "headers": headers}  # fmt: skip
    await app(scope, receive, send)

    assert sent[0]["status"] == 413


async def test_cors_answers_configured_origins_only(
    probe_app: Callable[..., FastAPI], migrated_sqlite: str, client_for: ClientFactory
) -> None:
    client = await client_for(probe_app(http={"cors_origins": ["https://app.example.com"]}))
    preflight = {"Access-Control-Request-Method": "POST"}

    allowed = await client.options(
        "/api/v1/test/items", headers={"Origin": "https://app.example.com", **preflight}
    )
    denied = await client.options(
        "/api/v1/test/items", headers={"Origin": "https://evil.example.com", **preflight}
    )

    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == "https://app.example.com"
    assert "access-control-allow-origin" not in denied.headers
    assert_envelope(denied, 400, "BadRequest", "/api/v1/test/items")


async def test_trusted_hosts_reject_other_host_headers(
    probe_app: Callable[..., FastAPI], migrated_sqlite: str, client_for: ClientFactory
) -> None:
    client = await client_for(probe_app(http={"trusted_hosts": ["api.example.com"]}))

    good = await client.get("/api/v1/info", headers={"Host": "api.example.com"})
    bad = await client.get("/api/v1/info", headers={"Host": "attacker.example.com"})

    assert good.status_code == 200
    body = assert_envelope(bad, 400, "BadRequest", "/api/v1/info")
    assert body["message"] == "Invalid host header"
