"""/api/v1/health: liveness (no I/O) and readiness (cached dependency checks)."""

from __future__ import annotations

from http import HTTPStatus
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response

from service.core.routing import LeanRoute
from service.health.schemas import LiveResponse, ReadyResponse
from service.health.service import READINESS, ReadinessProbe

router = APIRouter(prefix="/health", tags=["health"], route_class=LeanRoute)
LIVE_RESPONSE = LiveResponse()


async def get_probe(request: Request) -> ReadinessProbe:
    return READINESS.of(request)


@router.get("/live", response_model=LiveResponse, summary="Liveness (no I/O)")
async def live() -> LiveResponse:
    return LIVE_RESPONSE


@router.get(
    "/ready",
    response_model=ReadyResponse,
    summary="Readiness: dependency checks, cached briefly",
    responses={503: {"model": ReadyResponse, "description": "A required dependency is down"}},
)
async def ready(
    response: Response, probe: Annotated[ReadinessProbe, Depends(get_probe)]
) -> ReadyResponse:
    report = await probe.report()
    if report.status == "down":
        response.status_code = HTTPStatus.SERVICE_UNAVAILABLE
    return report
