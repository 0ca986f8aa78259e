"""The relay core's rig: a scripted raw upstream, a raw client, and the real app in front of the upstream.

Both ends are plain asyncio sockets, so a test decides every byte and every split: what aiohttp or
the SDK would normalise (chunk boundaries, framing, `Expect`, HTTP/1.0, pipelining) is sent as is.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from proxy.app import PARTS, make_app
from proxy.config import Settings
from proxy.relay.client import ClientConnection
from proxy.relay.runner import RelayServer, RelayTestServer

IO_TIMEOUT_S = 10.0
"""Longest any single read in a test waits: a hang fails the test instead of stalling the suite."""

Headers = list[tuple[bytes, bytes]]


def parse_headers(lines: Iterable[bytes]) -> Headers:
    headers: Headers = []
    for line in lines:
        name, _, value = line.partition(b":")
        headers.append((name, value.strip()))
    return headers


def first(headers: Headers, name: bytes) -> bytes | None:
    return next((v for k, v in headers if k.lower() == name.lower()), None)


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    """`data` cut at each of `cuts` (modulo its length): the pieces, none empty."""
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points) if b > a]


async def settle(rounds: int = 3) -> None:
    """A few loop iterations: bytes written on loopback are read by the other side (same loop)."""
    for _ in range(rounds):
        await asyncio.sleep(0)


async def until(check: Callable[[], bool], timeout_s: float = IO_TIMEOUT_S, what: str = "condition") -> None:
    """Poll `check` every loop iteration (and a millisecond) until it holds; fail after `timeout_s`."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{what} not reached within {timeout_s} s")
        await asyncio.sleep(0.001)


async def read_chunked(reader: asyncio.StreamReader) -> tuple[bytes, bytes, Headers]:
    """A chunked body: (its raw framing as read, the decoded bytes, the trailers)."""
    raw = bytearray()
    body = bytearray()
    while True:
        line = await reader.readuntil(b"\r\n")
        raw += line
        size = int(line.split(b";", 1)[0].strip(), 16)
        if size == 0:
            break
        data = await reader.readexactly(size + 2)
        raw += data
        body += data[:-2]
    trailers: list[bytes] = []
    while True:
        line = await reader.readuntil(b"\r\n")
        raw += line
        if line == b"\r\n":
            break
        trailers.append(line[:-2])
    return bytes(raw), bytes(body), parse_headers(trailers)


# -- the upstream ------------------------------------------------------------------------------------


@dataclass
class Seen:
    """One request as the upstream read it."""

    conn: int
    """Which upstream connection it came on (0 is the first one accepted)."""
    method: bytes
    target: bytes
    version: bytes
    headers: Headers
    head: bytes
    body: bytes
    """Decoded (chunked framing removed)."""
    raw_body: bytes
    """As framed on the wire."""

    def header(self, name: bytes) -> bytes | None:
        return first(self.headers, name)


Handler = Callable[["Seen", asyncio.StreamReader, asyncio.StreamWriter], Awaitable[bool]]
"""Answers one request; returns whether to read another on the same connection."""


async def echo(seen: Seen, _reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
    """200 with the request body, Content-Length framed; names the upstream connection it came on."""
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nX-Upstream-Conn: %d\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (seen.conn, len(seen.body), seen.body))
    return True


@dataclass(repr=False)
class ScriptedUpstream:
    """A keep-alive HTTP/1.1 upstream on a raw socket; what it answers is the test's `handler`."""

    handler: Handler
    requests: list[Seen] = field(default_factory=list)
    connections: int = 0
    closed_connections: int = 0
    server: asyncio.Server | None = None
    writers: list[asyncio.StreamWriter] = field(default_factory=list)

    def __repr__(self) -> str:  # short: hypothesis prints it with every failing example
        return f"<ScriptedUpstream {len(self.requests)} requests on {self.connections} connections>"

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        index = self.connections
        self.connections += 1
        self.writers.append(writer)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError:
                    break  # closed between requests
                request_line, *lines = head[:-4].split(b"\r\n")
                method, target, version = request_line.split(b" ", 2)
                headers = parse_headers(lines)
                length = first(headers, b"content-length")
                if (first(headers, b"transfer-encoding") or b"").lower() == b"chunked":
                    raw_body, body, _ = await read_chunked(reader)
                elif length is not None:
                    raw_body = body = await reader.readexactly(int(length))
                else:
                    raw_body = body = b""
                seen = Seen(index, method, target, version, headers, head, body, raw_body)
                self.requests.append(seen)
                keep = await self.handler(seen, reader, writer)
                await writer.drain()
                if not keep:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.closed_connections += 1
            writer.close()


@pytest.fixture
async def scripted() -> AsyncIterator[Callable[..., Awaitable[ScriptedUpstream]]]:
    """`await scripted(handler)`: a started ScriptedUpstream (default: `echo`), closed after the test."""
    upstreams: list[ScriptedUpstream] = []

    async def start(handler: Handler = echo) -> ScriptedUpstream:
        upstream = ScriptedUpstream(handler)
        upstream.server = await asyncio.start_server(upstream.serve, "127.0.0.1", 0)
        upstreams.append(upstream)
        return upstream

    yield start
    for upstream in upstreams:
        assert upstream.server is not None
        upstream.server.close()
        for writer in upstream.writers:
            writer.close()
        await upstream.server.wait_closed()


