"""Pure-ASGI middleware (no BaseHTTPMiddleware: it costs throughput and breaks streaming).

Outermost first: (forwarded headers, with trusted proxies: `service/core/proxies.py`) ->
observability (request id, log context, access log, HTTP metrics) -> security headers ->
body-size limit -> error envelope -> storable text -> (CORS, trusted hosts when configured)
-> router. `service/main.py` adds them in that order.
"""

from __future__ import annotations

import json
import random
import re
import time
import weakref
from collections.abc import Iterable
from http import HTTPStatus
from typing import Any, Protocol
from urllib.parse import parse_qsl

import structlog
from cachetools import LRUCache
from prometheus_fastapi_instrumentator.routing import get_route_name
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.core.errors import VALIDATION_MESSAGE, envelope_bytes, exception_chain
from service.core.http import (
    JSON_MEDIA_TYPE,
    REQUEST_ID_SCOPE_KEY,
    is_json_media_type,
    request_id_of,
)
from service.core.logging import (
    CLIENT,
    DURATION_MS,
    METHOD,
    PATH,
    REQUEST_ID,
    RESPONSE_BYTES,
    ROUTE,
    STATUS,
    access_log,
    get_logger,
)
from service.core.text import (
    UNSTORABLE_MESSAGE,
    UNSTORABLE_TYPE,
    Location,
    find_unstorable,
    find_unstorable_field,
    is_storable,
)

REQUEST_ID_HEADER = b"x-request-id"
MAX_REQUEST_ID_LENGTH = 64
ROUTE_TEMPLATE_SCOPE_KEY = "berth.route_template"
# Matched (method, root path, path) triples remembered per app; beyond this the least recently
# used is dropped, so ids in paths (/items/1, /items/2, ...) cannot grow it without bound.
ROUTE_TEMPLATE_CACHE_SIZE = 1024
_REQUEST_ID_PATTERN = re.compile(rb"^[A-Za-z0-9._:\-]{1,%d}$" % MAX_REQUEST_ID_LENGTH)

error_log = get_logger("berth.errors")


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


def new_request_id() -> str:
    """A fresh id in `uuid.uuid4().hex` form (32 hex digits, version 4, RFC 4122 variant).

    Drawn from `random` rather than `os.urandom`, which costs a system call per request: a
    request id only correlates log lines (clients may send their own), it guards nothing.
    `random` is reseeded in forked workers, so workers do not repeat each other's ids.
    """
    bits = random.getrandbits(128)
    bits = (bits & ~(0xC000 << 48)) | (0x8000 << 48)  # variant: RFC 4122
    bits = (bits & ~(0xF000 << 64)) | (0x4000 << 64)  # version: 4
    return f"{bits:032x}"


