"""The core part of the app's container and the request dependencies built on it.

All are `async def` even without awaiting: FastAPI runs a plain `def` dependency in a worker
thread, which cost more than half the throughput of a cheap route (docs/benchmarks.md).
They take `request` rather than each other: FastAPI walks a dependency's whole sub-graph each
time it is named, before it looks in its per-request cache, so a deep graph costs per request
what its paths number (54 walks for one article GET before this was flattened).
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request, Response

from service.core.config import Settings
from service.core.errors import RateLimited, UnsupportedMediaType
from service.core.http import is_json_media_type, keep_response_headers, kept_response_headers
from service.core.logging import get_logger
from service.core.metrics import Metrics
from service.core.ratelimit import REMAINING, RULES, Decision, RateLimiter
from service.core.slots import AppSlot
from service.core.store import KeyValueStore

log = get_logger(__name__)


@dataclass(frozen=True)
class Core:
    """What every feature may use: settings, the key-value store, limits and metrics."""

    settings: Settings
    store: KeyValueStore
    rate_limiter: RateLimiter
    metrics: Metrics


CORE: AppSlot[Core] = AppSlot("core")


async def get_settings(request: Request) -> Settings:
    return CORE.of(request).settings


async def get_store(request: Request) -> KeyValueStore:
    return CORE.of(request).store


SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[KeyValueStore, Depends(get_store)]


async def require_json_body(request: Request) -> None:
    """415 unless a request that carries a body declares JSON (`application/json`, `+json`)."""
    has_body = request.headers.get("content-length", "0") != "0" or (
        "transfer-encoding" in request.headers
    )
    if not has_body or is_json_media_type(request.headers.get("content-type", "")):
        return
    raise UnsupportedMediaType("Send the body as application/json")


# Router-level guard for JSON APIs: `APIRouter(dependencies=[RequireJson])`.
RequireJson = Depends(require_json_body)

_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


async def forbid_storing(request: Request, response: Response) -> None:
    """Answers carrying credentials (tokens, who the caller is) must not be kept by any cache
    (RFC 6749 5.1), errors included."""
    keep_response_headers(request.scope, _NO_STORE)
    response.headers.update(_NO_STORE)


# First in a route's dependencies, so that every answer of the route has it.
NoStore = Depends(forbid_storing)


# Rate limits -------------------------------------------------------------------------------


def _tell_what_is_left(request: Request, response: Response, decision: Decision) -> None:
    """RateLimit-* on the answer, success or error; with several limits on one route, the
    client is told about the tightest."""
    current = kept_response_headers(request.scope).get(REMAINING)
    if current is not None and int(current) <= decision.remaining:
        return
    headers = decision.headers()
    keep_response_headers(request.scope, headers)
    response.headers.update(headers)


async def enforce(request: Request, response: Response, rule: str, identity: str) -> None:
    """Count one request against `rule` for `identity`; RateLimited (429) when over."""
    limiter = CORE.of(request).rate_limiter
    if not limiter.enabled:
        return
    decision = await limiter.hit(rule, identity)
    if not decision.allowed:
        CORE.of(request).metrics.rate_limit_rejections.labels(rule=rule).inc()
        log.info("rate_limited", rule=rule)
        raise RateLimited(math.ceil(decision.retry_after_ms / 1000), headers=decision.headers())
    _tell_what_is_left(request, response, decision)


def limit_by_client_ip(rule: str) -> Callable[[Request, Response], Awaitable[None]]:
    """A dependency that limits `rule` per client IP (see RateLimiter.client_ip)."""
    if rule not in RULES:
        raise ValueError(f"unknown rate-limit rule {rule!r}")

    async def dependency(request: Request, response: Response) -> None:
        limiter = CORE.of(request).rate_limiter
        await enforce(request, response, rule, limiter.client_ip(request))

    return dependency


LoginIpRateLimit = Annotated[None, Depends(limit_by_client_ip("login_per_ip"))]
RegisterIpRateLimit = Annotated[None, Depends(limit_by_client_ip("register_per_ip"))]
RefreshIpRateLimit = Annotated[None, Depends(limit_by_client_ip("refresh_per_ip"))]
