from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

# "not_configured": an optional dependency this deployment does without (never a failure).
CheckStatus = Literal["ok", "down", "not_configured"]
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
