from __future__ import annotations

from pydantic import BaseModel


class InfoResponse(BaseModel):
    name: str
    version: str
    commit: str
    environment: str
