"""The fault suite's rig: the real proxy app in front of the fake (or a raw, hand-scripted) upstream.

Every case ends with `await rig.finish()`, which is where the suite's standing promise is checked:
it waits for the exchanges to end, scrapes /metrics from the real admin listener, shuts the app
down as SIGTERM would, and then looks for the raw API key everywhere runtap writes: every file
under the test's directory (database, WAL, spill, archived spill, token), every row of every
table, the captured logs, the metrics text and every span. It returns a read-only view of the
recording, so the case can then assert what was recorded.

Timeouts are the proxy's own settings, set short per case, so the suite stays fast.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import duckdb
import pytest
from aiohttp import web
from openai import AsyncOpenAI
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from proxy import app as app_module
from proxy.app import PARTS, Parts, make_app
from proxy.config import Settings
from proxy.relay.runner import RelayRunner
from proxy.telemetry.tracing import make_tracing
from proxy.testing.fake_upstream import FakeUpstream
from tests.conftest import RAW_KEY
from tests.faults.proc import poll, serve  # noqa: F401  # fixtures and helpers for every case

ADMIN_TOKEN = "faults-admin-token-" + "t0k" * 8
SECRETS = (RAW_KEY, RAW_KEY[len("sk-test-"):], ADMIN_TOKEN)
"""What must never be written: the key (also without its prefix) and the admin token."""
TABLES = ("requests", "events", "runs", "run_steps", "tool_calls", "messages")


def assert_no_secret_in_files(root: Path) -> None:
    for path in root.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            for secret in SECRETS:
                assert secret.encode() not in data, f"{secret[:12]}... written to {path}"


def assert_no_secret_in_db(db: Path) -> None:
    """Row by row as text: DuckDB compresses strings on disk, so a byte search of the file alone
    could miss a stored key."""
    con = duckdb.connect(str(db), read_only=True)
    try:
        for table in TABLES:
            for secret in SECRETS:
                [(n,)] = con.execute(f'select count(*) from "{table}" t where t::varchar like ?',
                                     [f"%{secret}%"]).fetchall()
                assert n == 0, f"{secret[:12]}... in {table}"
    finally:
        con.close()


def assert_no_secret_in_text(text: str, where: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"{secret[:12]}... in {where}"


@dataclass
class Recording:
    """The recording of a stopped proxy, read the way a user would (a read-only connection)."""

    db: Path
    metrics: str

    def q(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        con = duckdb.connect(str(self.db), read_only=True)
        try:
            return con.execute(sql, list(params)).fetchall()
        finally:
            con.close()

    def one(self, sql: str, *params: Any) -> tuple[Any, ...]:
        [row] = self.q(sql, *params)
        return row


@dataclass
class Rig:
    url_of: str
    settings: Settings
    runner: web.AppRunner
    parts: Parts
    url: str
    admin_url: str
    spans: InMemorySpanExporter
    caplog: pytest.LogCaptureFixture
    tmp: Path
    fake: FakeUpstream | None = None
    stopped: bool = False
    clients: list[AsyncOpenAI] = field(default_factory=list)

    @property
    def db(self) -> Path:
        return Path(self.settings.recorder.db)

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def sdk(self, **kwargs: Any) -> AsyncOpenAI:
        client = AsyncOpenAI(base_url=self.url + "/v1", api_key=RAW_KEY, max_retries=0, **kwargs)
        self.clients.append(client)
        return client

    async def metrics_text(self) -> str:
        async with aiohttp.ClientSession() as session, session.get(self.admin_url + "/metrics") as r:
            assert r.status == 200
            return await r.text()

    async def finish(self, exchanges_timeout_s: float = 20.0) -> Recording:
        """Wait for every exchange, stop the app, check that no secret was written anywhere."""
        await self.parts.flush(exchanges_timeout_s)
        assert not self.parts.inflight, "an exchange is still running"
        metrics = await self.metrics_text()
        await self.stop()
        assert_no_secret_in_files(self.tmp)
        assert_no_secret_in_db(self.db)
        assert_no_secret_in_text(self.caplog.text, "the logs")
        assert_no_secret_in_text(metrics, "the metrics")
        for span in self.spans.get_finished_spans():
            assert_no_secret_in_text(span.to_json(), f"span {span.name}")
        # The key's fingerprint is what is recorded instead, wherever a request carried the key.
        return Recording(self.db, metrics)

    async def stop(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        for client in self.clients:
            await client.close()
        await self.runner.cleanup()


StartRig = Callable[..., Awaitable[Rig]]


@pytest.fixture
async def fake_server(aiohttp_server, fake: FakeUpstream):
    return await aiohttp_server(fake.app)


@pytest.fixture
async def start_rig(tmp_path: Path, unused_tcp_port_factory, caplog, monkeypatch) -> AsyncIterator[StartRig]:
    """`await start_rig(upstream=URL, fake=FakeUpstream, server={...}, timeouts={...}, recorder={...})`."""
    caplog.set_level(logging.DEBUG)
    spans = InMemorySpanExporter()
    # Spans are exported as they end, into memory, so the leak check sees every one of them.
    monkeypatch.setattr(app_module, "make_tracing", functools.partial(make_tracing, exporter=spans, batch=False))
    rigs: list[Rig] = []

    async def start(*, upstream: str, fake: FakeUpstream | None = None, server: dict[str, Any] | None = None,
                    timeouts: dict[str, Any] | None = None, recorder: dict[str, Any] | None = None) -> Rig:
        admin_port = unused_tcp_port_factory()
        settings = Settings.model_validate({
            "server": {"upstream": upstream, "admin_listen": f"127.0.0.1:{admin_port}", "shutdown_grace_s": 10,
                       **(server or {})},
            "timeouts": timeouts or {},
            "recorder": {"db": str(tmp_path / "runtap.duckdb"), "batch_interval_ms": 5, **(recorder or {})},
        })
        app = make_app(settings, admin_token=ADMIN_TOKEN)
        runner = RelayRunner(app, access_log=None, shutdown_timeout=10)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        rig = Rig(upstream, settings, runner, app[PARTS], f"http://127.0.0.1:{runner.addresses[0][1]}",
                  f"http://127.0.0.1:{admin_port}", spans, caplog, tmp_path, fake)
        rigs.append(rig)
        return rig

    yield start
    for rig in rigs:
        await rig.stop()


@pytest.fixture
async def rig(start_rig: StartRig, fake: FakeUpstream, fake_server) -> Rig:
    """The proxy in front of the fake upstream, with the suite's defaults."""
    return await start_rig(upstream=str(fake_server.make_url("")).rstrip("/"), fake=fake)


