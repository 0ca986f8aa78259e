"""Shared fixtures: the fake upstream, the proxy in front of it, the real openai SDK, the recording.

The fake upstream is the only fake (proxy/testing/). The proxy is the real app on a real port;
the SDK is the real `openai` package; the recording is a real DuckDB file in tmp_path.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import duckdb
import pytest
from openai import AsyncAzureOpenAI, AsyncOpenAI

from proxy.app import PARTS, Parts, make_app
from proxy.config import Settings
from proxy.keys import fingerprint
from proxy.relay.runner import RelayTestServer
from proxy.testing.fake_upstream import FakeUpstream

RAW_KEY = "sk-test-" + "k3y" * 12
"""A key shaped like a real one, so a leak would be found by searching for it."""
KEY_ID = fingerprint(RAW_KEY)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def fake() -> FakeUpstream:
    return FakeUpstream(seed=7)


@pytest.fixture
async def upstream(aiohttp_server, fake: FakeUpstream):
    return await aiohttp_server(fake.app)


@pytest.fixture
def settings(tmp_path, upstream) -> Settings:
    return Settings.model_validate({
        "server": {"upstream": str(upstream.make_url("")).rstrip("/")},
        "recorder": {"db": str(tmp_path / "runtap.duckdb"), "batch_interval_ms": 5},
    })


@pytest.fixture
async def serve_proxy() -> AsyncIterator[Callable[..., Any]]:
    """`await serve_proxy(make_app(settings))`: the app's proxy port served by the relay core on an
    ephemeral port (aiohttp's TestServer API: `make_url`, `app`, `port`), closed after the test."""
    servers: list[RelayTestServer] = []

    async def start(app: Any, **kwargs: Any) -> RelayTestServer:
        server = RelayTestServer(app, **kwargs)
        await server.start_server()
        servers.append(server)
        return server

    yield start
    for server in reversed(servers):
        await server.close()


@pytest.fixture
async def proxy(serve_proxy, settings: Settings):
    return await serve_proxy(make_app(settings))


@pytest.fixture
def parts(proxy) -> Parts:
    return proxy.app[PARTS]


@pytest.fixture
async def client(proxy) -> AsyncIterator[AsyncOpenAI]:
    async with AsyncOpenAI(base_url=str(proxy.make_url("/v1")), api_key=RAW_KEY, max_retries=0) as c:
        yield c


@pytest.fixture
async def azure_client(proxy) -> AsyncIterator[AsyncAzureOpenAI]:
    async with AsyncAzureOpenAI(azure_endpoint=str(proxy.make_url("")), api_key=RAW_KEY,
                                api_version="2024-05-01-preview", max_retries=0) as c:
        yield c


Query = Callable[..., list[tuple[Any, ...]]]


@pytest.fixture
def recorded(parts: Parts) -> Callable[[], Any]:
    """`await recorded()` flushes the writer and returns `q(sql, *params) -> rows`."""

    async def flushed() -> Query:
        await parts.flush()
        cursor: duckdb.DuckDBPyConnection = parts.writer.cursor()

        def q(sql: str, *params: Any) -> list[tuple[Any, ...]]:
            return cursor.execute(sql, list(params)).fetchall()

        return q

    return flushed


async def poll(check: Callable[[], Awaitable[Any]], what: str, timeout_s: float = 30.0) -> Any:
    """`await check()` until it returns something truthy, or fail after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(0.05)
    pytest.fail(f"timed out after {timeout_s} s waiting for {what} (last: {last!r})")
