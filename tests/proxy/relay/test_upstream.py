"""relay/upstream.py: the pool of keep-alive upstream connections, against a raw asyncio server.

Pinned: a released connection is the next one taken (marked reused); one the upstream closed
while idle, or that received bytes while idle, is dropped and never handed out; the pool keeps at
most MAX_IDLE and closes those idle for IDLE_S; `close` closes the idle ones and any released
after; a connection hands its reads, its loss and the socket's back-pressure to the sink it holds;
`connect` fails with TimeoutError after `connect_s` (the TLS handshake included), OSError else.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from proxy.relay import upstream as upstream_module
from proxy.relay.heads import Upstream
from proxy.relay.upstream import UpstreamPool
from tests.proxy.relay.conftest import until


@dataclass
class Peer:
    """The upstream's end of the connections the pool opens."""

    writers: list[asyncio.StreamWriter] = field(default_factory=list)
    received: list[bytes] = field(default_factory=list)
    eofs: int = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        while data := await reader.read(65536):
            self.received.append(data)
        self.eofs += 1
        writer.close()


@dataclass
class Sink:
    data: list[bytes] = field(default_factory=list)
    lost: list[Exception | None] = field(default_factory=list)
    pauses: int = 0
    resumes: int = 0

    def upstream_data(self, data: bytes) -> None:
        self.data.append(data)

    def upstream_lost(self, exc: Exception | None) -> None:
        self.lost.append(exc)

    def upstream_pause_writing(self) -> None:
        self.pauses += 1

    def upstream_resume_writing(self) -> None:
        self.resumes += 1


@pytest.fixture
async def peer() -> AsyncIterator[tuple[Peer, int]]:
    p = Peer()
    server = await asyncio.start_server(p.serve, "127.0.0.1", 0)
    yield p, server.sockets[0].getsockname()[1]
    server.close()
    for writer in p.writers:
        writer.close()
    await server.wait_closed()


@pytest.fixture
async def pool(peer: tuple[Peer, int]) -> AsyncIterator[UpstreamPool]:
    p = UpstreamPool(Upstream.parse(f"http://127.0.0.1:{peer[1]}"), connect_s=5.0)
    yield p
    p.close()


async def test_a_released_connection_is_the_next_one_taken_and_marked_reused(pool: UpstreamPool, peer):
    assert pool.take_idle() is None
    conn = await pool.connect()
    assert not conn.reused and not conn.closed
    pool.release(conn)
    assert pool.idle == 1
    assert pool.take_idle() is conn
    assert conn.reused and pool.idle == 0
    assert pool.take_idle() is None


async def test_the_most_recently_released_connection_is_taken_first(pool: UpstreamPool):
    a, b = await pool.connect(), await pool.connect()
    pool.release(a)
    pool.release(b)
    assert pool.take_idle() is b
    assert pool.take_idle() is a


async def test_a_connection_the_upstream_closes_while_idle_is_dropped(pool: UpstreamPool, peer):
    p, _ = peer
    conn = await pool.connect()
    await until(lambda: len(p.writers) == 1, what="the upstream accepted")
    pool.release(conn)
    p.writers[0].close()
    await until(lambda: conn.closed, what="the pool saw the close")
    assert pool.idle == 0
    assert pool.take_idle() is None


async def test_take_idle_skips_a_connection_already_closing(pool: UpstreamPool):
    conn = await pool.connect()
    pool.release(conn)
    assert conn.transport is not None
    conn.transport.close()  # closing, connection_lost not run yet
    assert pool.take_idle() is None


async def test_bytes_on_an_idle_connection_spoil_it(pool: UpstreamPool, peer):
    p, _ = peer
    conn = await pool.connect()
    await until(lambda: len(p.writers) == 1, what="the upstream accepted")
    pool.release(conn)
    p.writers[0].write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")  # no request asked for it
    await until(lambda: conn.closed, what="the spoilt connection closed")
    assert pool.idle == 0
    await until(lambda: p.eofs == 1, what="the upstream saw the close")


