"""The event loop `serve` runs: uvloop, accepting every waiting connection in one turn.

libuv, under uvloop, accepts one connection per turn of the event loop (libuv 1.45: "don't
accept() connections in a loop"). One turn of a saturated server lasts tens of milliseconds,
since it runs every request that became ready, so N clients connecting at once wait up to N
turns before their first request is even read: at 256 new connections, seconds
(docs/benchmarks.md, h). asyncio's own loop accepts up to the listen backlog per turn; this
loop does the same on uvloop, and keeps uvloop for everything else. TLS servers are left to
uvloop as they are.

`python -m service serve` names `BerthLoop` as uvicorn's loop (a custom loop there is the
factory itself, called with no arguments).
"""

from __future__ import annotations

import asyncio
import errno
import socket
from collections.abc import Callable, Iterable
from typing import Any

import uvloop

from service.core.logging import get_logger

log = get_logger(__name__)
# Out of file descriptors (or buffers): the connection stays in the kernel's queue and
# accepting pauses this long, as asyncio does, instead of spinning on a readable socket.
ACCEPT_PAUSE_SECONDS = 1.0
_RESOURCE_ERRORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})

ProtocolFactory = Callable[[], asyncio.BaseProtocol]


class BatchAcceptServer(asyncio.AbstractServer):
    """Listening sockets whose waiting connections are all accepted when they are readable
    (at most `backlog` at a time), each handed to uvloop as an accepted socket."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sockets: Iterable[socket.socket],
        protocol_factory: ProtocolFactory,
        backlog: int,
    ) -> None:
        self._loop = loop
        self._sockets = list(sockets)
        self._protocol_factory = protocol_factory
        self._backlog = backlog
        self._connecting: set[asyncio.Task[None]] = set()
        self._closed = loop.create_future()
        for sock in self._sockets:
            sock.setblocking(False)
            sock.listen(backlog)
            self._listen(sock)

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        return tuple(self._sockets)

    def _listen(self, sock: socket.socket) -> None:
        if not self._closed.done():
            self._loop.add_reader(sock.fileno(), self._accept, sock)

    def _accept(self, sock: socket.socket) -> None:
        for _ in range(self._backlog):
            try:
                connection, _ = sock.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as error:
                self._pause(sock, error)
                return
            connection.setblocking(False)
            if connection.family in (socket.AF_INET, socket.AF_INET6):
                connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            task = self._loop.create_task(self._connect(connection))
            self._connecting.add(task)
            task.add_done_callback(self._connecting.discard)

    def _pause(self, sock: socket.socket, error: OSError) -> None:
        if error.errno not in _RESOURCE_ERRORS:
            raise error
        log.error("accept_paused", error=str(error), seconds=ACCEPT_PAUSE_SECONDS)
        self._loop.remove_reader(sock.fileno())
        self._loop.call_later(ACCEPT_PAUSE_SECONDS, self._listen, sock)

    async def _connect(self, connection: socket.socket) -> None:
        try:
            await self._loop.connect_accepted_socket(self._protocol_factory, connection)
        except OSError:  # the client went away before the transport was made
            connection.close()

    def close(self) -> None:
        if self._closed.done():
            return
        for sock in self._sockets:
            self._loop.remove_reader(sock.fileno())
            sock.close()
        self._closed.set_result(None)

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def is_serving(self) -> bool:
        return not self._closed.done()

    async def start_serving(self) -> None:
        """Serving starts when the server is made (`create_server` has start_serving=True)."""

    async def serve_forever(self) -> None:
        await asyncio.shield(self._closed)

    async def wait_closed(self) -> None:
        """Connections belong to their protocols (uvicorn waits for those itself)."""
        await asyncio.shield(self._closed)


def _bind(host: str | None, port: int | None, backlog: int) -> list[socket.socket]:
    """Listening sockets for every address `host` resolves to, as asyncio binds them."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


class BerthLoop(uvloop.Loop):
    """uvloop, with plain TCP servers that accept in batches (`BatchAcceptServer`)."""

    async def create_server(  # type: ignore[override]
        self,
        protocol_factory: ProtocolFactory,
        host: str | None = None,
        port: int | None = None,
        *,
        sock: socket.socket | None = None,
        backlog: int = 100,
        ssl: Any = None,
        **options: Any,
    ) -> asyncio.AbstractServer:
        if ssl is not None or options or (sock is not None and sock.family == socket.AF_UNIX):
            uvloop_loop: Any = super()  # its stubs overload host/port against sock
            server: asyncio.AbstractServer = await uvloop_loop.create_server(
                protocol_factory, host, port, sock=sock, backlog=backlog, ssl=ssl, **options
            )
            return server
        sockets = [sock] if sock is not None else _bind(host, port, backlog)
        return BatchAcceptServer(self, sockets, protocol_factory, backlog)
