"""relay/client.py: the client's side of the proxy port, driven from a raw socket.

Pinned: any split of a request (head and body, Content-Length or chunked) reaches the upstream
byte-exact; requests on one connection are answered in order, one at a time, and reuse one
upstream connection; reading a pipelining client pauses while a request waits; a chunked body on an
unrecorded route is streamed (the upstream reads it before the client has sent it all), on a
recorded route read whole and recorded; `Expect: 100-continue` is answered when the body is wanted
and not when it is refused; `Connection: close` and HTTP/1.0 close after the response; an idle
connection closes after KEEPALIVE_S; a malformed request is a 400 and the connection closes.
"""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.relay import client as client_module
from proxy.relay.heads import CONTINUE
from proxy.relay.runner import RelayTestServer
from tests.conftest import RAW_KEY
from tests.proxy.relay.conftest import (
    RawClient,
    ScriptedUpstream,
    Seen,
    client_connections,
    echo,
    get,
    post,
    split_at,
    until,
)

AUTH = f"Authorization: Bearer {RAW_KEY}\r\nOpenAI-Beta: assistants=v2\r\n".encode()

EchoRelay = tuple[RelayTestServer, ScriptedUpstream]


@pytest.fixture
async def echo_relay(scripted, relay_proxy) -> EchoRelay:
    upstream = await scripted(echo)
    return await relay_proxy(upstream.url), upstream


def chunked_body(body: bytes, sizes: list[int]) -> bytes:
    """`body` in chunks of `sizes` (cycled), with a chunk extension now and then, then the last chunk."""
    out, i, n = bytearray(), 0, 0
    while i < len(body):
        size = max(1, sizes[n % len(sizes)]) if sizes else len(body)
        piece = body[i:i + size]
        out += b"%x%s\r\n%s\r\n" % (len(piece), b";ext=1" if n % 3 == 2 else b"", piece)
        i += len(piece)
        n += 1
    return bytes(out + b"0\r\n\r\n")


# -- any split of a request ----------------------------------------------------------------------------


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.binary(max_size=4000), chunked=st.booleans(), sizes=st.lists(st.integers(1, 700), max_size=6),
       route=st.sampled_from([b"/v1/files", b"/v1/threads"]), cuts=st.lists(st.integers(0, 10_000), max_size=10))
async def test_any_split_of_a_request_reaches_the_upstream_byte_exact(echo_relay: EchoRelay, raw_client,
                                                                      body: bytes, chunked: bool,
                                                                      sizes: list[int], route: bytes,
                                                                      cuts: list[int]):
    proxy, upstream = echo_relay
    before = len(upstream.requests)
    if chunked:
        wire = (b"POST %s HTTP/1.1\r\nHost: runtap\r\nX-Before: 1\r\nTransfer-Encoding: chunked\r\nX-After: 2\r\n"
                b"\r\n%s" % (route, chunked_body(body, sizes)))
    else:
        wire = post(route, body, extra=b"X-Before: 1\r\nX-After: 2\r\n")
    c: RawClient = await raw_client(proxy.port)
    try:
        await c.send(*split_at(wire, cuts))
        response = await c.response()
    finally:
        await c.close()
    [seen] = upstream.requests[before:]
    assert seen.method == b"POST" and seen.target == route
    assert seen.body == body
    assert [n for n, _ in seen.headers if n.lower().startswith(b"x-")] == [b"X-Before", b"X-After"]
    if chunked and route == b"/v1/files":  # streamed: the relay's own chunks, the same bytes
        assert seen.header(b"transfer-encoding") == b"chunked" and seen.header(b"content-length") is None
    else:  # a Content-Length body, or a recorded route's body read whole
        assert seen.header(b"content-length") == b"%d" % len(body) and seen.raw_body == body
    assert response.status == 200 and response.body == body


# -- one connection, several requests ---------------------------------------------------------------------


async def test_pipelined_requests_are_answered_in_order_one_at_a_time(scripted, relay_proxy, raw_client):
    release = asyncio.Event()

    async def handler(seen: Seen, reader, writer) -> bool:
        if seen.target == b"/v1/slow":
            await release.wait()
        return await echo(seen, reader, writer)

    upstream = await scripted(handler)
    proxy = await relay_proxy(upstream.url)
    c: RawClient = await raw_client(proxy.port)
    bodies = [b"first", b"", b"third-" * 100, b"4"]
    await c.send(post(b"/v1/slow", bodies[0]) + get(b"/v1/models?n=2") + post(b"/v1/files", bodies[2])
                 + post(b"/v1/threads", bodies[3]))
    await until(lambda: len(upstream.requests) == 1, what="the first request upstream")
    # The first is unanswered: the ones pipelined behind it wait in runtap, none goes upstream yet.
    [conn] = client_connections(proxy)
    await until(lambda: len(conn._queue) == 3, what="the pipelined requests parsed")
    assert len(upstream.requests) == 1
    release.set()
    responses = [await c.response() for _ in range(4)]
    assert [r.body for r in responses] == bodies
    assert [s.target for s in upstream.requests] == [b"/v1/slow", b"/v1/models?n=2", b"/v1/files", b"/v1/threads"]
    assert upstream.connections == 1
    assert all(r.header(b"connection") is None for r in responses)


