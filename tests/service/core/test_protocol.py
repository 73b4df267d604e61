"""What never reaches the app: unparseable requests and oversized headers, against the real
server (`python -m service serve`) over raw TCP; and `HeldWrites`, on a real loopback
connection.

Malformed requests answer the error envelope (uvicorn alone writes a plain-text 400); header
blocks, lines or counts beyond the limits answer 431 while the bytes are still arriving, and
the event loop stays free for everyone else. What is written in one turn of the event loop
leaves in one write.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx
import pytest
import uvicorn
from starlette.types import Receive, Scope, Send

from service.core.protocol import HELD_WRITE_LIMIT, BerthHttpProtocol, HeldWrites
from tests.conftest import ServeFactory
from tests.support import eventually

LIMITS = {"total": 65_536, "line": 16_384, "count": 100}


@pytest.fixture
async def server(serve: ServeFactory) -> int:
    """The port of a real berth server, default header limits."""
    return (await serve()).port


async def exchange(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send raw bytes, read the whole answer: (status, headers, body)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), timeout=10)
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines)
    return int(status_line.split()[1]), headers, body


def assert_envelope_of(status: int, headers: dict[str, str], body: bytes, expected: int) -> dict:
    assert status == expected
    assert headers["content-type"] == "application/json"
    assert headers["connection"] == "close"
    document = json.loads(body)
    assert (document["success"], document["statusCode"]) == (False, expected)
    assert document["timestamp"].endswith("Z")
    return dict(document)


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"POST /api/v1/info HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
        b"POST /api/v1/info HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"GET /api/v1/info HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n",
        b"GET /api/v1/info HTTP/1.1\r\nHost: x\r\nX-Thing: a\x00b\r\n\r\n",
    ],
    ids=["bad-content-length", "length-and-chunked", "header-without-colon", "nul-in-header"],
)
async def test_a_request_the_parser_refuses_gets_the_error_envelope(
    server: int, request_bytes: bytes
) -> None:
    status, headers, body = await exchange(server, request_bytes)

    document = assert_envelope_of(status, headers, body, 400)
    assert (document["name"], document["message"]) == (
        "BadRequest",
        "Invalid HTTP request received",
    )


@pytest.mark.parametrize(
    "headers",
    [
        [("X-Big", "v" * (LIMITS["line"] + 1))],
        [(f"X-H{n}", "v") for n in range(LIMITS["count"] + 1)],
        [(f"X-H{n}", "v" * 8000) for n in range(LIMITS["total"] // 8000 + 1)],
    ],
    ids=["one-line-too-long", "too-many", "too-large-in-all"],
)
async def test_headers_beyond_a_limit_are_431_in_the_envelope(
    server: int, headers: list[tuple[str, str]]
) -> None:
    lines = "".join(f"{name}: {value}\r\n" for name, value in headers)
    request = f"GET /api/v1/info HTTP/1.1\r\nHost: x\r\n{lines}\r\n".encode()

    status, response_headers, body = await exchange(server, request)

    document = assert_envelope_of(status, response_headers, body, 431)
    assert document["message"] == "Request headers too large"


async def test_headers_within_the_limits_are_served(server: int) -> None:
    cookie = "c" * (LIMITS["line"] - 200)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server}") as client:
        response = await client.get(
            "/api/v1/info", headers={"Cookie": cookie, **{f"X-H{n}": "v" for n in range(80)}}
        )

    assert response.status_code == 200


async def test_a_body_that_arrives_with_the_headers_is_not_counted_as_headers(
    server: int,
) -> None:
    """One write: small headers and a 300 KiB body. Only the head counts against the header
    limits (schemathesis found this: a big body in the first read was taken for headers)."""
    body = b'{"title": "' + b"t" * 300_000 + b'"}'
    request = (
        b"POST /api/v1/articles HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )

    status, _, _ = await exchange(server, request)

    assert status == 401  # through to the app: it wants a token


async def test_liveness_stays_fast_while_a_client_streams_a_huge_header(server: int) -> None:
    """64 MiB of one header value, sent as fast as the socket takes it: the server answers
    431 after the first 64 KiB and closes, and liveness, probed all along, stays fast."""
    url = f"http://127.0.0.1:{server}/api/v1/health/live"

    async def attack() -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", server)
        answer = bytearray()

        async def read_all() -> None:
            with contextlib.suppress(ConnectionError):
                while chunk := await reader.read(65_536):
                    answer.extend(chunk)

        reading = asyncio.create_task(read_all())
        writer.write(b"GET /api/v1/info HTTP/1.1\r\nHost: x\r\nX-Huge: ")
        with contextlib.suppress(ConnectionError):  # cut off by the server, as it should be
            for _ in range(1024):  # 64 MiB
                writer.write(b"v" * 65_536)
                await writer.drain()
        await asyncio.wait_for(reading, timeout=10)
        writer.close()
        return bytes(answer)

    async def probe(client: httpx.AsyncClient, seconds: float) -> list[float]:
        latencies = []
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            started = time.monotonic()
            assert (await client.get(url)).status_code == 200
            latencies.append(time.monotonic() - started)
            await asyncio.sleep(0.01)
        return latencies

    async with httpx.AsyncClient(timeout=5) as client:
        answer, latencies = await asyncio.gather(attack(), probe(client, 1.5))

    assert answer.startswith(b"HTTP/1.1 431 ")
    assert latencies
    # Not a benchmark: a stalled loop (seconds, as before the limits) is what this catches.
    assert max(latencies) < 0.5, latencies


@dataclass
class HeldConnection:
    """A loopback connection whose server side writes through `HeldWrites`; `sent` records
    each write that reached the real transport (a spy on it, the bytes still go out)."""

    held: HeldWrites
    reader: asyncio.StreamReader
    sent: list[bytes] = field(default_factory=list)

    async def read_exactly(self, count: int) -> bytes:
        return await asyncio.wait_for(self.reader.readexactly(count), timeout=5)


@pytest.fixture
async def connection() -> AsyncIterator[HeldConnection]:
    loop = asyncio.get_running_loop()
    accepted: asyncio.Future[asyncio.Transport] = loop.create_future()

    class Accept(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            accepted.set_result(transport)  # type: ignore[arg-type]

    server = await loop.create_server(Accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    transport = await accepted
    sent: list[bytes] = []
    write = transport.write

    def record(data: bytes) -> None:
        sent.append(bytes(data))
        write(data)

    transport.write = record  # type: ignore[method-assign]
    yield HeldConnection(HeldWrites(transport, loop), reader, sent)
    writer.close()
    transport.close()
    server.close()
    await server.wait_closed()


async def test_writes_in_one_turn_of_the_loop_leave_as_one_write(
    connection: HeldConnection,
) -> None:
    connection.held.write(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\n")
    connection.held.write(b"body")

    received = await connection.read_exactly(42)

    assert received == b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nbody"
    assert connection.sent == [received]


async def test_a_write_is_not_held_past_its_turn(connection: HeldConnection) -> None:
    connection.held.write(b"first")
    assert await connection.read_exactly(5) == b"first"  # nothing else was written meanwhile

    connection.held.write(b"second")

    assert await connection.read_exactly(6) == b"second"
    assert connection.sent == [b"first", b"second"]


async def test_a_large_stream_is_not_held_until_the_end_of_the_turn(
    connection: HeldConnection,
) -> None:
    """Beyond the limit the write goes out at once: the transport's flow control must see it."""
    chunk = b"x" * (HELD_WRITE_LIMIT // 2)
    for _ in range(3):
        connection.held.write(chunk)

    assert connection.sent == [chunk * 2]  # before this turn ended
    assert await connection.read_exactly(len(chunk) * 3) == chunk * 3


async def test_closing_sends_what_is_held_first(connection: HeldConnection) -> None:
    connection.held.write(b"last words")
    connection.held.close()

    assert await asyncio.wait_for(connection.reader.read(), timeout=5) == b"last words"


async def test_half_closing_sends_what_is_held_first(connection: HeldConnection) -> None:
    connection.held.write(b"answer")
    connection.held.write_eof()

    assert await asyncio.wait_for(connection.reader.read(), timeout=5) == b"answer"
    assert connection.sent == [b"answer"]


async def test_aborting_drops_what_is_held(connection: HeldConnection) -> None:
    connection.held.write(b"never sent")
    connection.held.abort()
    await asyncio.sleep(0.05)

    assert connection.sent == []


async def test_berths_protocol_writes_through_held_writes() -> None:
    """uvicorn with berth's protocol, in this process, so its connections can be looked at."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(b"content-length", b"2")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"ok"})

    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, http=BerthHttpProtocol, lifespan="off", log_config=None
    )
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve(sockets=[_listening_socket()]))
    try:
        await eventually(lambda: server.started)
        port = server.servers[0].sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\nok"), timeout=5)
        protocols = list(server.server_state.connections)  # this one is still open
        writer.close()
    finally:
        server.should_exit = True
        await asyncio.wait_for(serving, timeout=10)

    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
    assert len(protocols) == 1
    assert isinstance(protocols[0].transport, HeldWrites)


def _listening_socket() -> socket.socket:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    return listener
