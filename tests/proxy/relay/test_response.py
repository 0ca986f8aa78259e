"""relay/response.py: the upstream's response relayed to a raw client, from a raw scripted upstream.

Pinned: any split of a response (Content-Length or chunked, behind an interim head or not) reaches
an HTTP/1.1 client byte-exact after the head, the upstream's own chunk framing and trailers
included, and an HTTP/1.0 client decoded with the connection closed; a slow client pauses the
upstream, so runtap's write buffer stays bounded however large the body; HEAD, 204 and 304 carry
no body and leave both connections usable; a close from the upstream stays on its connection
unless the body is close-delimited (then the client gets `Connection: close`); no head from the
upstream is a 502 (504 when silent), a body cut short aborts the client; interim heads are not
relayed; a client that leaves does not stop the exchange; a slow client is not a silent upstream.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.app import PARTS
from proxy.relay.runner import RelayTestServer
from tests.proxy.relay.conftest import (
    RawClient,
    ScriptedUpstream,
    Seen,
    client_connections,
    get,
    recorded_rows,
    settle,
    split_at,
    until,
)


@dataclass(repr=False)
class Script:
    """What the upstream answers next: its pieces, each written and drained on its own."""

    pieces: list[bytes] = field(default_factory=list)
    keep: bool = True

    def __repr__(self) -> str:
        return f"<Script {len(self.pieces)} pieces>"

    async def handler(self, seen: Seen, _reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        for piece in self.pieces:
            writer.write(piece)
            await writer.drain()
            await settle()
        return self.keep


ScriptedRelay = tuple[RelayTestServer, ScriptedUpstream, Script]


@pytest.fixture
async def scripted_relay(scripted, relay_proxy) -> ScriptedRelay:
    script = Script()
    upstream = await scripted(script.handler)
    return await relay_proxy(upstream.url), upstream, script


def chunked(body: bytes, sizes: list[int], *, upper: bool = False, trailers: bytes = b"") -> bytes:
    out, i, n = bytearray(), 0, 0
    while i < len(body):
        piece = body[i:i + max(1, sizes[n % len(sizes)] if sizes else len(body))]
        size = (b"%X" if upper else b"%x") % len(piece)
        out += size + (b";name=value" if n % 4 == 3 else b"") + b"\r\n" + piece + b"\r\n"
        i += len(piece)
        n += 1
    return bytes(out) + b"0\r\n" + trailers + b"\r\n"


def pool_idle(proxy: RelayTestServer) -> int:
    pool = proxy.app[PARTS].pool
    assert pool is not None
    return pool.idle


# -- any split of a response -----------------------------------------------------------------------------


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.binary(max_size=5000), framing=st.sampled_from(["length", "chunked"]), http10=st.booleans(),
       sizes=st.lists(st.integers(1, 900), max_size=6), upper=st.booleans(), trailer=st.booleans(),
       interim=st.booleans(), status=st.sampled_from([200, 201, 404, 500]),
       target=st.sampled_from([b"/v1/models", b"/v1/threads/thread_1"]),
       cuts=st.lists(st.integers(0, 20_000), max_size=12))
async def test_any_split_of_a_response_reaches_the_client_byte_exact(
        scripted_relay: ScriptedRelay, raw_client, body: bytes, framing: str, http10: bool, sizes: list[int],
        upper: bool, trailer: bool, interim: bool, status: int, target: bytes, cuts: list[int]):
    proxy, _, script = scripted_relay
    if framing == "chunked":
        wire_body = chunked(body, sizes, upper=upper, trailers=b"X-Checksum: abc\r\n" if trailer else b"")
        framing_line = b"Transfer-Encoding: chunked"
    else:
        wire_body, framing_line = body, b"Content-Length: %d" % len(body)
    head = (b"HTTP/1.1 %d Whatever Reason\r\nX-A: 1\r\nContent-Type: application/octet-stream\r\n%s\r\nX-B: 2\r\n\r\n"
            % (status, framing_line))
    wire = (b"HTTP/1.1 100 Continue\r\n\r\n" if interim else b"") + head + wire_body
    script.pieces = split_at(wire, cuts)
    c: RawClient = await raw_client(proxy.port)
    try:
        await c.send(get(target, version=b"HTTP/1.0" if http10 else b"HTTP/1.1"))
        response = await c.response(interim=True)
        assert response.status == status and response.reason == b"Whatever Reason"
        assert [n for n, _ in response.headers if n.lower().startswith(b"x-")] == [b"X-A", b"X-B"]
        assert response.body == body
        if framing == "length":
            assert response.raw == body and response.header(b"content-length") == b"%d" % len(body)
        elif http10:  # decoded, delimited by the close
            assert response.raw == body
            assert response.header(b"transfer-encoding") is None and response.header(b"content-length") is None
        else:  # the upstream's own framing, trailers included
            assert response.raw == wire_body and response.header(b"transfer-encoding") == b"chunked"
        if http10:
            assert response.header(b"connection") == b"close"
            assert await c.closed()
        else:
            assert response.header(b"connection") is None
    finally:
        await c.close()


# -- flow control ----------------------------------------------------------------------------------------

BIG = 32 * 1024 * 1024


async def test_a_slow_client_pauses_the_upstream_so_runtap_buffers_a_bounded_amount(scripted, relay_proxy,
                                                                                     raw_client):
    block = bytes(range(256)) * 4096  # 1 MiB
    sent = 0

    async def handler(seen: Seen, _reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        nonlocal sent
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n" % BIG)
        for _ in range(BIG // len(block)):
            writer.write(block)
            sent += len(block)
            await writer.drain()
        return True

    upstream = await scripted(handler)
    proxy = await relay_proxy(upstream.url)
    c: RawClient = await raw_client(proxy.port, rcvbuf=64 * 1024, limit=64 * 1024)
    await c.send(get(b"/v1/files/file_1/content"))
    [conn] = client_connections(proxy)
    assert conn.transport is not None
    await until(lambda: conn.writing_paused, what="runtap's write to the client paused")
    high = 0
    digest = hashlib.sha256()
    async with asyncio.timeout(60):
        head = await c.reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 ") and b"Content-Length: %d" % BIG in head
        got = 0
        while got < BIG:
            data = await c.reader.read(64 * 1024)
            assert data, "the body ended early"
            digest.update(data)
            got += len(data)
            await settle(2)  # the proxy and the upstream get their turns: the client reads slowly
            high = max(high, conn.transport.get_write_buffer_size())
    assert got == BIG and sent == BIG
    assert digest.digest() == hashlib.sha256(block * (BIG // len(block))).digest()
    assert high < 4 * 1024 * 1024, f"runtap buffered {high} bytes for a slow client"
    await c.send(get())  # and the connection is still usable
    assert (await c.response()).status == 200


async def test_a_slow_client_is_not_taken_for_a_silent_upstream(scripted, relay_proxy, raw_client):
    """read_s runs only while runtap reads: a client that reads nothing for longer does not truncate."""
    size = 16 * 1024 * 1024

    async def handler(seen: Seen, _reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
        writer.write(b"z" * size)
        await writer.drain()
        return True

    upstream = await scripted(handler)
    proxy = await relay_proxy(upstream.url, timeouts={"read_s": 0.2})
    c: RawClient = await raw_client(proxy.port, rcvbuf=64 * 1024, limit=64 * 1024)
    await c.send(get(b"/v1/files/file_1/content"))
    [conn] = client_connections(proxy)
    await until(lambda: conn.writing_paused, what="runtap's write to the client paused")
    await asyncio.sleep(0.6)  # three times read_s without reading: the exchange must survive it
    response = await c.response()
    assert response.status == 200 and response.body == b"z" * size
    assert await recorded_rows(proxy, "select outcome from requests") == [("completed",)]


# -- bodiless responses ----------------------------------------------------------------------------------


async def test_head_relays_no_body_and_keeps_content_length(scripted_relay: ScriptedRelay, raw_client):
    proxy, upstream, script = scripted_relay
    script.pieces = [b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1234\r\n\r\n"]
    c: RawClient = await raw_client(proxy.port)
    await c.send(b"HEAD /v1/models HTTP/1.1\r\nHost: r\r\n\r\n")
    response = await c.response(b"HEAD")
    assert response.status == 200 and response.header(b"content-length") == b"1234"
    assert upstream.requests[0].method == b"HEAD"
    script.pieces = [b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nafter"]
    await c.send(get())
    after = await c.response()
    assert after.body == b"after"  # nothing was left between the two responses
    assert upstream.connections == 1 and len(client_connections(proxy)) == 1


async def test_head_of_a_chunked_resource_relays_the_framing_header_and_no_body(scripted_relay: ScriptedRelay,
                                                                                 raw_client):
    proxy, upstream, script = scripted_relay
    script.pieces = [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"]
    c: RawClient = await raw_client(proxy.port)
    await c.send(b"HEAD /v1/models HTTP/1.1\r\nHost: r\r\n\r\n")
    response = await c.response(b"HEAD")
    assert response.status == 200 and response.header(b"transfer-encoding") == b"chunked"
    script.pieces = [b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"]
    await c.send(get())
    assert (await c.response()).body == b"ok"
    assert upstream.connections == 1


@pytest.mark.parametrize("reply", [
    b"HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n",
    b"HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\nContent-Length: 50\r\n\r\n",
], ids=["204", "304"])
async def test_204_and_304_carry_no_body_and_the_connection_goes_on(scripted_relay: ScriptedRelay, raw_client,
                                                                    reply: bytes):
    proxy, upstream, script = scripted_relay
    script.pieces = [reply]
    c: RawClient = await raw_client(proxy.port)
    await c.send(get(b"/v1/threads/thread_1"))
    response = await c.response()
    assert response.status == int(reply.split(b" ")[1]) and response.header(b"transfer-encoding") is None
    script.pieces = [b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nnext"]
    await c.send(get())
    assert (await c.response()).body == b"next"
    assert upstream.connections == 1 and len(client_connections(proxy)) == 1
    assert await recorded_rows(proxy, "select status, outcome from requests order by started_at") == [
        (response.status, "completed"), (200, "completed")]


# -- closes ----------------------------------------------------------------------------------------------


async def test_connection_close_from_the_upstream_stays_on_the_upstream_connection(scripted_relay: ScriptedRelay,
                                                                                   raw_client):
    """A length-framed body ends the response whatever the upstream does next: the client's
    connection is not the upstream's, so it stays open, and the next request gets a fresh upstream."""
    proxy, upstream, script = scripted_relay
    script.pieces, script.keep = [b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 3\r\n\r\none"], False
    c: RawClient = await raw_client(proxy.port)
    await c.send(get())
    first = await c.response()
    assert first.body == b"one" and first.header(b"connection") is None
    script.pieces, script.keep = [b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\ntwo"], True
    await c.send(get())
    assert (await c.response()).body == b"two"
    assert upstream.connections == 2 and len(client_connections(proxy)) == 1


async def test_a_close_delimited_body_is_relayed_whole_then_the_client_is_closed(scripted_relay: ScriptedRelay,
                                                                                 raw_client):
    proxy, _, script = scripted_relay
    body = b"no length, no chunks: the close ends it " * 100
    script.pieces, script.keep = [b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Type: text/plain\r\n\r\n",
                                  body[:1000], body[1000:]], False
    c: RawClient = await raw_client(proxy.port)
    await c.send(get())
    response = await c.response()
    assert response.header(b"connection") == b"close" and response.header(b"content-length") is None
    assert response.body == body
    assert await recorded_rows(proxy, "select status, outcome from requests") == [(200, "completed")]


async def test_an_http10_client_gets_a_chunked_body_decoded_and_the_connection_closed(scripted_relay: ScriptedRelay,
                                                                                     raw_client):
    proxy, _, script = scripted_relay
    body = b"data: {\"x\": 1}\n\n" * 50
    script.pieces = [b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n",
                     chunked(body, [7, 100, 3], trailers=b"X-T: 1\r\n")]
    c: RawClient = await raw_client(proxy.port)
    await c.send(get(b"/v1/models", version=b"HTTP/1.0"))
    async with asyncio.timeout(10):
        raw = await c.reader.read(-1)
    head, _, rest = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    lines = head.split(b"\r\n")[1:]
    assert b"Connection: close" in lines and not any(line.lower().startswith(b"transfer-encoding") for line in lines)
    assert rest == body  # no framing, no trailer


async def test_trailers_after_a_chunked_body_reach_an_http11_client_raw(scripted_relay: ScriptedRelay, raw_client):
    proxy, upstream, script = scripted_relay
    framed = b"5\r\nhello\r\n6\r\n world\r\n0\r\nX-Checksum: 5d41402a\r\nX-Other: two\r\n\r\n"
    script.pieces = [b"HTTP/1.1 200 OK\r\nTrailer: X-Checksum, X-Other\r\nTransfer-Encoding: chunked\r\n\r\n" + framed]
    c: RawClient = await raw_client(proxy.port)
    await c.send(get())
    response = await c.response()
    assert response.raw == framed and response.body == b"hello world"
    assert response.trailers == [(b"X-Checksum", b"5d41402a"), (b"X-Other", b"two")]
    assert response.header(b"trailer") is None  # hop-by-hop, the trailers themselves are end to end
    script.pieces = [b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"]
    await c.send(get())
    assert (await c.response()).body == b"ok"
    assert upstream.connections == 1


async def test_interim_heads_from_the_upstream_are_not_relayed(scripted_relay: ScriptedRelay, raw_client):
    proxy, _, script = scripted_relay
    script.pieces = [b"HTTP/1.1 100 Continue\r\n\r\n", b"HTTP/1.1 103 Early Hints\r\nLink: </a>; rel=preload\r\n\r\n",
                     b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfinal"]
    c: RawClient = await raw_client(proxy.port)
    await c.send(get())
    response = await c.response(interim=True)
    assert response.status == 200 and response.body == b"final"
    assert response.header(b"link") is None


@pytest.mark.parametrize("chunked", [False, True], ids=["length", "chunked"])
@pytest.mark.parametrize("together", [True, False], ids=["same-read", "later-read"])
async def test_bytes_after_the_response_spoil_the_upstream_connection(scripted_relay: ScriptedRelay, raw_client,
                                                                      together: bool, chunked: bool):
    """A stray response after the one asked for is never relayed as (part of) it, and its connection
    is not used again."""
    proxy, upstream, script = scripted_relay
    answer = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\non\r\n1\r\ne\r\n0\r\n\r\n" if chunked
              else b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\none")
    stray = b"HTTP/1.1 200 Stray\r\nContent-Length: 5\r\n\r\nextra"
    script.pieces = [answer + stray] if together else [answer, stray]
    c: RawClient = await raw_client(proxy.port)
    await c.send(get())
    first = await c.response()
    assert first.body == b"one" and first.reason == b"OK"
    if together:  # seen with the response: nothing of the stray after it, then the close
        assert await c.closed()
    script.pieces = [b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\ntwo"]
    again: RawClient = await raw_client(proxy.port)
    await again.send(get())
    assert (await again.response()).body == b"two"  # never the spoilt connection's stray "extra"
    assert upstream.connections == 2
    assert await recorded_rows(proxy, "select response_bytes from requests order by started_at") == [(3,), (3,)]


# -- failures --------------------------------------------------------------------------------------------


async def test_no_head_from_the_upstream_is_a_502(scripted_relay: ScriptedRelay, raw_client):
    proxy, _, script = scripted_relay
    script.pieces, script.keep = [b"HTTP/1.1 200 O"], False  # closed inside the status line
    c: RawClient = await raw_client(proxy.port)
    await c.send(get())
    response = await c.response()
    assert response.status == 502 and b'"code":"upstream_unreachable"' in response.body
    await c.send(get())  # runtap's own answer leaves the client connection usable
    script.pieces, script.keep = [b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"], True
    assert (await c.response()).body == b"ok"
    assert await recorded_rows(proxy, "select status, outcome from requests order by started_at") == [
        (502, "upstream_error"), (200, "completed")]


async def test_a_silent_upstream_is_a_504_after_read_s(scripted, relay_proxy, raw_client):
    async def silent(seen: Seen, reader: asyncio.StreamReader, _writer: asyncio.StreamWriter) -> bool:
        await reader.read(1)  # until runtap gives up and closes
        return False

    upstream = await scripted(silent)
    proxy = await relay_proxy(upstream.url, timeouts={"read_s": 0.2})
    c: RawClient = await raw_client(proxy.port)
    await c.send(get())
    response = await c.response()
    assert response.status == 504 and b'"code":"upstream_timeout"' in response.body
    await until(lambda: upstream.closed_connections == 1, what="runtap closed the silent connection")


async def test_a_body_cut_short_aborts_the_client_connection(scripted_relay: ScriptedRelay, raw_client):
    """The status cannot change once the head went out: the client must not see a clean end."""
    proxy, _, script = scripted_relay
    script.pieces, script.keep = [b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n", b"only ten.."], False
    c: RawClient = await raw_client(proxy.port)
    await c.send(get())
    with pytest.raises((asyncio.IncompleteReadError, ConnectionError)):
        await c.response()
    [(outcome, error)] = await recorded_rows(proxy, "select outcome, error from requests")
    assert outcome == "truncated" and "not completed" in error


async def test_a_chunked_body_cut_short_aborts_the_client_connection(scripted_relay: ScriptedRelay, raw_client):
    proxy, _, script = scripted_relay
    script.pieces, script.keep = [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"], False
    c: RawClient = await raw_client(proxy.port)
    await c.send(get())
    with pytest.raises((asyncio.IncompleteReadError, ConnectionError)):
        await c.response()
    assert await recorded_rows(proxy, "select outcome from requests") == [("truncated",)]


async def test_a_client_that_leaves_does_not_stop_the_exchange(scripted, relay_proxy, raw_client):
    go_on = asyncio.Event()
    finished = asyncio.Event()

    async def handler(seen: Seen, _reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 10\r\n\r\nfirst")
        await writer.drain()
        await go_on.wait()
        writer.write(b"-last")
        await writer.drain()
        finished.set()
        return True

    upstream = await scripted(handler)
    proxy = await relay_proxy(upstream.url)
    c: RawClient = await raw_client(proxy.port)
    await c.send(get())
    async with asyncio.timeout(10):
        await c.reader.readuntil(b"first")
    await c.close()
    await until(lambda: not client_connections(proxy), what="runtap saw the client leave")
    go_on.set()
    async with asyncio.timeout(10):
        await finished.wait()
    assert await recorded_rows(proxy, "select outcome, response_bytes from requests") == [("client_gone", 10)]
    # The response was read to its end, so the upstream connection went back to the pool.
    await until(lambda: pool_idle(proxy) == 1, what="the upstream connection pooled")
    assert upstream.closed_connections == 0
