"""berth's event loop: uvloop, with every waiting connection accepted in one turn.

Each test runs its own loop (a `BerthLoop`, or plain uvloop for comparison) on real loopback
sockets; the clients connect with blocking sockets before the server's loop takes its next
turn, so they all wait in the kernel's accept queue together.
"""

from __future__ import annotations

import asyncio
import socket
import sys
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
import uvicorn
import uvloop

from service.cli import uvicorn_options
from service.core.config import Settings
from service.core.eventloop import BatchAcceptServer, BerthLoop

WAITING_CLIENTS = 20


class TurnCounter:
    """Counts the turns of the loop it runs on (a callback that reschedules itself)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.turn = 0
        self._loop = loop
        self._handle = loop.call_soon(self._tick)

    def _tick(self) -> None:
        self.turn += 1
        self._handle = self._loop.call_soon(self._tick)

    def stop(self) -> None:
        self._handle.cancel()


class Recorder(asyncio.Protocol):
    """Records the turn in which each connection was made, and its transport."""

    made: list[tuple[int, asyncio.Transport]]
    counter: TurnCounter
    all_made: asyncio.Event

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.made.append((self.counter.turn, transport))  # type: ignore[arg-type]
        if len(self.made) == WAITING_CLIENTS:
            self.all_made.set()


def run_on(
    loop_factory: Callable[[], asyncio.AbstractEventLoop],
    scenario: Callable[[asyncio.AbstractEventLoop], Coroutine[Any, Any, Any]],
) -> Any:
    loop = loop_factory()
    try:
        return loop.run_until_complete(asyncio.wait_for(scenario(loop), timeout=10))
    finally:
        loop.close()


def turns_to_accept_waiting_clients(loop_factory: Callable[[], asyncio.AbstractEventLoop]) -> int:
    """How many turns of the loop it took to make a connection for each waiting client."""

    async def scenario(loop: asyncio.AbstractEventLoop) -> int:
        made: list[tuple[int, asyncio.Transport]] = []
        counter = TurnCounter(loop)
        all_made = asyncio.Event()
        attributes = {"made": made, "counter": counter, "all_made": all_made}
        protocol = type("Recording", (Recorder,), attributes)
        server = await loop.create_server(protocol, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(WAITING_CLIENTS)]
        start = counter.turn
        await all_made.wait()
        turns = max(turn for turn, _ in made) - start
        counter.stop()
        for client in clients:
            client.close()
        server.close()
        await server.wait_closed()
        return turns

    result: int = run_on(loop_factory, scenario)
    return result


def test_every_waiting_connection_is_accepted_within_a_few_turns() -> None:
    assert turns_to_accept_waiting_clients(BerthLoop) <= 3


def test_plain_uvloop_takes_a_turn_per_waiting_connection() -> None:
    """Why BerthLoop exists. When this fails, libuv accepts in batches again and
    `service/core/eventloop.py` can go."""
    assert turns_to_accept_waiting_clients(uvloop.new_event_loop) >= WAITING_CLIENTS - 1


def test_an_accepted_connection_serves_both_ways_without_nagle() -> None:
    class Echo(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport: asyncio.Transport = transport  # type: ignore[assignment]
            sock = transport.get_extra_info("socket")
            nodelay = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            self.transport.write(b"nodelay=%d;" % nodelay)

        def data_received(self, data: bytes) -> None:
            self.transport.write(data)

    async def scenario(loop: asyncio.AbstractEventLoop) -> bytes:
        server = await loop.create_server(Echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"ping")
        answer = await reader.readexactly(len(b"nodelay=1;ping"))
        writer.close()
        server.close()
        return answer

    assert run_on(BerthLoop, scenario) == b"nodelay=1;ping"


def test_a_closed_server_accepts_no_more() -> None:
    async def scenario(loop: asyncio.AbstractEventLoop) -> bool:
        server = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        server.close()
        await server.wait_closed()
        try:
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
        except ConnectionRefusedError:
            return server.is_serving()
        raise AssertionError("a closed server still accepted a connection")

    assert run_on(BerthLoop, scenario) is False


def test_a_given_listening_socket_is_served_as_is() -> None:
    """`serve` with several workers hands each one the parent's bound socket."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))

    async def scenario(loop: asyncio.AbstractEventLoop) -> bool:
        server = await loop.create_server(asyncio.Protocol, sock=listener, backlog=16)
        try:
            socket.create_connection(listener.getsockname(), timeout=2).close()
            return isinstance(server, BatchAcceptServer) and server.sockets == (listener,)
        finally:
            server.close()

    assert run_on(BerthLoop, scenario) is True


def test_a_port_already_taken_is_an_error_at_start() -> None:
    taken = socket.create_server(("127.0.0.1", 0))
    port = taken.getsockname()[1]

    async def scenario(loop: asyncio.AbstractEventLoop) -> None:
        await loop.create_server(asyncio.Protocol, "127.0.0.1", port)

    with pytest.raises(OSError):
        run_on(BerthLoop, scenario)
    taken.close()


def test_serve_runs_berths_loop() -> None:
    options = uvicorn_options(Settings())
    config = uvicorn.Config(app=None, loop=options["loop"])

    assert config.get_loop_factory() is BerthLoop


OUT_OF_DESCRIPTORS_SERVER = """
import asyncio, os, resource, sys
from service.core.eventloop import BerthLoop

class Answer(asyncio.Protocol):
    def connection_made(self, transport):
        transport.write(b"ok")
        transport.close()

async def main():
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Answer, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    hoarded = []
    try:
        while True:
            hoarded.append(os.open(os.devnull, os.O_RDONLY))
    except OSError:
        print("full", flush=True)
    await asyncio.sleep(0.5)  # the client connects meanwhile; accepting it fails: EMFILE
    for fd in hoarded:
        os.close(fd)
    await asyncio.sleep(2)  # accepting resumes ACCEPT_PAUSE_SECONDS (1 s) after the failure

soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))
loop = BerthLoop()
loop.run_until_complete(main())
"""


async def test_out_of_file_descriptors_pauses_accepting_then_serves_the_waiting_client() -> None:
    """A real EMFILE (a server process that used up its descriptors): the connection waits in
    the kernel's queue, accepting pauses instead of spinning, and resumes once fds are free."""
    server = await asyncio.create_subprocess_exec(
        sys.executable, "-c", OUT_OF_DESCRIPTORS_SERVER,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    assert server.stdout is not None
    port = int(await asyncio.wait_for(server.stdout.readline(), timeout=10))
    assert (await asyncio.wait_for(server.stdout.readline(), timeout=10)).strip() == b"full"

    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    answer = await asyncio.wait_for(reader.read(), timeout=5)
    writer.close()
    output = await asyncio.wait_for(server.stdout.read(), timeout=10)
    await server.wait()

    assert answer == b"ok"
    assert b"accept_paused" in output