async def test_sequential_requests_on_one_connection_reuse_one_upstream_connection(echo_relay: EchoRelay,
                                                                                  raw_client):
    proxy, upstream = echo_relay
    c: RawClient = await raw_client(proxy.port)
    for i in range(5):
        await c.send(post(b"/v1/files", b"n%d" % i) if i % 2 else get(b"/v1/models"))
        response = await c.response()
        assert response.status == 200 and response.header(b"x-upstream-conn") == b"0"
    assert upstream.connections == 1 and len(upstream.requests) == 5
    assert len(client_connections(proxy)) == 1


async def test_a_pipelining_client_is_not_read_while_a_request_waits(scripted, relay_proxy, raw_client):
    """Reading pauses while the queue has a request in it: runtap holds a bounded number of heads."""
    release = asyncio.Event()

    async def handler(seen: Seen, reader, writer) -> bool:
        await release.wait()
        return await echo(seen, reader, writer)

    upstream = await scripted(handler)
    proxy = await relay_proxy(upstream.url)
    c: RawClient = await raw_client(proxy.port)
    one = get(b"/v1/models", extra=b"X-Pad: " + b"p" * 8000 + b"\r\n")
    sent = 2000  # 16 MiB of heads: more than the sockets' buffers hold
    c.writer.write(one * sent)
    [conn] = client_connections(proxy)
    assert conn.transport is not None
    await until(lambda: len(upstream.requests) == 1, what="the first request upstream")
    await until(lambda: not conn.transport.is_reading(), what="reading the client paused")
    assert len(conn._queue) < sent // 10
    release.set()
    for _ in range(3):
        assert (await c.response()).status == 200


# -- request bodies ----------------------------------------------------------------------------------------


async def test_a_chunked_body_on_an_unrecorded_route_is_streamed_through(relay_proxy, raw_client):
    """The upstream sees the first chunk while the client still holds the rest back."""
    got_first = asyncio.Event()
    received = bytearray()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while b"0\r\n\r\n" not in received:
            data = await reader.read(65536)
            if not data:
                break
            received.extend(data)
            if b"part-one" in received:
                got_first.set()
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        proxy = await relay_proxy(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}")
        c: RawClient = await raw_client(proxy.port)
        await c.send(b"POST /v1/files HTTP/1.1\r\nHost: r\r\nTransfer-Encoding: chunked\r\n\r\n8\r\npart-one\r\n")
        async with asyncio.timeout(10):
            await got_first.wait()
        await c.send(b"8\r\npart-two\r\n", b"0\r\n\r\n")
        response = await c.response()
        assert response.status == 200 and response.body == b"ok"
        head, _, raw = bytes(received).partition(b"\r\n\r\n")
        assert b"Transfer-Encoding: chunked" in head.split(b"\r\n")
        assert raw == b"8\r\npart-one\r\n8\r\npart-two\r\n0\r\n\r\n"
    finally:
        server.close()
        await server.wait_closed()


async def test_a_chunked_body_on_a_recorded_route_is_read_whole_and_recorded(fake, proxy, raw_client, recorded):
    body = b'{"messages": [{"role": "user", "content": "' + b"v" * 3000 + b'"}]}'
    c: RawClient = await raw_client(proxy.port)
    await c.send(b"POST /v1/threads HTTP/1.1\r\nHost: r\r\n" + AUTH + b"Content-Type: application/json\r\n"
                 b"Transfer-Encoding: chunked\r\n\r\n", chunked_body(body, [1, 100, 999]))
    response = await c.response()
    assert response.status == 200
    [seen] = fake.requests
    assert seen.body == body
    assert seen.headers["Content-Length"] == str(len(body)) and "Transfer-Encoding" not in seen.headers
    q = await recorded()
    assert q("select method, status, request_body, request_bytes from requests") == [
        ("POST", 200, body.decode(), len(body))]


