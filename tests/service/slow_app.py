"""berth's app plus one slow route, served exactly the way `python -m service serve` serves.

`python -m tests.service.slow_app` (settings from BERTH_* variables): the same settings
check, `create_app` and `service.cli.run_uvicorn(..., uvicorn_options(settings))` as the CLI,
so the shutdown tests exercise production's server configuration, not a copy of it.
"""

from __future__ import annotations

import asyncio
import sys

from fastapi import FastAPI

from service.cli import run_uvicorn, uvicorn_options
from service.core.config import Settings, load_settings
from service.main import API_PREFIX, create_app

SLOW_PATH = f"{API_PREFIX}/test/slow"
DEFAULT_SECONDS = 1.5


def build_app(settings: Settings) -> FastAPI:
    app = create_app(settings)

    @app.get(SLOW_PATH)
    async def slow(seconds: float = DEFAULT_SECONDS) -> dict[str, object]:
        await asyncio.sleep(seconds)
        return {"slept": seconds, "done": True}

    return app


def main() -> int:
    settings = load_settings()
    run_uvicorn(build_app(settings), uvicorn_options(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
