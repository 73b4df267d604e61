from __future__ import annotations

from fastapi import APIRouter

from service.core.config import Settings
from service.core.routing import LeanRoute
from service.info.schemas import InfoResponse


def build_router(settings: Settings) -> APIRouter:
    """The info route, answering from values fixed at start-up (no I/O, no dependency)."""
    router = APIRouter(tags=["info"], route_class=LeanRoute)
    response = InfoResponse(
        name=settings.service_name,
        version=settings.version,
        commit=settings.commit,
        environment=settings.environment.value,
    )

    @router.get("/info", response_model=InfoResponse, summary="Service name, version and build")
    async def info() -> InfoResponse:
        return response

    return router
