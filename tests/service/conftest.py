"""An app with extra routes that raise each kind of error, over the real middleware stack."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Literal

import httpx
import pytest
from fastapi import APIRouter, FastAPI, HTTPException, Request
from pydantic import BaseModel, Field

from service.core.config import Settings
from service.core.dependencies import DbSession, RequireJson
from service.core.errors import ERROR_RESPONSES, NotFound, RateLimited
from service.core.logging import get_logger
from service.main import create_app
from service.users.models import User
from tests.conftest import ClientFactory

MAX_BODY_BYTES = 1024
SECRET_IN_CRASH = "hunter2-internal-detail"


class Item(BaseModel):
    name: str = Field(max_length=20)
    quantity: int = Field(ge=1)


class Created(BaseModel):
    id: str


def probe_router() -> APIRouter:
    router = APIRouter(prefix="/api/v1/test", responses=ERROR_RESPONSES)
    log = get_logger("tests.probe")

    @router.post("/items", response_model=Item, dependencies=[RequireJson])
    async def create_item(item: Item) -> Item:
        return item

    @router.get("/boom", response_model=Item)
    async def boom() -> Item:
        log.info("about_to_fail", password="pw-should-not-appear", token="tok-should-not-appear")
        raise RuntimeError(f"database password is {SECRET_IN_CRASH}")

    @router.get("/limited", response_model=Item)
    async def limited() -> Item:
        raise RateLimited(7)

    @router.post("/stream", response_model=Created)
    async def stream(request: Request) -> Created:
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
        return Created(id=str(size))

    @router.post("/users", response_model=Created)
    async def create_user(
        session: DbSession, email: str, outcome: Literal["ok", "http", "domain", "crash"]
    ) -> Created:
        user = User(email=email, password_hash="x", role="member", tenant_slug="demo")
        session.add(user)
        await session.flush()
        if outcome == "http":
            raise HTTPException(status_code=409, detail="conflict after write")
        if outcome == "domain":
            raise NotFound("gone after write")
        if outcome == "crash":
            raise RuntimeError("crash after write")
        return Created(id=str(user.id))

    return router


@pytest.fixture
def probe_app(make_settings: Callable[..., Settings]) -> Callable[..., FastAPI]:
    """berth's app plus the probe routes; keyword groups override settings."""

    def factory(**groups: object) -> FastAPI:
        groups.setdefault("http", {"max_body_bytes": MAX_BODY_BYTES})
        app = create_app(make_settings(**groups))
        app.include_router(probe_router())
        return app

    return factory


@pytest.fixture
async def probe_client(
    probe_app: Callable[..., FastAPI], migrated_sqlite: str, client_for: ClientFactory
) -> httpx.AsyncClient:
    return await client_for(probe_app())


def unique_email() -> str:
    return f"user-{uuid.uuid4().hex[:10]}@example.com"
