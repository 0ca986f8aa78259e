"""relay/runner.py: the relay core on aiohttp's runner, and its shutdown steps.

Pinned: `Connections.none_open` follows the open connections; on shutdown an idle connection is
closed at once and a busy one after its response (the client gets it whole, with
`Connection: close`); `shutdown(timeout)` waits for the connections, but no longer than `timeout`;
`RelayRunner` runs make_app's start-up and cleanup around the core. The process under SIGTERM
(run_relay_app) is tests/faults/test_process.py's and tests/e2e/test_serve_process.py's.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import duckdb
from aiohttp import web

from proxy.app import PARTS, make_app
from proxy.config import Settings
from proxy.relay.runner import Connections, RelayRunner
from tests.proxy.relay.conftest import RawClient, Seen, get, relay_server, settle, until


class _Conn:
    """Stands in for a ClientConnection: Connections only keeps and counts them."""


def test_none_open_follows_the_open_connections():
    async def run() -> None:
        conns = Connections()
        assert conns.none_open.is_set()
        a, b = _Conn(), _Conn()
        conns.add(a)  # type: ignore[arg-type]
        conns.add(b)  # type: ignore[arg-type]
        assert not conns.none_open.is_set()
        conns.discard(a)  # type: ignore[arg-type]
        assert not conns.none_open.is_set()
        conns.discard(b)  # type: ignore[arg-type]
        assert conns.none_open.is_set() and not conns

    asyncio.run(run())


def held(release: asyncio.Event):
    """Answers once `release` is set: a response in progress while the test shuts down."""

    async def handler(_seen: Seen, _reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n")
        await writer.drain()
        await release.wait()
        writer.write(b"\r\nwhole")
        return True

    return handler


async def test_pre_shutdown_closes_idle_connections_now_and_busy_ones_after_their_response(
        scripted, relay_proxy, raw_client):
    release = asyncio.Event()
    upstream = await scripted(held(release))
    proxy = await relay_proxy(upstream.url)
    idle: RawClient = await raw_client(proxy.port)
    busy: RawClient = await raw_client(proxy.port)
    await busy.send(get())
    await until(lambda: len(upstream.requests) == 1, what="the request upstream")
    server = relay_server(proxy)
    await until(lambda: len(server.connections) == 2, what="both connections accepted")
    server.pre_shutdown()
    assert await idle.closed()
    release.set()
    response = await busy.response()
    assert response.status == 200 and response.body == b"whole"
    assert response.header(b"connection") == b"close"
    assert await busy.closed()
    await until(lambda: server.connections.none_open.is_set(), what="no connection open")


async def test_shutdown_waits_for_the_connections_but_no_longer_than_its_timeout(scripted, relay_proxy,
                                                                                raw_client):
    release = asyncio.Event()
    upstream = await scripted(held(release))
    proxy = await relay_proxy(upstream.url)
    busy: RawClient = await raw_client(proxy.port)
    await busy.send(get())
    await until(lambda: len(upstream.requests) == 1, what="the request upstream")
    server = relay_server(proxy)
    server.pre_shutdown()
    async with asyncio.timeout(10):
        await server.shutdown(0.2)  # the response is still held: its timeout ends the wait
    assert not server.connections.none_open.is_set()
    waiting = asyncio.create_task(server.shutdown(10))
    await settle()
    assert not waiting.done()
    release.set()
    assert (await busy.response()).body == b"whole"
    async with asyncio.timeout(10):
        await waiting  # returns as soon as the last connection closed
    assert server.connections.none_open.is_set()


async def test_the_runner_runs_the_apps_start_up_and_cleanup_around_the_core(scripted, tmp_path: Path):
    upstream = await scripted()
    settings = Settings.model_validate({"server": {"upstream": upstream.url},
                                        "recorder": {"db": str(tmp_path / "runner.duckdb")}})
    app = make_app(settings)
    runner = RelayRunner(app)
    await runner.setup()
    parts = app[PARTS]
    assert parts.forwarder is not None and parts.pool is not None  # the upstream pool started with the app
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    c = await RawClient.open(port)
    try:
        await c.send(get(b"/v1/models"))
        response = await c.response()
        assert response.status == 200 and response.header(b"x-upstream-conn") == b"0"
    finally:
        await c.close()
    await runner.cleanup()
    # The cleanup contexts ran: the pool closed its idle connection, the writer committed and closed.
    await until(lambda: upstream.closed_connections == 1, what="the idle upstream connection closed")
    with duckdb.connect(str(tmp_path / "runner.duckdb"), read_only=True) as db:
        assert db.execute("select path, status from requests").fetchall() == [("/v1/models", 200)]
