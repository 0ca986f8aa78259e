"""Pooled keep-alive connections to the upstream, each an `asyncio.Protocol` that passes its bytes on.

A connection carries one exchange at a time. It does not parse: it hands each read to the
exchange that holds it (relay/response.py), which writes it to the client first and parses after.
Back-pressure crosses here both ways: a full upstream socket pauses reading the client (a request
body streamed through), and the exchange pauses this connection's reading for a slow client.

A pooled connection the upstream closed while idle is noticed by `connection_lost` and dropped; a
request is sent on a fresh connection when the one taken turns out closed before anything was
written (relay/forward.py retries only then, or for a body-less idempotent request).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Callable
from typing import Protocol

from .heads import Upstream

IDLE_S = 60.0
"""An idle pooled connection is closed after this long (servers drop theirs at 60-120 s)."""
MAX_IDLE = 256
"""Idle connections kept per upstream; more are closed when released."""


class UpstreamSink(Protocol):
    """What an exchange gives the connection it holds."""

    def upstream_data(self, data: bytes) -> None: ...
    def upstream_lost(self, exc: Exception | None) -> None: ...
    def upstream_pause_writing(self) -> None: ...
    def upstream_resume_writing(self) -> None: ...


class UpstreamConnection(asyncio.Protocol):
    __slots__ = ("closed", "idle_timer", "pool", "reused", "sink", "transport")

    def __init__(self, pool: UpstreamPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.sink: UpstreamSink | None = None
        self.closed = False
        self.reused = False
        self.idle_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports subclass none of asyncio's
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):  # a stream write goes out at once, not after 40 ms
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        if self.sink is not None:
            self.sink.upstream_data(data)
        else:  # bytes on an idle connection: no response belongs to them, the connection is spoilt
            self.close()

    def eof_received(self) -> bool:
        return False  # close the transport; connection_lost tells the sink

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.forget(self)
        sink, self.sink = self.sink, None
        if sink is not None:
            sink.upstream_lost(exc)

    def pause_writing(self) -> None:
        if self.sink is not None:
            self.sink.upstream_pause_writing()

    def resume_writing(self) -> None:
        if self.sink is not None:
            self.sink.upstream_resume_writing()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


class UpstreamPool:
    """Keep-alive connections to one upstream, most recently used first."""

    def __init__(self, upstream: Upstream, connect_s: float, *, ssl_context: ssl.SSLContext | None = None) -> None:
        self.upstream = upstream
        self.connect_s = connect_s
        self.ssl_context = (ssl_context or ssl.create_default_context()) if upstream.tls else None
        self._idle: list[UpstreamConnection] = []
        self._closed = False

    @property
    def idle(self) -> int:
        return len(self._idle)

    def take_idle(self) -> UpstreamConnection | None:
        """A pooled connection that is still open, or None."""
        while self._idle:
            conn = self._idle.pop()
            if conn.idle_timer is not None:
                conn.idle_timer.cancel()
                conn.idle_timer = None
            if not conn.closed and conn.transport is not None and not conn.transport.is_closing():
                conn.reused = True
                return conn
        return None

    async def connect(self) -> UpstreamConnection:
        """A new connection; TimeoutError after `connect_s` (TLS handshake included), OSError else."""
        loop = asyncio.get_running_loop()
        up = self.upstream
        factory: Callable[[], UpstreamConnection] = lambda: UpstreamConnection(self)  # noqa: E731
        async with asyncio.timeout(self.connect_s):
            _, conn = await loop.create_connection(factory, up.host, up.port, ssl=self.ssl_context,
                                                   server_hostname=up.host if self.ssl_context else None)
        return conn

    def release(self, conn: UpstreamConnection) -> None:
        """The exchange on `conn` ended with its response whole: keep it for the next one."""
        conn.sink = None
        if self._closed or conn.closed or len(self._idle) >= MAX_IDLE:
            conn.close()
            return
        transport = conn.transport
        assert transport is not None
        transport.resume_reading()  # a close by the upstream while idle must be seen
        conn.idle_timer = asyncio.get_running_loop().call_later(IDLE_S, self._expire, conn)
        self._idle.append(conn)

    def _expire(self, conn: UpstreamConnection) -> None:
        conn.idle_timer = None
        self.forget(conn)
        conn.close()

    def forget(self, conn: UpstreamConnection) -> None:
        if conn.idle_timer is not None:
            conn.idle_timer.cancel()
            conn.idle_timer = None
        with contextlib.suppress(ValueError):
            self._idle.remove(conn)

    def close(self) -> None:
        """Close every idle connection; connections in use close when released."""
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            if conn.idle_timer is not None:
                conn.idle_timer.cancel()
            conn.close()
