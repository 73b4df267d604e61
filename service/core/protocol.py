"""uvicorn's httptools protocol with berth's own answers for what never reaches the app.

Two things happen before a request is an ASGI request, so no middleware can see them:
- a request httptools cannot parse (a bad Content-Length, Content-Length with
  Transfer-Encoding, a header line without a colon, NUL in a header) gets uvicorn's plain-text
  "400 Invalid HTTP request received."; here it gets the error envelope;
- headers are not bounded by httptools at all (one 64 MiB header was parsed for seconds while
  the event loop stalled); here a request whose header block, one header line or header count
  goes beyond `HttpSettings.max_header_*` is answered 431 as soon as that is known, from the
  bytes as they arrive, before the rest is buffered.

It also sends each response in one write: uvicorn writes the head and the body separately,
two `send` system calls per response where one will do (`HeldWrites`).

`python -m service serve` runs uvicorn with this class (`http=BerthHttpProtocol`); the limits
are set from the settings by `create_app`, which uvicorn calls before it accepts a connection.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, ClassVar, cast

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from service.core.config import HttpSettings
from service.core.errors import envelope_bytes
from service.core.http import JSON_MEDIA_TYPE
from service.core.logging import get_logger

log = get_logger(__name__)
INVALID_REQUEST = "Invalid HTTP request received"
HEADERS_TOO_LARGE = "Request headers too large"
# After a refusal the connection is half-closed and what the client still sends is read and
# dropped for this long, so that its kernel does not reset the connection (and discard our
# answer) before the client has read it; then the connection is closed.
LINGER_SECONDS = 1.0
_HEAD_END = b"\r\n\r\n"
# Beyond this many held bytes a write goes out at once, so that the transport's flow control
# (pause_writing when its buffer is full) still sees a large or fast stream while it is made.
HELD_WRITE_LIMIT = 65_536


@dataclass(frozen=True)
class HeaderLimits:
    total_bytes: int
    line_bytes: int
    count: int

    @classmethod
    def of(cls, settings: HttpSettings) -> HeaderLimits:
        return cls(settings.max_header_bytes, settings.max_header_line_bytes, settings.max_headers)


class HeldWrites(asyncio.Transport):
    """A transport that holds what is written during one turn of the event loop and sends it
    as one write at the end of the turn (or before the connection is closed or half-closed).

    uvicorn writes a response's head when the app starts it and its body when the app sends
    it, almost always in the same turn: two system calls, and two segments on the wire, for
    what fits in one. Held bytes are never reordered and never wait for the next turn, so a
    streamed response still goes out chunk by chunk.
    """

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._transport = transport
        self._loop = loop
        self._held: list[bytes] = []
        self._held_bytes = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self._held:
            self._loop.call_soon(self.flush)
        self._held.append(bytes(data))
        self._held_bytes += len(data)
        if self._held_bytes >= HELD_WRITE_LIMIT:
            self.flush()

    def writelines(self, list_of_data: Any) -> None:
        for data in list_of_data:
            self.write(data)

    def flush(self) -> None:
        """Send what is held now."""
        if not self._held:
            return
        data = self._held[0] if len(self._held) == 1 else b"".join(self._held)
        self._held.clear()
        self._held_bytes = 0
        if not self._transport.is_closing():
            self._transport.write(data)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def abort(self) -> None:
        self._held.clear()
        self._held_bytes = 0
        self._transport.abort()

    def can_write_eof(self) -> bool:
        return self._transport.can_write_eof()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)

    def is_reading(self) -> bool:
        return self._transport.is_reading()

    def pause_reading(self) -> None:
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._transport.resume_reading()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._transport.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._transport.get_protocol()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size()

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._transport.get_write_buffer_limits()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._transport.set_write_buffer_limits(high, low)


def configure_protocol(settings: HttpSettings) -> None:
    """Set the header limits every connection of this process is held to."""
    BerthHttpProtocol.limits = HeaderLimits.of(settings)


class BerthHttpProtocol(HttpToolsProtocol):
    limits: ClassVar[HeaderLimits] = HeaderLimits.of(HttpSettings())
    # Per connection: bytes of the current request's head (request line and headers) seen so
    # far, None once it ended (the body is the body-size limit's business), and the last
    # bytes seen, since the blank line that ends a head may straddle two reads.
    _head_bytes: int | None = 0
    _tail = b""
    _header_count = 0
    _over_limit = False  # a header callback found the request over a limit
    _refused = False  # answered and closing: nothing more is read

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        super().connection_made(HeldWrites(cast(asyncio.Transport, transport), self.loop))

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if self._head_bytes is not None:
            self._count_head(data)
        if not self._over_limit:
            super().data_received(data)
        if self._over_limit:
            self._refuse(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, HEADERS_TOO_LARGE)

    def _count_head(self, data: bytes) -> None:
        assert self._head_bytes is not None
        seen = self._tail + data
        end = seen.find(_HEAD_END)
        head = len(data) if end < 0 else end + len(_HEAD_END) - len(self._tail)
        self._head_bytes += head
        self._tail = seen[-(len(_HEAD_END) - 1) :]
        self._over_limit = self._head_bytes > self.limits.total_bytes

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        line = len(name) + len(value)
        if self._header_count > self.limits.count or line > self.limits.line_bytes:
            self._over_limit = True
            return
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._head_bytes, self._tail = None, b""
        if not self._over_limit:
            super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if not self._over_limit:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if self._over_limit:
            return
        super().on_message_complete()
        self._head_bytes, self._header_count = 0, 0  # the next request on this connection

    def send_400_response(self, msg: str) -> None:
        self._refuse(HTTPStatus.BAD_REQUEST, INVALID_REQUEST)

    def _refuse(self, status: HTTPStatus, message: str) -> None:
        """Answer in the error envelope and close; the rest of the request is dropped."""
        if self._refused or self.transport.is_closing():
            return
        self._refused = True
        log.warning("request_refused", status=status.value, reason=message,
                    client=self.client[0] if self.client else None)  # fmt: skip
        body = envelope_bytes(status, message, path="", request_id=None)
        head = (
            f"HTTP/1.1 {status.value} {status.phrase}\r\n"
            f"content-type: {JSON_MEDIA_TYPE}\r\n"
            f"content-length: {len(body)}\r\n"
            "connection: close\r\n\r\n"
        )
        self.transport.write(head.encode("latin-1") + body)
        if not self.transport.can_write_eof():
            self.transport.close()
            return
        self.transport.write_eof()
        self.loop.call_later(LINGER_SECONDS, self.transport.close)