async def test_release_reads_again_so_an_idle_close_is_seen(pool: UpstreamPool, peer):
    """An exchange may have paused reading (a slow client); once idle the pool must read again."""
    p, _ = peer
    conn = await pool.connect()
    await until(lambda: len(p.writers) == 1, what="the upstream accepted")
    assert conn.transport is not None
    conn.transport.pause_reading()
    pool.release(conn)
    p.writers[0].close()
    await until(lambda: conn.closed, what="the pool saw the close")
    assert pool.idle == 0


async def test_at_most_max_idle_connections_are_kept(pool: UpstreamPool, peer, monkeypatch):
    monkeypatch.setattr(upstream_module, "MAX_IDLE", 2)
    conns = [await pool.connect() for _ in range(3)]
    for conn in conns:
        pool.release(conn)
    assert pool.idle == 2
    assert conns[2].closed and not conns[0].closed and not conns[1].closed
    await until(lambda: peer[0].eofs == 1, what="the extra one closed")


async def test_an_idle_connection_expires_after_idle_s(pool: UpstreamPool, peer, monkeypatch):
    monkeypatch.setattr(upstream_module, "IDLE_S", 0.01)
    conn = await pool.connect()
    pool.release(conn)
    assert pool.idle == 1
    await until(lambda: pool.idle == 0 and conn.closed, what="the idle connection expired")
    await until(lambda: peer[0].eofs == 1, what="the upstream saw the close")


async def test_a_taken_connection_does_not_expire(pool: UpstreamPool, monkeypatch):
    monkeypatch.setattr(upstream_module, "IDLE_S", 0.01)
    conn, other = await pool.connect(), await pool.connect()
    pool.release(conn)
    assert pool.take_idle() is conn
    assert conn.idle_timer is None
    pool.release(other)  # released after `conn` was taken: once it has expired, so would have `conn`
    await until(lambda: other.closed, what="the other connection expired")
    assert not conn.closed


async def test_close_closes_idle_connections_and_any_released_after(pool: UpstreamPool, peer):
    idle, busy = await pool.connect(), await pool.connect()
    pool.release(idle)
    pool.close()
    assert idle.closed and pool.idle == 0
    assert not busy.closed
    pool.release(busy)
    assert busy.closed and pool.idle == 0
    await until(lambda: peer[0].eofs == 2, what="the upstream saw both closes")


async def test_a_connection_hands_reads_loss_and_back_pressure_to_its_sink(pool: UpstreamPool, peer):
    p, _ = peer
    conn = await pool.connect()
    await until(lambda: len(p.writers) == 1, what="the upstream accepted")
    sink = Sink()
    conn.sink = sink
    p.writers[0].write(b"abc")
    await until(lambda: b"".join(sink.data) == b"abc", what="the read reached the sink")
    conn.pause_writing()
    conn.resume_writing()
    assert (sink.pauses, sink.resumes) == (1, 1)
    assert conn.transport is not None
    conn.transport.write(b"request bytes")
    await until(lambda: b"".join(p.received) == b"request bytes", what="the write reached the upstream")
    p.writers[0].close()
    await until(lambda: sink.lost == [None], what="the sink was told of the close")
    assert conn.closed and conn.sink is None


async def test_connect_sets_tcp_nodelay(pool: UpstreamPool):
    conn = await pool.connect()
    assert conn.transport is not None
    sock = conn.transport.get_extra_info("socket")
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


async def test_connect_to_a_closed_port_is_an_oserror():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    pool = UpstreamPool(Upstream.parse(f"http://127.0.0.1:{port}"), connect_s=5.0)
    with pytest.raises(OSError):
        await pool.connect()


async def test_connect_times_out_when_the_tls_handshake_never_ends(peer):
    """The upstream accepts TCP but never answers the ClientHello: TimeoutError after connect_s."""
    p, port = peer
    pool = UpstreamPool(Upstream.parse(f"https://127.0.0.1:{port}"), connect_s=0.2)
    assert pool.ssl_context is not None
    with pytest.raises(TimeoutError):
        await pool.connect()
    assert p.writers  # it was accepted: the timeout covered the handshake


async def test_an_http_upstream_has_no_tls_context_and_a_https_one_verifies():
    assert UpstreamPool(Upstream.parse("http://127.0.0.1:1"), connect_s=1).ssl_context is None
    context = UpstreamPool(Upstream.parse("https://127.0.0.1:1"), connect_s=1).ssl_context
    assert context is not None and context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
