"""Reference (a): the floor berth is measured against.

A bare FastAPI app, no middleware, one endpoint that returns a pydantic model through
`response_model`, with the same fields as berth's `InfoResponse`. Whatever berth spends above
this is the cost of its own stack (middleware, metrics, access log, dependencies).

Served by `tests.bench.run` as `uvicorn tests.bench.reference_app:app`.
"""

from __future__ import annotations

from fastapi import FastAPI
from pydantic import BaseModel


class InfoResponse(BaseModel):
    name: str
    version: str
    commit: str
    environment: str


app = FastAPI(title="berth-bench-reference")


@app.get("/info", response_model=InfoResponse)
async def info() -> InfoResponse:
    # Same values as berth's defaults, so both bodies have about the same size.
    return InfoResponse(name="berth", version="0.1.0", commit="unknown", environment="local")
