"""Request dependencies as Annotated aliases: settings, resources, the request's session.

All are `async def` even without awaiting: FastAPI runs a plain `def` dependency in a worker
thread, which cost more than half the throughput of a cheap route (docs/benchmarks.md).
They take `request` rather than each other: FastAPI walks a dependency's whole sub-graph each
time it is named, before it looks in its per-request cache, so a deep graph costs per request
what its paths number (54 walks for one article GET before this was flattened).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession

from service.core.config import Settings
from service.core.errors import UnsupportedMediaType
from service.core.resources import Resources
from service.core.store import KeyValueStore
from service.db.engine import session_scope


async def get_resources(request: Request) -> Resources:
    resources: Resources = request.app.state.resources
    return resources


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_store(request: Request) -> KeyValueStore:
    store: KeyValueStore = request.app.state.resources.store
    return store


async def get_db_session(request: Request) -> AsyncIterator[AsyncSession]:
    """A control-plane session: read-only on autocommit for GET/HEAD, else a transaction."""
    resources: Resources = request.app.state.resources
    async with session_scope(resources.sessions.for_method(request.method)) as session:
        yield session


SettingsDep = Annotated[Settings, Depends(get_settings)]
ResourcesDep = Annotated[Resources, Depends(get_resources)]
StoreDep = Annotated[KeyValueStore, Depends(get_store)]
# scope="function": commit/rollback runs when the route returns, before the response is sent,
# so a failed commit becomes an error response instead of a 200 over lost data.
DbSession = Annotated[AsyncSession, Depends(get_db_session, scope="function")]


_JSON_TYPES = frozenset({"application/json"})


async def require_json_body(request: Request) -> None:
    """415 unless a request that carries a body declares JSON (`application/json`, `+json`)."""
    has_body = request.headers.get("content-length", "0") != "0" or (
        "transfer-encoding" in request.headers
    )
    if not has_body:
        return
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type in _JSON_TYPES or media_type.endswith("+json"):
        return
    raise UnsupportedMediaType("Send the body as application/json")


# Router-level guard for JSON APIs: `APIRouter(dependencies=[RequireJson])`.
RequireJson = Depends(require_json_body)
