"""relay/tunnel.py: an `Upgrade` request handed on whole, then raw bytes both ways until a side closes.

Pinned: the upstream sees the handshake with its `Upgrade` and `Connection` headers (and its own
Host); bytes the client sent behind the head in the same read cross too; from then on bytes cross
unchanged both ways (the 101 head included); either side closing closes the other; the exchange
is recorded with the upstream's status; an unreachable upstream is the contract's 502.
"""

from __future__ import annotations

import asyncio
import json

from tests.proxy.relay.conftest import RawClient, Seen, recorded_rows, until

HANDSHAKE = (b"GET /v1/realtime HTTP/1.1\r\nHost: runtap\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
             b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
SWITCHING = (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
             b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n")


def echo_upper(closes_after: int | None = None):
    """Answers 101, then sends back every read upper-cased; closes after `closes_after` reads."""

    async def handler(_seen: Seen, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(SWITCHING)
        reads = 0
        while data := await reader.read(65536):
            writer.write(data.upper())
            await writer.drain()
            reads += 1
            if closes_after is not None and reads >= closes_after:
                break
        return False

    return handler


async def read_exactly(c: RawClient, n: int) -> bytes:
    async with asyncio.timeout(10):
        return await c.reader.readexactly(n)


async def test_the_handshake_goes_upstream_whole_and_bytes_cross_unchanged_both_ways(scripted, relay_proxy,
                                                                                    raw_client):
    upstream = await scripted(echo_upper())
    proxy = await relay_proxy(upstream.url)
    c: RawClient = await raw_client(proxy.port)
    await c.send(HANDSHAKE + b"early-frame")  # bytes behind the head, in the same read
    assert await read_exactly(c, len(SWITCHING)) == SWITCHING  # the 101 head crosses as sent
    assert await read_exactly(c, len(b"early-frame")) == b"EARLY-FRAME"
    frame = bytes(range(256)) * 64
    await c.send(frame)
    assert await read_exactly(c, len(frame)) == frame.upper()
    seen = upstream.requests[0]
    assert seen.target == b"/v1/realtime"
    assert seen.header(b"upgrade") == b"websocket" and seen.header(b"connection") == b"Upgrade"
    assert seen.header(b"sec-websocket-key") == b"dGhlIHNhbXBsZSBub25jZQ=="
    assert seen.header(b"host") == f"127.0.0.1:{upstream.port}".encode()


async def test_the_upstream_closing_closes_the_client_and_the_exchange_is_recorded(scripted, relay_proxy,
                                                                                  raw_client):
    upstream = await scripted(echo_upper(closes_after=1))
    proxy = await relay_proxy(upstream.url)
    c: RawClient = await raw_client(proxy.port)
    await c.send(HANDSHAKE)
    assert await read_exactly(c, len(SWITCHING)) == SWITCHING
    await c.send(b"bye")
    assert await read_exactly(c, 3) == b"BYE"
    assert await c.closed()
    rows = await recorded_rows(proxy, "select method, path, status, response_bytes from requests")
    assert rows == [("GET", "/v1/realtime", 101, len(SWITCHING) + 3)]


async def test_the_client_closing_closes_the_upstream(scripted, relay_proxy, raw_client):
    upstream = await scripted(echo_upper())
    proxy = await relay_proxy(upstream.url)
    c: RawClient = await raw_client(proxy.port)
    await c.send(HANDSHAKE)
    assert await read_exactly(c, len(SWITCHING)) == SWITCHING
    await c.close()
    await until(lambda: upstream.closed_connections == 1, what="the upstream side closed")
    assert await recorded_rows(proxy, "select status from requests") == [(101,)]


async def test_a_refused_upgrade_is_relayed_as_the_upstreams_answer(scripted, relay_proxy, raw_client):
    refusal = b"HTTP/1.1 426 Upgrade Required\r\nContent-Length: 2\r\n\r\nno"

    async def refuse(_seen: Seen, _reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(refusal)
        return False

    upstream = await scripted(refuse)
    proxy = await relay_proxy(upstream.url)
    c: RawClient = await raw_client(proxy.port)
    await c.send(HANDSHAKE)
    assert await read_exactly(c, len(refusal)) == refusal
    assert await c.closed()
    assert await recorded_rows(proxy, "select status from requests") == [(426,)]


async def test_an_unreachable_upstream_is_a_502(relay_proxy, raw_client, unused_tcp_port: int):
    proxy = await relay_proxy(f"http://127.0.0.1:{unused_tcp_port}")
    c: RawClient = await raw_client(proxy.port)
    await c.send(HANDSHAKE)
    response = await c.response()
    assert response.status == 502
    error = json.loads(response.body)["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == "upstream_unreachable"
    assert await c.closed()
