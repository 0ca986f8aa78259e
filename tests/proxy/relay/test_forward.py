"""The relay itself, against small purpose-built upstreams: what crosses, byte for byte."""

from __future__ import annotations

import gzip

import aiohttp
import pytest
from aiohttp import web

from proxy.app import PARTS, make_app
from proxy.config import Settings
from proxy.testing.faults import Fault
from tests.conftest import RAW_KEY, sha256


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