# -- the proxy ---------------------------------------------------------------------------------------


@pytest.fixture
async def relay_proxy(serve_proxy, tmp_path: Path) -> Callable[..., Awaitable[RelayTestServer]]:
    """`await relay_proxy(upstream_url, server={...}, timeouts={...})`: the real app on the relay core."""
    count = 0

    async def start(upstream: str, *, server: dict[str, Any] | None = None,
                    timeouts: dict[str, Any] | None = None) -> RelayTestServer:
        nonlocal count
        count += 1
        settings = Settings.model_validate({
            "server": {"upstream": upstream, **(server or {})},
            "timeouts": timeouts or {},
            "recorder": {"db": str(tmp_path / f"relay{count}.duckdb"), "batch_interval_ms": 5},
        })
        return await serve_proxy(make_app(settings))

    return start


def relay_server(proxy: RelayTestServer) -> RelayServer:
    """The protocol factory serving the proxy port (it holds the open client connections)."""
    assert proxy.runner is not None
    server = proxy.runner.server
    assert isinstance(server, RelayServer)
    return server


def client_connections(proxy: RelayTestServer) -> list[ClientConnection]:
    return list(relay_server(proxy).connections)


async def recorded_rows(proxy: RelayTestServer, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """Once every exchange has ended and the writer has committed: the rows `sql` selects."""
    parts = proxy.app[PARTS]
    await parts.flush(IO_TIMEOUT_S)
    return parts.writer.cursor().execute(sql, list(params)).fetchall()


# -- the client --------------------------------------------------------------------------------------


@dataclass
class RawResponse:
    status: int
    reason: bytes
    headers: Headers
    head: bytes
    raw: bytes
    """What followed the head, framing included, as read."""
    body: bytes
    """Decoded."""
    trailers: Headers = field(default_factory=list)

    def header(self, name: bytes) -> bytes | None:
        return first(self.headers, name)

    def names(self) -> list[bytes]:
        return [name.lower() for name, _ in self.headers]


class RawClient:
    """One client connection to the proxy port, on a raw socket."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int, *, rcvbuf: int | None = None, limit: int = 1 << 20) -> RawClient:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        reader, writer = await asyncio.open_connection(sock=sock, limit=limit)
        return cls(reader, writer)

    async def send(self, *pieces: bytes) -> None:
        """Each piece as its own write, the proxy reading it before the next goes out."""
        for piece in pieces:
            self.writer.write(piece)
            await self.writer.drain()
            await settle()

    async def response(self, method: bytes = b"GET", *, interim: bool = False) -> RawResponse:
        """The next response on the connection (skipping `1xx` heads unless `interim`)."""
        async with asyncio.timeout(IO_TIMEOUT_S):
            while True:
                head = await self.reader.readuntil(b"\r\n\r\n")
                status_line, *lines = head[:-4].split(b"\r\n")
                _, status, reason = [*status_line.split(b" ", 2), b""][:3]
                headers = parse_headers(lines)
                code = int(status)
                if interim or not (100 <= code < 200):
                    break
            if 100 <= code < 200 or method == b"HEAD" or code in (204, 304):
                return RawResponse(code, reason, headers, head, b"", b"")
            if (first(headers, b"transfer-encoding") or b"").lower() == b"chunked":
                raw, body, trailers = await read_chunked(self.reader)
                return RawResponse(code, reason, headers, head, raw, body, trailers)
            length = first(headers, b"content-length")
            if length is not None:
                body = await self.reader.readexactly(int(length))
            else:
                body = await self.reader.read(-1)  # close-delimited
            return RawResponse(code, reason, headers, head, body, body)

    async def closed(self) -> bool:
        """The proxy closed the connection: EOF (or a reset) with nothing more to read."""
        try:
            async with asyncio.timeout(IO_TIMEOUT_S):
                rest = await self.reader.read(1)
        except ConnectionError:
            return True
        return rest == b""

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


@pytest.fixture
async def raw_client() -> AsyncIterator[Callable[..., Awaitable[RawClient]]]:
    """`await raw_client(port)`: a RawClient, closed after the test."""
    clients: list[RawClient] = []

    async def open_(port: int, **kwargs: Any) -> RawClient:
        c = await RawClient.open(port, **kwargs)
        clients.append(c)
        return c

    yield open_
    for c in clients:
        await c.close()


def get(target: bytes = b"/v1/models", *, extra: bytes = b"", version: bytes = b"HTTP/1.1") -> bytes:
    return b"GET %s %s\r\nHost: runtap\r\n%s\r\n" % (target, version, extra)


def post(target: bytes, body: bytes, *, extra: bytes = b"") -> bytes:
    return b"POST %s HTTP/1.1\r\nHost: runtap\r\nContent-Length: %d\r\n%s\r\n%s" % (target, len(body), extra, body)
