"""The relay itself, against small purpose-built upstreams: what crosses, byte for byte."""

from __future__ import annotations

import asyncio
import gzip
import socket

import aiohttp
import pytest
from aiohttp import web

from proxy.app import PARTS, make_app
from proxy.config import Settings
from proxy.testing.faults import Fault
from tests.conftest import RAW_KEY, sha256
from tests.proxy.relay.conftest import Handler, RawClient, Seen, echo, get, post, recorded_rows, until


@pytest.fixture
async def echo_upstream(aiohttp_server):
    """Answers with what it received, so tests see exactly what the proxy forwarded."""
    seen: list[dict] = []

    async def echo(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        seen.append({"method": request.method, "raw_path": request.raw_path, "headers": request.headers.copy(),
                     "body": body})
        response = web.StreamResponse(status=201, headers={"X-Upstream": "yes", "Set-Cookie": "a=1"})
        response.headers.add("Set-Cookie", "b=2")
        await response.prepare(request)
        for i in range(0, len(body), 1000):
            await response.write(body[i:i + 1000])
        await response.write_eof()
        return response

    app = web.Application(client_max_size=1 << 30)
    app.router.add_route("*", "/{tail:.*}", echo)
    server = await aiohttp_server(app)
    server.seen = seen
    return server


@pytest.fixture
async def echo_proxy(serve_proxy, echo_upstream, tmp_path):
    settings = Settings.model_validate({
        "server": {"upstream": str(echo_upstream.make_url("")).rstrip("/"), "max_recorded_body_bytes": 4096},
        "recorder": {"db": str(tmp_path / "r.duckdb")},
    })
    return await serve_proxy(make_app(settings))


async def test_path_query_method_headers_and_body_cross_unchanged(echo_proxy, echo_upstream):
    body = b'{"assistant_id": "asst_1", "odd": "\xc3\xa9"}'
    async with aiohttp.ClientSession(auto_decompress=False) as session, session.request(
        "PATCH", echo_proxy.make_url("/v1/threads/t_1/messages/m%2F1?b=2&a=1&a=%20"), data=body,
        headers={"Authorization": f"Bearer {RAW_KEY}", "OpenAI-Beta": "assistants=v2", "X-Custom": "kept",
                 "Connection": "keep-alive"},
    ) as response:
        got = await response.read()
    [seen] = echo_upstream.seen
    assert seen["method"] == "PATCH"
    assert seen["raw_path"] == "/v1/threads/t_1/messages/m%2F1?b=2&a=1&a=%20"
    assert seen["body"] == body and got == body
    assert seen["headers"]["Authorization"] == f"Bearer {RAW_KEY}"
    assert seen["headers"]["X-Custom"] == "kept" and seen["headers"]["OpenAI-Beta"] == "assistants=v2"
    assert seen["headers"]["Host"] == f"127.0.0.1:{echo_upstream.port}"
    assert response.status == 201 and response.headers["X-Upstream"] == "yes"
    assert response.headers.getall("Set-Cookie") == ["a=1", "b=2"]


async def test_aiohttp_adds_no_headers_of_its_own(echo_proxy, echo_upstream):
    async with aiohttp.ClientSession(skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding")) as session, \
            session.get(echo_proxy.make_url("/v1/models")) as response:
        await response.read()
    headers = echo_upstream.seen[0]["headers"]
    assert "Accept-Encoding" not in headers and "User-Agent" not in headers and "Accept" not in headers


async def test_unrecorded_routes_stream_large_bodies_without_the_limit(echo_proxy, echo_upstream):
    upload = bytes(range(256)) * 4096  # 1 MiB, over the 4 KiB recorded-route limit
    async with aiohttp.ClientSession() as session, session.post(
        echo_proxy.make_url("/v1/files"), data=upload,
    ) as response:
        got = await response.read()
    assert response.status == 201 and sha256(got) == sha256(upload)
    assert echo_upstream.seen[0]["body"] == upload


async def test_gzip_stays_compressed_on_the_wire_and_is_recorded_decoded(fake, client, proxy, recorded):
    fake.fault(Fault(path="/threads/runs", gzip=True))
    async with aiohttp.ClientSession(auto_decompress=False) as session, session.post(
        proxy.make_url("/v1/threads/runs"), json={"assistant_id": "asst_1", "stream": True},
        headers={"Authorization": f"Bearer {RAW_KEY}", "OpenAI-Beta": "assistants=v2",
                 "Accept-Encoding": "gzip"},
    ) as response:
        wire = await response.read()
    [sent] = fake.responses
    assert response.headers["Content-Encoding"] == "gzip"
    assert wire == sent.body
    q = await recorded()
    assert q("select event from events order by seq desc limit 1") == [("done",)]
    assert q("select count(*) from events") == [(len(gzip.decompress(wire).split(b"\n\n")) - 1,)]
    assert q("select status from runs") == [("completed",)]


async def test_the_proxy_port_never_serves_admin_paths(fake, proxy):
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {RAW_KEY}"}) as session:
        for path in ("/healthz", "/admin/sql", "/metrics"):
            async with session.get(proxy.make_url(path)) as response:
                assert response.status == 404
                assert (await response.json())["error"]["message"].startswith("Invalid URL")
    assert [r.path for r in fake.requests] == ["/healthz", "/admin/sql", "/metrics"]


async def test_parts_are_reachable_for_tests(proxy):
    assert proxy.app[PARTS].writer.healthy


# -- retries: a request goes upstream twice only when the upstream cannot have seen it ------------------


def drops_reused(answered: dict[int, int]) -> Handler:
    """An upstream that answers the first request on each connection, then reads the next one and
    closes without a byte of answer (a keep-alive timeout racing runtap's write)."""

    async def handler(seen: Seen, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        answered[seen.conn] = answered.get(seen.conn, 0) + 1
        if answered[seen.conn] > 1:
            return False
        return await echo(seen, reader, writer)

    return handler


@pytest.mark.parametrize("method", [b"GET", b"HEAD"])
async def test_an_idempotent_request_on_a_connection_the_upstream_dropped_is_retried_on_a_fresh_one(
        scripted, relay_proxy, raw_client, method: bytes):
    upstream = await scripted(drops_reused({}))
    proxy = await relay_proxy(upstream.url)
    c: RawClient = await raw_client(proxy.port)
    await c.send(get(b"/v1/models?first"))
    assert (await c.response()).header(b"x-upstream-conn") == b"0"
    await c.send(b"%s /v1/models?second HTTP/1.1\r\nHost: r\r\n\r\n" % method)
    response = await c.response(method)
    assert response.status == 200 and response.header(b"x-upstream-conn") == b"1"
    assert [(s.conn, s.target) for s in upstream.requests] == [
        (0, b"/v1/models?first"), (0, b"/v1/models?second"), (1, b"/v1/models?second")]
    assert await recorded_rows(proxy, "select status, outcome from requests order by started_at") == [
        (200, "completed"), (200, "completed")]


async def test_a_get_is_retried_once_only(scripted, relay_proxy, raw_client):
    answered: dict[int, int] = {}

    async def handler(seen: Seen, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        answered[seen.conn] = answered.get(seen.conn, 0) + 1
        if seen.conn > 0 or answered[seen.conn] > 1:
            return False  # every later request dropped unanswered, on a fresh connection too
        return await echo(seen, reader, writer)

    upstream = await scripted(handler)
    proxy = await relay_proxy(upstream.url)
    c: RawClient = await raw_client(proxy.port)
    await c.send(get(b"/v1/models?first"))
    assert (await c.response()).status == 200
    await c.send(get(b"/v1/models?second"))
    response = await c.response()
    assert response.status == 502 and b'"code":"upstream_unreachable"' in response.body
    assert [s.target for s in upstream.requests].count(b"/v1/models?second") == 2


@pytest.mark.parametrize("target", [b"/v1/files", b"/v1/threads"], ids=["streamed", "recorded"])
async def test_a_post_on_a_connection_the_upstream_dropped_is_never_sent_twice(scripted, relay_proxy, raw_client,
                                                                               target: bytes):
    upstream = await scripted(drops_reused({}))
    proxy = await relay_proxy(upstream.url)
    c: RawClient = await raw_client(proxy.port)
    await c.send(get(b"/v1/models"))
    assert (await c.response()).status == 200
    await c.send(post(target, b'{"n": 1}'))
    response = await c.response()
    assert response.status == 502 and b'"code":"upstream_unreachable"' in response.body
    assert [(s.conn, s.method, s.body) for s in upstream.requests] == [(0, b"GET", b""), (0, b"POST", b'{"n": 1}')]
    assert upstream.connections == 1
    assert await recorded_rows(proxy, "select method, status, outcome from requests order by started_at") == [
        ("GET", 200, "completed"), ("POST", 502, "upstream_error")]


async def test_a_connection_the_upstream_closed_while_idle_is_not_used(scripted, relay_proxy, raw_client):
    """The upstream closes after its response (no `Connection: close`): the pool sees it, or the
    retry covers the race; either way the next request, a POST too, goes on a fresh connection."""
    async def answer_then_close(seen: Seen, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        await echo(seen, reader, writer)
        return False

    upstream = await scripted(answer_then_close)
    proxy = await relay_proxy(upstream.url)
    c: RawClient = await raw_client(proxy.port)
    await c.send(get())
    assert (await c.response()).status == 200
    await until(lambda: upstream.closed_connections == 1, what="the upstream closed its side")
    await until(lambda: proxy.app[PARTS].pool.idle == 0, what="the pool dropped it")  # type: ignore[union-attr]
    await c.send(post(b"/v1/files", b"body"))
    response = await c.response()
    assert response.status == 200 and response.body == b"body" and response.header(b"x-upstream-conn") == b"1"
    assert [(s.conn, s.method) for s in upstream.requests] == [(0, b"GET"), (1, b"POST")]


# -- what the relay adds to a request ----------------------------------------------------------------------


async def test_framing_upstream_is_the_relays_own(scripted, relay_proxy, raw_client):
    """A GET carries no framing; a POST without a body gets `Content-Length: 0`; the client's own
    framing headers do not cross twice."""
    upstream = await scripted(echo)
    proxy = await relay_proxy(upstream.url)
    c: RawClient = await raw_client(proxy.port)
    await c.send(get(b"/v1/models"), b"POST /v1/files HTTP/1.1\r\nHost: r\r\n\r\n", post(b"/v1/files", b"abc"))
    for _ in range(3):
        assert (await c.response()).status == 200
    framing = [[(n.lower(), v) for n, v in s.headers if n.lower() in (b"content-length", b"transfer-encoding")]
               for s in upstream.requests]
    assert framing == [[], [(b"content-length", b"0")], [(b"content-length", b"3")]]


async def test_an_unreachable_upstream_is_a_502_and_the_client_connection_goes_on(relay_proxy, raw_client):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    proxy = await relay_proxy(f"http://127.0.0.1:{port}")
    c: RawClient = await raw_client(proxy.port)
    for _ in range(2):
        await c.send(get())
        response = await c.response()
        assert response.status == 502 and b'"code":"upstream_unreachable"' in response.body
        assert response.header(b"connection") is None
    assert await recorded_rows(proxy, "select status, outcome from requests") == [
        (502, "upstream_error"), (502, "upstream_error")]
