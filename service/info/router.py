from __future__ import annotations

from fastapi import APIRouter

from service.core.dependencies import SettingsDep
from service.info.schemas import InfoResponse

router = APIRouter(tags=["info"])


@router.get("/info", response_model=InfoResponse, summary="Service name, version and build")
async def info(settings: SettingsDep) -> InfoResponse:
    return InfoResponse(
        name=settings.service_name,
        version=settings.version,
        commit=settings.commit,
        environment=settings.environment.value,
    )