async def send_error(
    scope: Scope,
    send: Send,
    status: int,
    message: str,
    extra_headers: Iterable[tuple[bytes, bytes]] = (),
    data: dict[str, Any] | None = None,
) -> None:
    """Answer in the error envelope from middleware (before or instead of the app)."""
    body = envelope_bytes(
        status, message, path=scope["path"], request_id=request_id_of(scope), data=data
    )
    headers = [
        *extra_headers,
        (b"content-type", JSON_MEDIA_TYPE.encode()),
        (b"content-length", str(len(body)).encode()),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class RouteTemplateCache:
    """Route templates of one app by (method, root path, path), least recently used first out.

    The instrumentator's `get_route_name` tries the app's routes one by one on every call;
    a hit here is one cache lookup. Only matched requests are stored: an unknown path (a 404,
    a scanner) is resolved every time and takes no memory. Routes are matched on method and
    path only (berth has no host-based routes), so those make the key. Routes are taken to be
    fixed once the app serves: one added later cannot shadow a path already remembered.
    """

    def __init__(self, size: int = ROUTE_TEMPLATE_CACHE_SIZE) -> None:
        self.size = size
        self._templates: LRUCache[tuple[str, str, str], str] = LRUCache(maxsize=size)

    def __len__(self) -> int:
        return len(self._templates)

    def resolve(self, scope: Scope) -> str | None:
        key = (scope.get("method", ""), scope.get("root_path", ""), scope["path"])
        template = self._templates.get(key)
        if template is not None:
            return template
        template = get_route_name(Request(scope), should_include_root_path=True)
        if template is not None:
            self._templates[key] = template
        return template


# One cache per app (tests build several apps in one process), by id for a cheap lookup;
# the entry goes when its app is garbage-collected, before the id can be reused.
_route_caches: dict[int, RouteTemplateCache] = {}


def route_template_cache(app: Any) -> RouteTemplateCache:
    cache = _route_caches.get(id(app))
    if cache is None:
        cache = _route_caches[id(app)] = RouteTemplateCache()
        weakref.finalize(app, _route_caches.pop, id(app), None)
    return cache


def route_template(scope: Scope) -> str | None:
    """The route template (`/api/v1/items/{item_id}`) a request matches, never the raw path.

    Resolved once per request and kept in the scope: the metrics middleware and the access log
    both need it. Across requests, each app's `RouteTemplateCache` remembers matched paths.
    """
    if ROUTE_TEMPLATE_SCOPE_KEY not in scope:
        app = scope.get("app")
        if app is None:
            template = get_route_name(Request(scope), should_include_root_path=True)
        else:
            template = route_template_cache(app).resolve(scope)
        scope[ROUTE_TEMPLATE_SCOPE_KEY] = template
    template = scope[ROUTE_TEMPLATE_SCOPE_KEY]
    return template if isinstance(template, str) else None


class RequestSeries(Protocol):
    """One request's HTTP metrics: started when it comes in, finished with its status."""

    def start(self) -> None: ...

    def finish(self, status: int, seconds: float) -> None: ...


class RequestMetrics(Protocol):
    """What `ObservabilityMiddleware` records into (`service/core/metrics.py`, HttpMetrics;
    a protocol, since metrics.py builds on `route_template` from here)."""

    def series_of(self, scope: Scope) -> RequestSeries | None: ...


def _request_id(scope: Scope) -> str:
    """A well-formed incoming X-Request-ID (<= 64 chars of [A-Za-z0-9._:-]), else a new one."""
    incoming = _header(scope, REQUEST_ID_HEADER)
    if incoming is not None and _REQUEST_ID_PATTERN.match(incoming):
        return incoming.decode()
    return new_request_id()


class ObservabilityMiddleware:
    """What every request gets first, in one layer: its id, its log context, its access-log
    line and its HTTP metrics.

    - X-Request-ID: a well-formed incoming one is kept, else one is made; it is echoed on the
      response and bound to every log line written while the request runs.
    - One JSON access-log line per request (method, route, path, status, duration, bytes,
      client), except for `excluded_paths` (probes, scrapes).
    - With `http_metrics`, the latency histogram and in-progress gauge (their own exclusions).

    These were three layers; each cost a closure, a send hop, an await and a clock per request
    (docs/benchmarks.md), and one response start and one status serve all three here.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        excluded_paths: Iterable[str] = (),
        http_metrics: RequestMetrics | None = None,
    ) -> None:
        self.app = app
        self.excluded_paths = frozenset(excluded_paths)
        self.http_metrics = http_metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = scope[REQUEST_ID_SCOPE_KEY] = _request_id(scope)
        id_header = (REQUEST_ID_HEADER, request_id.encode())
        series = None if self.http_metrics is None else self.http_metrics.series_of(scope)
        status = HTTPStatus.INTERNAL_SERVER_ERROR.value
        response_bytes = 0

        async def send_observed(message: Message) -> None:
            nonlocal status, response_bytes
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), id_header]
            elif message["type"] == "http.response.body":
                response_bytes += len(message.get("body", b""))
            await send(message)

        # Each request runs in its own task with a copy of the server's context; `_finish`
        # clears it anyway, for callers that share one task between requests (in-process
        # clients).
        structlog.contextvars.bind_contextvars(**{REQUEST_ID: request_id})
        if series is not None:
            series.start()
        started = time.perf_counter()
        try:
            await self.app(scope, receive, send_observed)
        finally:
            self._finish(scope, series, status, response_bytes, time.perf_counter() - started)

    def _finish(
        self, scope: Scope, series: RequestSeries | None, status: int, response_bytes: int,
        seconds: float,
    ) -> None:  # fmt: skip
        try:
            if series is not None:
                series.finish(status, seconds)
            if scope["path"] in self.excluded_paths:
                return
            client = scope.get("client")
            access_log(
                {
                    METHOD: scope["method"],
                    ROUTE: route_template(scope),
                    PATH: scope["path"],
                    STATUS: status,
                    DURATION_MS: round(seconds * 1000, 3),
                    RESPONSE_BYTES: response_bytes,
                    CLIENT: client[0] if client else None,
                }
            )
        finally:
            structlog.contextvars.clear_contextvars()


class SecurityHeadersMiddleware:
    """nosniff, frame DENY, referrer and permissions policy; HSTS in production over https."""

    _BASE: tuple[tuple[bytes, bytes], ...] = (
        (b"x-content-type-options", b"nosniff"),
        (b"x-frame-options", b"DENY"),
        (b"referrer-policy", b"strict-origin-when-cross-origin"),
        (b"permissions-policy", b"camera=(), microphone=(), geolocation=(), payment=()"),
        (b"cross-origin-opener-policy", b"same-origin"),
    )
    _HSTS = (b"strict-transport-security", b"max-age=31536000; includeSubDomains")
    _WITH_HSTS = (*_BASE, _HSTS)

    def __init__(self, app: ASGIApp, *, hsts: bool) -> None:
        self.app = app
        self.hsts = hsts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        https = self.hsts and scope.get("scheme") == "https"
        extra = self._WITH_HSTS if https else self._BASE

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), *extra]
            await send(message)

        await self.app(scope, receive, send_with_headers)


class _BodyTooLarge(Exception):
    pass


class BodySizeLimitMiddleware:
    """413 when Content-Length or the streamed body exceeds the limit."""

    def __init__(self, app: ASGIApp, *, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _header(scope, b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_body_bytes):
            await self._reject(scope, send, declared)
            return
        if declared is None and _has_no_body(scope):
            await self.app(scope, receive, send)  # nothing to count: no wrappers to pay for
            return
        await self._call_counting(scope, receive, send)

    async def _reject(self, scope: Scope, send: Send, declared: bytes) -> None:
        if not declared.isdigit():
            await send_error(scope, send, HTTPStatus.BAD_REQUEST, "Invalid Content-Length header")
            return
        await send_error(scope, send, HTTPStatus.REQUEST_ENTITY_TOO_LARGE, self._message)

    @property
    def _message(self) -> str:
        return f"Request body exceeds {self.max_body_bytes} bytes"

    async def _call_counting(self, scope: Scope, receive: Receive, send: Send) -> None:
        received = 0
        response_started = False
        rejected = False

        async def receive_counting() -> Message:
            nonlocal received, rejected
            message = await receive()
            if message["type"] != "http.request":
                return message
            received += len(message.get("body", b""))
            if received <= self.max_body_bytes:
                return message
            if not response_started and not rejected:
                # Answer now: the framework may wrap our exception into a different error.
                rejected = True
                await send_error(scope, send, HTTPStatus.REQUEST_ENTITY_TOO_LARGE, self._message)
            raise _BodyTooLarge

        async def send_unless_rejected(message: Message) -> None:
            nonlocal response_started
            if rejected:
                return
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, receive_counting, send_unless_rejected)
        except Exception as exc:
            if not (rejected and _caused_by_body_limit(exc)):
                raise


def _has_no_body(scope: Scope) -> bool:
    """An HTTP/1.x request with neither Content-Length nor Transfer-Encoding has no body
    (RFC 9112, 6.3); under HTTP/2 a body needs neither, so it is always counted."""
    if scope.get("http_version") not in ("1.0", "1.1"):
        return False
    return _header(scope, b"transfer-encoding") is None


def _caused_by_body_limit(exc: BaseException) -> bool:
    return any(isinstance(error, _BodyTooLarge) for error in exception_chain(exc))


def _is_json(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    for key, value in headers:
        if key.lower() == b"content-type":
            return is_json_media_type(value)
    return False


class ErrorEnvelopeMiddleware:
    """Make every error leave in the envelope, whatever raised it.

    An unexpected exception becomes a logged 500 envelope here, inside the access log and the
    header middleware, so it still gets its request id, security headers and access-log line,
    and nothing internal reaches the client. A plain-text error from an inner layer (trusted
    hosts, CORS preflight) is rewritten into the envelope. Success responses pass untouched.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        response_started = False
        held_start: Message | None = None
        held_body: list[bytes] = []

        async def send_enveloped(message: Message) -> None:
            nonlocal response_started, held_start
            if message["type"] == "http.response.start":
                response_started = True
                if message["status"] >= 400 and not _is_json(message.get("headers", ())):
                    held_start = message
                    return
            elif held_start is not None and message["type"] == "http.response.body":
                held_body.append(message.get("body", b""))
                if not message.get("more_body", False):
                    await _send_rewritten(scope, send, held_start, b"".join(held_body))
                return
            await send(message)

        try:
            await self.app(scope, receive, send_enveloped)
        except Exception as exc:
            if _caused_by_body_limit(exc):
                raise
            error_log.error(
                "unhandled_error", method=scope.get("method"), path=scope.get("path"), exc_info=exc
            )
            if response_started:
                raise
            await send_error(scope, send, HTTPStatus.INTERNAL_SERVER_ERROR, "Internal server error")


async def _send_rewritten(scope: Scope, send: Send, start: Message, text: bytes) -> None:
    status = int(start["status"])
    message = text.decode("utf-8", errors="replace").strip()[:200] or HTTPStatus(status).phrase
    kept = [
        (key, value)
        for key, value in start.get("headers", ())
        if key.lower() not in (b"content-type", b"content-length")
    ]
    await send_error(scope, send, status, message, extra_headers=kept)


_FORM_MEDIA_TYPE = b"application/x-www-form-urlencoded"
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class StorableTextMiddleware:
    """422 for text PostgreSQL cannot store (service/core/text.py), wherever a request
    carries it: the path, the query string, a JSON or a form body.

    Bodies are read here (bounded by the body-size limit outside) and replayed to the app;
    only write requests with a JSON or form body pay that, and malformed JSON is left to the
    app's own validation. Multipart bodies are not read (no route takes one).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        location = _unstorable_in_target(scope)
        if location is None and scope["method"] in _BODY_METHODS:
            kind = _body_kind(scope)
            if kind is not None:
                body = await _read_body(receive)
                location = _unstorable_in_body(kind, body)
                receive = _replaying(body, receive)
        if location is not None:
            await _refuse_unstorable(scope, send, location)
            return
        await self.app(scope, receive, send)


def _unstorable_in_target(scope: Scope) -> Location | None:
    if not is_storable(scope["path"]):
        return ["path"]
    query: bytes = scope.get("query_string", b"")
    if b"%00" not in query and b"\x00" not in query:
        return None  # decoding replaces bad UTF-8, so NUL is all a query string can carry
    return find_unstorable_field(
        parse_qsl(query.decode("latin-1"), keep_blank_values=True), "query"
    )


def _body_kind(scope: Scope) -> str | None:
    content_type = _header(scope, b"content-type")
    if content_type is None:
        return None
    if is_json_media_type(content_type):
        return "json"
    if content_type.split(b";", 1)[0].strip().lower() == _FORM_MEDIA_TYPE:
        return "form"
    return None


async def _read_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _unstorable_in_body(kind: str, body: bytes) -> Location | None:
    if kind == "form":
        pairs = parse_qsl(body.decode("latin-1"), keep_blank_values=True)
        return find_unstorable_field(pairs, "body")
    try:
        document = json.loads(body)
    except ValueError:
        return None  # not JSON: the app's validation says so
    return find_unstorable(document, ["body"])


def _replaying(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # what follows the body: a disconnect

    return replay


async def _refuse_unstorable(scope: Scope, send: Send, location: Location) -> None:
    error = {"loc": location, "msg": UNSTORABLE_MESSAGE, "type": UNSTORABLE_TYPE}
    await send_error(
        scope, send, HTTPStatus.UNPROCESSABLE_ENTITY, VALIDATION_MESSAGE, data={"errors": [error]}
    )
