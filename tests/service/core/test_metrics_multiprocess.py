"""With several workers, /metrics aggregates every worker (prometheus multiprocess mode).

Runs the real `python -m service serve --workers 2` on a free local port.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from service.core.metrics import BUILD_INFO, HTTP_REQUEST_DURATION
from tests.support import free_port, service_env

REQUESTS = 60


def info_count(text: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if (
                sample.name == f"{HTTP_REQUEST_DURATION}_count"
                and sample.labels["handler"] == "/api/v1/info"
            ):
                return sample.value
    return 0.0


async def wait_live(client: httpx.AsyncClient, timeout: float = 30) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        try:
            if (await client.get("/api/v1/health/live")).status_code == 200:
                return
        except httpx.TransportError:
            pass
        await asyncio.sleep(0.2)
    raise TimeoutError("server did not come up")


async def test_two_workers_report_one_aggregated_count(tmp_path: Path) -> None:
    port = free_port()
    env = service_env(
        BERTH_DATABASE__URL=f"sqlite+aiosqlite:///{tmp_path / 'mp.db'}",
        BERTH_HTTP__PORT=str(port),
        BERTH_OBSERVABILITY__LOG_LEVEL="WARNING",
        PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "prom"),
    )
    subprocess.run([sys.executable, "-m", "service", "migrate"], env=env, check=True,
                   capture_output=True, timeout=60)  # fmt: skip
    server = subprocess.Popen(
        [sys.executable, "-m", "service", "serve", "--workers", "2"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    try:
        limits = httpx.Limits(max_keepalive_connections=0)  # new connection each: both workers
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", limits=limits, timeout=10
        ) as client:
            await wait_live(client)
            for _ in range(REQUESTS):
                assert (await client.get("/api/v1/info")).status_code == 200
            scrapes = [(await client.get("/metrics")).text for _ in range(4)]
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)

    assert {info_count(text) for text in scrapes} == {REQUESTS}
    assert sum(1 for f in (tmp_path / "prom").glob("*.db")) >= 2  # files from both workers
    assert BUILD_INFO in scrapes[0]
