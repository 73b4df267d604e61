from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

CheckStatus = Literal["ok", "down"]
ReadinessStatus = Literal["ok", "degraded", "down"]


class LiveResponse(BaseModel):
    status: Literal["ok"] = "ok"


class CheckReport(BaseModel):
    name: str
    status: CheckStatus
    required: bool
    latency_ms: float
    error: str | None = None


class ReadyResponse(BaseModel):
    status: ReadinessStatus
    checked_at: str
    checks: list[CheckReport]
