"""The proxy port: one `asyncio.Protocol` per client connection, heads and bodies parsed by llhttp.

`httptools` (llhttp, the parser Node.js and uvicorn use) rather than aiohttp's own parser: aiohttp's
C parser hands each body into its `StreamReader` (a buffer and a waiter per chunk), the very layer
this core removes; llhttp's callbacks give the bytes straight to the relay. llhttp is strict where
a proxy must be: `Content-Length` with `Transfer-Encoding`, two lengths, a signed length, control
characters or a space before the colon are errors, so a smuggled request is refused before
anything is forwarded (tests/faults/test_input.py).

Requests on one connection are answered in order (HTTP/1.1 pipelining): the next one starts when
the response before it has been written whole. While one is waiting, reading the connection is
paused, so a pipelining client cannot make runtap buffer without bound. A request body streamed
through (routes runtap does not record) goes upstream as it arrives, under the upstream socket's
back-pressure.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

import httptools

from .. import errors
from .heads import CONTINUE, LAST_CHUNK, MAX_HEAD_BYTES, MAX_HEADER_BYTES, RawHeaders, answer_bytes, chunk, header
from .tunnel import Tunnel

if TYPE_CHECKING:
    from .forward import Forwarder
    from .response import ResponseRelay

log = logging.getLogger("runtap.relay")
KEEPALIVE_S = 75.0
"""An idle client connection is closed after this long (aiohttp's default, which the relay had)."""
BUFFERED_BODY_BYTES = 1 << 20
"""Body bytes held for a request not forwarded yet before reading the client pauses."""


class ParsedRequest:
    """One request as llhttp saw it: head, then body bytes as they come."""

    __slots__ = ("_sink", "_waiter", "chunked", "chunks", "complete", "conn", "expect_continue", "headers",
                 "keep_alive", "length", "method", "size", "target", "too_large", "version")

    def __init__(self, conn: ClientConnection, method: bytes, target: bytes, version: str, headers: RawHeaders,
                 keep_alive: bool) -> None:
        self.conn = conn
        self.method = method
        self.target = target
        self.version = version
        self.headers = headers
        self.keep_alive = keep_alive
        length = header(headers, b"content-length")
        self.length = int(length) if length is not None else None  # llhttp checked it is digits
        self.chunked = (header(headers, b"transfer-encoding") or b"").lower().endswith(b"chunked")
        self.expect_continue = (header(headers, b"expect") or b"").lower() == b"100-continue"
        self.chunks: list[bytes] = []
        self.size = 0
        self.complete = False
        self.too_large = False
        self._sink: Callable[[bytes], None] | None = None
        self._waiter: asyncio.Future[None] | None = None

    @property
    def has_body(self) -> bool:
        return self.chunked or bool(self.length)

    def add(self, data: bytes) -> None:
        self.size += len(data)
        if self._sink is not None:
            self._sink(chunk(data) if self.chunked else data)
            return
        self.chunks.append(data)
        if self.size > BUFFERED_BODY_BYTES and self._waiter is None:
            self.conn.pause_reading("body")

    def finish(self) -> None:
        self.complete = True
        if self._sink is not None and self.chunked:
            self._sink(LAST_CHUNK)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _ask_for_body(self) -> None:
        if self.expect_continue and not self.complete and self.size == 0:
            self.conn.write(CONTINUE)
            self.expect_continue = False

    async def read(self, limit: int) -> bytes | None:
        """The whole body, or None when it is over `limit` (known from Content-Length, or found
        while reading: the rest is then not read and the connection closes after the answer)."""
        if self.length is not None and self.length > limit:
            self.too_large = True
            return None
        self._ask_for_body()
        self._waiter = asyncio.get_running_loop().create_future()
        self.conn.resume_reading("body")
        while not self.complete:
            if self.size > limit:
                self.too_large = True
                return None
            await self._waiter
        if self.size > limit:
            self.too_large = True
            return None
        body = b"".join(self.chunks)
        self.chunks = []
        return body

    def stream_to(self, write: Callable[[bytes], None]) -> None:
        """From now on the body goes to `write` as it arrives (chunked when the client chunked)."""
        self._ask_for_body()
        pending, self.chunks = self.chunks, []
        for data in pending:
            write(chunk(data) if self.chunked else data)
        self._sink = write
        if self.complete and self.chunked:
            write(LAST_CHUNK)
        self.conn.resume_reading("body")

    def detach(self) -> None:
        self._sink = None

    def discard(self) -> None:
        """The answer went out before the body was read: read the rest and drop it, so that closing
        the connection after does not reset it under the answer (unread bytes make the kernel send RST)."""
        self._sink = _drop
        self.chunks = []


def _drop(_data: bytes) -> None:
    pass


DISCARD_S = 5.0
"""How long a body nobody will read is still read (and dropped) before the connection closes."""


class ClientConnection(asyncio.Protocol):
    """One client's connection: parse, queue, hand each request to the forwarder in order."""

    def __init__(self, forwarder: Forwarder, connections: set[ClientConnection]) -> None:
        self.forwarder = forwarder
        self._connections = connections
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpRequestParser(self)
        self._url = bytearray()
        self._headers: RawHeaders = []
        self._head_size = 0
        self._parsing: ParsedRequest | None = None
        self._queue: deque[ParsedRequest] = deque()
        self.current: ParsedRequest | None = None
        self.relay: ResponseRelay | None = None
        self.open = False
        self.closing = False
        self._paused_for: set[str] = set()
        self.writing_paused = False
        self._idle_timer: asyncio.TimerHandle | None = None
        self._tunnel: Tunnel | None = None
        self._upgrading: ParsedRequest | None = None
        self._discarding: ParsedRequest | None = None
        self._said_close = False
        """A request asked to close after its response: nothing behind it is served (RFC 9112 §9.6)."""

    # -- asyncio.Protocol ---------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports subclass none of asyncio's
        self.open = True
        self._connections.add(self)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._arm_idle()

    def data_received(self, data: bytes) -> None:
        if self._tunnel is not None:
            self._tunnel.from_client(data)
            return
        if self._said_close:
            return  # llhttp refuses data after `Connection: close`; it is dropped, the answer still goes out
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            self._upgrade(data[upgrade.args[0]:])
        except httptools.HttpParserError as e:
            if not self._said_close:
                self._bad_request(str(e))

    def connection_lost(self, exc: Exception | None) -> None:
        self.open = False
        self._connections.discard(self)
        self._disarm_idle()
        if self._tunnel is not None:
            self._tunnel.client_lost()
        if self.relay is not None:
            self.relay.client_left()
        if self._parsing is not None and not self._parsing.complete:
            self._parsing.finish()  # a body cut short: whoever waits on it wakes up

    def pause_writing(self) -> None:
        self.writing_paused = True
        if self.relay is not None:
            self.relay.client_paused()
        if self._tunnel is not None:
            self._tunnel.client_paused()

    def resume_writing(self) -> None:
        self.writing_paused = False
        if self.relay is not None:
            self.relay.client_resumed()
        if self._tunnel is not None:
            self._tunnel.client_resumed()

    # -- llhttp callbacks -----------------------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._url = bytearray()
        self._headers = []
        self._head_size = 0
        self._disarm_idle()

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._grow(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        size = len(name) + len(value) + 4
        if size > MAX_HEADER_BYTES:
            raise httptools.HttpParserError("header line too long")
        self._grow(size)
        if self._parsing is None:
            self._headers.append((name, value))  # else a trailer of a chunked body: dropped

    def _grow(self, n: int) -> None:
        self._head_size += n
        if self._head_size > MAX_HEAD_BYTES:
            raise httptools.HttpParserError("request head too large")

    def on_headers_complete(self) -> None:
        if self._discarding is not None:
            return  # closing after the answer: what was pipelined behind it is not served
        parser = self._parser
        request = ParsedRequest(self, parser.get_method(), bytes(self._url), parser.get_http_version(),
                                self._headers, parser.should_keep_alive())
        if parser.should_upgrade():
            self._upgrading = request  # handed on whole once llhttp stops at the upgrade (_upgrade)
            return
        self._parsing = request
        self._queue.append(request)
        if self.current is None:
            self._next()
        else:
            self.pause_reading("pipeline")

    def on_body(self, body: bytes) -> None:
        if self._parsing is not None:
            self._parsing.add(body)

    def on_message_complete(self) -> None:
        request, self._parsing = self._parsing, None
        if request is not None:
            self._said_close = not request.keep_alive
            request.finish()
            if request is self._discarding and self.transport is not None:
                self.transport.close()

    # -- what the exchange uses -------------------------------------------------------------------------
    @property
    def http10(self) -> bool:
        return self.current is not None and self.current.version == "1.0"

    @property
    def keep_alive_after(self) -> bool:
        """The connection stays open after the current response."""
        current = self.current
        return (self.open and not self.closing and current is not None and current.keep_alive
                and current.version != "1.0" and (current.complete or not current.has_body)
                and not current.too_large)

    def write(self, data: bytes) -> None:
        if self.open and self.transport is not None:
            self.transport.write(data)

    def abort(self) -> None:
        if self.transport is not None:
            self.open = False
            self.transport.abort()

    def pause_reading(self, reason: str) -> None:
        if not self._paused_for and self.transport is not None and self.open:
            self.transport.pause_reading()
        self._paused_for.add(reason)

    def resume_reading(self, reason: str) -> None:
        if reason in self._paused_for:
            self._paused_for.discard(reason)
            if not self._paused_for and self.transport is not None and self.open:
                self.transport.resume_reading()

    def shut(self) -> None:
        """Shutdown: close now when idle, else after the response in progress."""
        self.closing = True
        if self.current is None and self.transport is not None:
            self.transport.close()

    # -- internals ------------------------------------------------------------------------------------
    def _next(self) -> None:
        if not self._queue:
            return
        self.current = request = self._queue.popleft()
        task = self.forwarder.start(self, request)
        task.add_done_callback(self._exchange_done)

    def _exchange_done(self, _task: asyncio.Task[None]) -> None:
        request, self.current = self.current, None
        relay, self.relay = self.relay, None
        keep = (request is not None and request.keep_alive and request.version != "1.0"
                and (relay is None or relay.keep_client) and not (request.too_large or (not request.complete
                                                                  and request.has_body)))
        if not self.open:
            return
        assert self.transport is not None
        if request is not None and request.has_body and not request.complete:
            request.discard()
            self._discarding = request
            self._paused_for.clear()
            self.transport.resume_reading()
            asyncio.get_running_loop().call_later(DISCARD_S, self.transport.close)
            return
        if not keep or self.closing:
            self.transport.close()
            return
        self.resume_reading("pipeline")
        if self._queue:
            self._next()
        else:
            self._arm_idle()

    def _bad_request(self, reason: str) -> None:
        # The reason names llhttp's check, never the header line (it may carry a key).
        log.info("malformed request refused: %s", reason)
        if self.current is None:
            self.write(answer_bytes(errors.openai_error(400, f"malformed HTTP request: {reason}",
                                                        "invalid_request_error", "bad_request"), close=True))
        self.open = False
        if self.transport is not None:
            self.transport.close()

    def _upgrade(self, rest: bytes) -> None:
        request, self._upgrading = self._upgrading, None
        if request is None or self.current is not None:
            self._bad_request("upgrade while a request is in progress")
            return
        self._queue.clear()
        assert self.transport is not None
        self._tunnel = Tunnel(self, request, rest)
        self.current = request
        self._tunnel.start(self.forwarder)

    def _arm_idle(self) -> None:
        self._disarm_idle()
        if self.transport is not None:
            self._idle_timer = asyncio.get_running_loop().call_later(KEEPALIVE_S, self._idle_expired)

    def _disarm_idle(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None

    def _idle_expired(self) -> None:
        self._idle_timer = None
        if self.current is None and self.transport is not None:
            self.transport.close()
