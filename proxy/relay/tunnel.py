"""An `Upgrade` request (a WebSocket handshake) handed on whole, then the connection as a raw tunnel.

The request head goes upstream with its `Upgrade` and `Connection` headers (the handshake needs
them); from then on bytes cross both ways unchanged, each direction under the other socket's
back-pressure. The exchange is recorded with the upstream's status and ends when either side closes.
Frames are not parsed here: recording WebSocket frames is the Responses API's WebSocket mode
(issue #14), which will take the tunnel's bytes the way the tap takes a response's.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

from ..exchange import Outcome
from .heads import request_head

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

    def start(self, forwarder: Forwarder) -> None:
        self._forwarder = forwarder
        self.client.pause_reading("tunnel-connect")
        forwarder.track(asyncio.get_running_loop().create_task(self._connect(forwarder)))

    async def _connect(self, forwarder: Forwarder) -> None:
        request = self.request
        ex, _ = forwarder.begin(request)
        self._ex = ex
        forwarder.started(ex)
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
        for data in self._pending:
            side.transport.write(data)
        self._pending = []
        self.client.resume_reading("tunnel-connect")

    def from_client(self, data: bytes) -> None:
        if self._up is None or self._up.transport is None:
            self._pending.append(data)
        else:
            self._up.transport.write(data)

    def from_upstream(self, data: bytes) -> None:
        if not self._status_seen and self._ex is not None:
            self._status_seen = True
            with contextlib.suppress(ValueError, IndexError):
                self._ex.status = int(data.split(b" ", 2)[1])
        if self._ex is not None:
            self._ex.response_bytes += len(data)
        self.client.write(data)

    def client_paused(self) -> None:
        if self._up is not None and self._up.transport is not None:
            self._up.transport.pause_reading()

    def client_resumed(self) -> None:
        if self._up is not None and self._up.transport is not None:
            self._up.transport.resume_reading()

    def client_lost(self) -> None:
        if self._up is not None and self._up.transport is not None:
            self._up.transport.close()
        self._end(Outcome.CLIENT_GONE if not self._ended else Outcome.COMPLETED)

    def upstream_lost(self, exc: Exception | None) -> None:
        if self.client.transport is not None:
            self.client.transport.close()
        self._end(Outcome.COMPLETED if exc is None else Outcome.TRUNCATED, None if exc is None else repr(exc))

    def _end(self, outcome: Outcome, error: str | None = None) -> None:
        if self._ended or self._ex is None or self._forwarder is None:
            return
        self._ended = True
        self._forwarder.end(self._ex, outcome, error)