@pytest.mark.parametrize("route", [b"/v1/files", b"/v1/threads"], ids=["streamed", "recorded"])
async def test_expect_100_continue_is_answered_before_the_body_is_sent(echo_relay: EchoRelay, raw_client,
                                                                       route: bytes):
    """curl's way: the head, then the body only after `100 Continue` (or a final answer)."""
    proxy, upstream = echo_relay
    c: RawClient = await raw_client(proxy.port)
    body = b'{"x": "' + b"y" * 2000 + b'"}'
    await c.send(b"POST %s HTTP/1.1\r\nHost: r\r\nContent-Length: %d\r\nExpect: 100-continue\r\n\r\n"
                 % (route, len(body)))
    async with asyncio.timeout(10):
        assert await c.reader.readexactly(len(CONTINUE)) == CONTINUE
    await c.send(body)
    response = await c.response()
    assert response.status == 200 and response.body == body
    [seen] = upstream.requests
    assert seen.header(b"expect") is None and seen.body == body
    await c.send(get())  # the connection is still good
    assert (await c.response()).status == 200


async def test_expect_100_continue_with_a_body_too_large_gets_the_413_and_no_continue(scripted, relay_proxy,
                                                                                     raw_client):
    upstream = await scripted(echo)
    proxy = await relay_proxy(upstream.url, server={"max_recorded_body_bytes": 1000})
    c: RawClient = await raw_client(proxy.port)
    await c.send(b"POST /v1/threads HTTP/1.1\r\nHost: r\r\nContent-Length: 5000\r\nExpect: 100-continue\r\n\r\n")
    response = await c.response(interim=True)
    assert response.status == 413 and b"request_too_large" in response.body
    assert response.header(b"connection") == b"close"
    await c.send(b"x" * 5000)  # a client may send the body anyway: it is read, dropped, then the close
    assert await c.closed()
    assert upstream.requests == []


# -- closing -------------------------------------------------------------------------------------------------


async def test_connection_close_from_the_client_closes_after_the_response(echo_relay: EchoRelay, raw_client):
    proxy, upstream = echo_relay
    c: RawClient = await raw_client(proxy.port)
    await c.send(get(b"/v1/models", extra=b"Connection: close\r\n"))
    response = await c.response()
    assert response.status == 200 and response.header(b"connection") == b"close"
    assert await c.closed()
    assert upstream.requests[0].header(b"connection") is None  # hop-by-hop: not passed on


async def test_a_request_pipelined_behind_connection_close_is_not_served_and_the_first_is(echo_relay: EchoRelay,
                                                                                         raw_client):
    """RFC 9112 §9.6: the request that said `close` is answered; nothing after it is processed."""
    proxy, upstream = echo_relay
    c: RawClient = await raw_client(proxy.port)
    await c.send(get(b"/v1/models", extra=b"Connection: close\r\n") + get(b"/v1/never"))
    response = await c.response()
    assert response.status == 200 and response.header(b"connection") == b"close"
    assert await c.closed()
    assert [s.target for s in upstream.requests] == [b"/v1/models"]


@pytest.mark.parametrize("extra", [b"", b"Connection: keep-alive\r\n"], ids=["plain", "keep-alive-asked"])
async def test_an_http10_client_is_answered_and_the_connection_closed(echo_relay: EchoRelay, raw_client,
                                                                      extra: bytes):
    proxy, upstream = echo_relay
    c: RawClient = await raw_client(proxy.port)
    await c.send(get(b"/v1/models", extra=extra, version=b"HTTP/1.0"))
    response = await c.response()
    assert response.status == 200 and response.header(b"connection") == b"close"
    assert await c.closed()
    assert upstream.requests[0].version == b"HTTP/1.1"  # runtap speaks HTTP/1.1 upstream


async def test_an_idle_client_connection_is_closed_after_keepalive_s(echo_relay: EchoRelay, raw_client,
                                                                    monkeypatch):
    monkeypatch.setattr(client_module, "KEEPALIVE_S", 0.05)
    proxy, _ = echo_relay
    c: RawClient = await raw_client(proxy.port)
    await c.send(get())
    assert (await c.response()).status == 200
    assert await c.closed()
    await until(lambda: not client_connections(proxy), what="the connection forgotten")


async def test_a_malformed_request_is_a_400_and_the_connection_closes(echo_relay: EchoRelay, raw_client):
    proxy, upstream = echo_relay
    c: RawClient = await raw_client(proxy.port)
    await c.send(b"GET /v1/models HTTP/1.1\r\nHost: r\r\nBad Header: x\r\n\r\n")
    response = await c.response()
    assert response.status == 400 and b'"code":"bad_request"' in response.body
    assert response.header(b"connection") == b"close"
    assert await c.closed()
    assert upstream.requests == []
