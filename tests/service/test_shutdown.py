"""Graceful shutdown on SIGTERM, against the real server process.

Each test starts `python -m tests.service.slow_app` (berth's app plus a slow route, run with
the CLI's own uvicorn options via `service.cli.run_uvicorn`) on a free local port with a
migrated SQLite file, talks to it over real TCP and sends it a real SIGTERM.
"""

from __future__ import annotations

import asyncio
import signal

import httpx

from tests.conftest import ServeFactory, SpawnFactory
from tests.service.slow_app import DEFAULT_SECONDS, SLOW_PATH
from tests.support import Spawned, connection_refused, free_port, process_env, wait_until_live

SIGTERM_AFTER = 0.3


async def start_server(
    spawn: SpawnFactory, database_url: str, graceful_seconds: float
) -> tuple[Spawned, str, int]:
    port = free_port()
    env = process_env(
        BERTH_ENVIRONMENT="test",
        BERTH_DATABASE__URL=database_url,
        BERTH_HTTP__PORT=str(port),
        BERTH_HTTP__GRACEFUL_SHUTDOWN_SECONDS=str(graceful_seconds),
        BERTH_OBSERVABILITY__LOG_FORMAT="json",
        BERTH_STARTUP_RETRIES="1",
    )
    server = spawn("-m", "tests.service.slow_app", env=env, name="server")
    base_url = f"http://127.0.0.1:{port}"
    await wait_until_live(base_url, server)
    return server, base_url, port


async def wait_until_refused(port: int, timeout: float) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if await connection_refused(port):
            return True
        await asyncio.sleep(0.02)
    return False


def event_names(server: Spawned) -> list[object]:
    return [event.get("event") for event in server.events()]


async def test_sigterm_lets_the_in_flight_request_finish_and_exits_0(
    spawn: SpawnFactory, migrated_sqlite: str
) -> None:
    """Real uvicorn process, real TCP, real SIGTERM: drain, refuse new connections, exit 0."""
    graceful = 10.0
    server, base_url, port = await start_server(spawn, migrated_sqlite, graceful)
    loop = asyncio.get_running_loop()

    async with httpx.AsyncClient(base_url=base_url, timeout=10) as client:
        slow = asyncio.create_task(client.get(SLOW_PATH))
        await asyncio.sleep(SIGTERM_AFTER)
        assert not slow.done(), "the slow request must still be in flight at SIGTERM"
        server.signal(signal.SIGTERM)
        sigterm_at = loop.time()

        refused = await wait_until_refused(port, timeout=DEFAULT_SECONDS - SIGTERM_AFTER - 0.2)
        in_flight_when_refused = not slow.done()
        response = await asyncio.wait_for(slow, timeout=10)

    assert refused, "new connections must be refused once SIGTERM arrived"
    assert in_flight_when_refused, "the listener must close while the request is still running"
    assert response.status_code == 200
    assert response.json() == {"slept": DEFAULT_SECONDS, "done": True}
    assert response.headers["connection"] == "close"  # no keep-alive on a draining server
    code = await server.wait(timeout=graceful + 5)
    assert code == 0, server.describe()
    assert loop.time() - sigterm_at < graceful, "drained long before the graceful timeout"

    events = server.events()
    names = [event.get("event") for event in events]
    assert "shutdown_complete" in names, server.describe()
    slow_logged = next(
        i for i, e in enumerate(events) if e.get("event") == "request" and e["path"] == SLOW_PATH
    )
    assert events[slow_logged]["status"] == 200
    assert slow_logged < names.index("shutdown_complete")
    assert "Traceback" not in server.stderr()


async def test_a_request_longer_than_the_graceful_timeout_does_not_hang_shutdown(
    spawn: SpawnFactory, migrated_sqlite: str
) -> None:
    """Real uvicorn process with a 0.5 s graceful timeout and a 30 s request: exits anyway."""
    graceful = 0.5
    server, base_url, _ = await start_server(spawn, migrated_sqlite, graceful)
    loop = asyncio.get_running_loop()

    async with httpx.AsyncClient(base_url=base_url, timeout=15) as client:
        slow = asyncio.create_task(client.get(SLOW_PATH, params={"seconds": 30}))
        await asyncio.sleep(SIGTERM_AFTER)
        server.signal(signal.SIGTERM)
        sigterm_at = loop.time()
        code = await server.wait(timeout=graceful + 5)
        exited_after = loop.time() - sigterm_at
        outcome = (await asyncio.gather(slow, return_exceptions=True))[0]

    assert code == 0, server.describe()
    assert exited_after < graceful + 3, f"exited {exited_after:.1f} s after SIGTERM"
    # The request was cut off, not answered: the server is gone long before its 30 s.
    assert isinstance(outcome, httpx.TransportError) or outcome.status_code >= 500, outcome
    names = event_names(server)
    assert any(str(name).startswith("Cancel 1 running task") for name in names), names
    assert "shutdown_complete" in names, server.describe()


async def test_serve_exits_0_after_a_sigterm_shutdown(serve: ServeFactory) -> None:
    """Real `python -m service serve` process (cmd_serve itself), idle, real SIGTERM."""
    served = await serve()
    server = served.process

    server.signal(signal.SIGTERM)

    assert await server.wait(timeout=10) == 0, server.describe()
    assert "shutdown_complete" in event_names(server)
    assert await connection_refused(served.port)