# -- raw sockets ---------------------------------------------------------------------------------


@dataclass
class RawUpstream:
    """An upstream that answers every request with scripted bytes, then closes (or resets).

    For what the fake cannot do because aiohttp will not produce it: a response cut inside its
    status line or headers, or a body with invalid UTF-8.
    """

    reply: bytes
    reset: bool = False
    """Abort (RST) after the reply instead of a clean close."""
    hold_s: float = 0.0
    """Keep the connection open this long after the reply before closing."""
    requests: list[bytes] = field(default_factory=list)
    server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), 0)
            body = await reader.readexactly(length) if length else b""
            self.requests.append(head + body)
            writer.write(self.reply)
            await writer.drain()
            if self.hold_s:
                await asyncio.sleep(self.hold_s)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            if self.reset:
                sock = writer.get_extra_info("socket")
                if sock is not None:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                writer.transport.abort()
            else:
                writer.close()


@pytest.fixture
async def raw_upstream() -> AsyncIterator[Callable[..., Awaitable[RawUpstream]]]:
    servers: list[asyncio.Server] = []

    async def start(reply: bytes, **kwargs: Any) -> RawUpstream:
        upstream = RawUpstream(reply, **kwargs)
        upstream.server = await asyncio.start_server(upstream._serve, "127.0.0.1", 0)
        servers.append(upstream.server)
        return upstream

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


async def raw_exchange(port: int, data: bytes, timeout_s: float = 5.0) -> bytes:
    """Send raw bytes to the proxy port; everything it answers until it closes (or the timeout)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        chunks: list[bytes] = []
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                chunk = await asyncio.wait_for(reader.read(65536), max(0.01, deadline - time.monotonic()))
            except TimeoutError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()

