"""An `Upgrade` request (a WebSocket handshake) handed on whole, then the connection as a raw tunnel.

The request head goes upstream with its `Upgrade` and `Connection` headers (the handshake needs
them); from then on bytes cross both ways unchanged, each direction under the other socket's
back-pressure. The exchange is recorded with the upstream's status and ends when either side closes.
Frames are not parsed here: for a route its API marks `socket` (the Responses WebSocket mode),
runtap's copy of the bytes goes to a `SocketTap` (socket_tap.py), which records its messages; the
client's bytes reach the upstream whole frame by whole frame, after it read them (budgets may
refuse a create), the upstream's reach the client before it reads them.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

from ..exchange import Outcome
from .heads import request_head
from .socket_tap import SocketTap

if TYPE_CHECKING:
    from ..exchange import Exchange
    from .client import ClientConnection, ParsedRequest
    from .forward import Forwarder


class _UpstreamSide(asyncio.Protocol):
    def __init__(self, tunnel: Tunnel) -> None:
        self.tunnel = tunnel
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports subclass none of asyncio's

    def data_received(self, data: bytes) -> None:
        self.tunnel.from_upstream(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.tunnel.upstream_lost(exc)

    def pause_writing(self) -> None:
        self.tunnel.client.pause_reading("tunnel")

    def resume_writing(self) -> None:
        self.tunnel.client.resume_reading("tunnel")


class Tunnel:
    def __init__(self, client: ClientConnection, request: ParsedRequest, rest: bytes) -> None:
        self.client = client
        self.request = request
        self._pending = [rest] if rest else []
        self._up: _UpstreamSide | None = None
        self._ex: Exchange | None = None
        self._status_seen = False
        self._forwarder: Forwarder | None = None
        self._ended = False
        self._socket: SocketTap | None = None

    def start(self, forwarder: Forwarder) -> None:
        self._forwarder = forwarder
        self.client.pause_reading("tunnel-connect")
        forwarder.track(asyncio.get_running_loop().create_task(self._connect(forwarder)))

    async def _connect(self, forwarder: Forwarder) -> None:
        request = self.request
        ex, headers = forwarder.begin(request)
        self._ex = ex
        forwarder.started(ex)
        if ex.route.socket and ex.route.api is not None and headers.get("Upgrade", "").lower() == "websocket":
            self._socket = SocketTap(ex, headers, forwarder, forwarder.max_message)
        pool = forwarder.pool
        up = pool.upstream
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(pool.connect_s):
                _, side = await loop.create_connection(lambda: _UpstreamSide(self), up.host, up.port,
                                                       ssl=pool.ssl_context,
                                                       server_hostname=up.host if pool.ssl_context else None)
        except (OSError, TimeoutError) as e:
            forwarder.answer_error(self.client, ex, e, connect=True)
            self._ended = True
            if self.client.transport is not None:
                self.client.transport.close()  # after the answer: never a tunnel on this connection
            return
        self._up = side
        assert side.transport is not None
        side.transport.write(request_head(request.method, request.target, request.headers, up, None, upgrade=True))
        pending, self._pending = self._pending, []
        for data in pending:
            self.from_client(data)
        self.client.resume_reading("tunnel-connect")

    def from_client(self, data: bytes) -> None:
        if self._up is None or self._up.transport is None:
            self._pending.append(data)
            return
        socket = self._socket
        if socket is not None:
            data = socket.from_client(data)
        if data:
            self._up.transport.write(data)  # before runtap's own frames, which may close the socket
        if socket is not None:
            self._write_own(socket)

    def from_upstream(self, data: bytes) -> None:
        if not self._status_seen and self._ex is not None:
            self._status_seen = True
            with contextlib.suppress(ValueError, IndexError):
                self._ex.status = int(data.split(b" ", 2)[1])
        if self._ex is not None:
            self._ex.response_bytes += len(data)
        self.client.write(data)
        socket = self._socket
        if socket is not None:
            own = socket.from_upstream(data)
            if own:
                self.client.write(own)
                self._closing(socket)
            early = socket.take_early()  # what the client sent before this answer to its handshake
            if early and self._up is not None and self._up.transport is not None:
                self._up.transport.write(early)
            self._write_own(socket)

    def _write_own(self, socket: SocketTap) -> None:
        """runtap's own frames (a budget refusal) to the client, if no upstream frame is half-way."""
        own = socket.take_injected()
        if own:
            self.client.write(own)
            self._closing(socket)

    def _closing(self, socket: SocketTap) -> None:
        if socket.closing and not socket.injecting:
            # The refused message cannot be left out of a compressed stream: the socket ends here.
            if self._up is not None and self._up.transport is not None:
                self._up.transport.close()
            if self.client.transport is not None:
                self.client.transport.close()

    def client_paused(self) -> None:
        if self._up is not None and self._up.transport is not None:
            self._up.transport.pause_reading()

    def client_resumed(self) -> None:
        if self._up is not None and self._up.transport is not None:
            self._up.transport.resume_reading()

    def client_lost(self) -> None:
        if self._up is not None and self._up.transport is not None:
            self._up.transport.close()
        clean = self._ended or (self._socket is not None and self._socket.closed_by is not None)
        self._end(Outcome.COMPLETED if clean else Outcome.CLIENT_GONE)

    def upstream_lost(self, exc: Exception | None) -> None:
        if self.client.transport is not None:
            self.client.transport.close()
        if exc is None and self._socket is not None and not self._socket.off and self._socket.closed_by is None:
            # A WebSocket ends with a close frame; a connection closed without one broke off.
            self._end(Outcome.TRUNCATED, "the upstream closed the socket without a close frame")
            return
        self._end(Outcome.COMPLETED if exc is None else Outcome.TRUNCATED, None if exc is None else repr(exc))

    def _end(self, outcome: Outcome, error: str | None = None) -> None:
        if self._ended or self._ex is None or self._forwarder is None:
            return
        self._ended = True
        if self._socket is not None:
            self._socket.ended(outcome, error)
        self._forwarder.end(self._ex, outcome, error)
