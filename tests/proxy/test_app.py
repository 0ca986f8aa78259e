"""make_app's wiring: startup and cleanup in order, the writer flushed, in-flight exchanges awaited.

The app runs under a plain `web.AppRunner` so each test decides when cleanup happens, and what
aiohttp's own handler shutdown may wait for (`shutdown_timeout`), to see what make_app does itself.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from openai import AsyncOpenAI

from proxy.app import PARTS, TRACES_ENDPOINT_ENV, Parts, make_app
from proxy.config import Settings
from proxy.relay.runner import RelayRunner
from proxy.telemetry import tracing
from proxy.testing.faults import Fault
from proxy.testing.scripts import Script
from tests.conftest import KEY_ID, RAW_KEY
from tests.processes import connection_refused, query, recording_files

ROOT = Path(__file__).parents[2]


@dataclass
class Running:
    runner: web.AppRunner
    parts: Parts
    url: str
    db: Path
    stopped: bool = False

    async def stop(self) -> float:
        """Clean the app up (as SIGTERM would); returns how long that took."""
        started = time.monotonic()
        self.stopped = True
        await self.runner.cleanup()
        return time.monotonic() - started


@pytest.fixture
async def start(upstream, tmp_path):
    """`await start(server={...}, recorder={...})`: make_app in front of the fake, on an ephemeral port."""
    running: list[Running] = []

    async def start_app(*, server: dict[str, Any] | None = None, recorder: dict[str, Any] | None = None,
                        admin_token: str | None = None, shutdown_timeout: float = 60.0) -> Running:
        db = tmp_path / "app.duckdb"
        settings = Settings.model_validate({
            "server": {"upstream": str(upstream.make_url("")).rstrip("/"), **(server or {})},
            "recorder": {"db": str(db), "batch_interval_ms": 5, **(recorder or {})},
        })
        app = make_app(settings, admin_token=admin_token)
        runner = RelayRunner(app, access_log=None, shutdown_timeout=shutdown_timeout)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        started = Running(runner, app[PARTS], f"http://127.0.0.1:{runner.addresses[0][1]}", db)
        running.append(started)
        return started

    yield start_app
    for r in running:
        if not r.stopped:
            await r.stop()


def sdk(running: Running) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=running.url + "/v1", api_key=RAW_KEY, max_retries=0)


async def test_cleanup_flushes_rows_still_queued_and_closes_everything(fake, start):
    # A batch may wait 60 s for company: only cleanup can have written these rows in time.
    running = await start(recorder={"batch_interval_ms": 60_000})
    async with sdk(running) as client:
        await client.beta.threads.create(metadata={"team": "a"})
    cursor = running.parts.writer.cursor()
    try:
        assert cursor.execute("select count(*) from requests").fetchall() == [(0,)]  # still in the queue
    finally:
        cursor.close()

    elapsed = await running.stop()
    assert elapsed < 5
    writer = running.parts.writer
    assert (writer.rows_written_total, writer.spilled_rows_total, writer.lost_rows_total) == (2, 0, 0)
    assert not writer.healthy
    assert "runtap-writer" not in {t.name for t in threading.enumerate()}
    assert running.parts.session is not None and running.parts.session.closed
    assert recording_files(running.db) == {"app.duckdb"}  # checkpointed (no WAL), nothing spilled
    [sent] = fake.requests
    assert query(running.db, "select method, path, route, status, outcome, key_id, request_body from requests") == [
        ("POST", "/v1/threads", "POST /v1/threads", 200, "completed", KEY_ID, sent.body.decode())]


async def test_a_thread_created_with_a_json_call_is_recorded_with_its_id(start):
    # Contract §6 / schema: requests.thread_id is "the thread the exchange touched (from the path or the
    # response)"; for POST /v1/threads it can only come from the response.
    running = await start()
    async with sdk(running) as client:
        thread = await client.beta.threads.create()
    await running.stop()
    assert query(running.db, "select route, thread_id from requests") == [("POST /v1/threads", thread.id)]


async def _leave_after_first_chunk(running: Running) -> None:
    async with sdk(running) as client, client.beta.threads.with_streaming_response.create_and_run(
        assistant_id="asst_abc", stream=True,
    ) as response:
        async for _ in response.iter_bytes():
            break  # the client walks away; the exchange goes on so that the run is recorded


async def test_cleanup_waits_for_an_exchange_still_running(fake, start):
    fake.enqueue(Script.text("word " * 30, chunks=30, prompt_tokens=10, completion_tokens=30))
    fake.fault(Fault(path="/threads/runs", drip_delay_s=0.03))  # ~42 writes: over a second
    # aiohttp gives up on its handlers after 50 ms: the wait below is make_app's own.
    running = await start(server={"shutdown_grace_s": 10}, shutdown_timeout=0.05)
    await _leave_after_first_chunk(running)
    assert len(running.parts.inflight) == 1
    assert not fake.responses[0].complete

    elapsed = await running.stop()
    assert elapsed < 10
    assert running.parts.inflight == set()
    [sent] = fake.responses
    assert sent.complete
    assert query(running.db, "select outcome, error, event_count from requests") == [
        ("client_gone", None, len(sent.events))]
    assert query(running.db, "select status, total_tokens from runs") == [("completed", 40)]
    assert query(running.db, "select count(*) from events") == [(len(sent.events),)]
    assert query(running.db, "select event, data from events order by seq desc limit 1") == [("done", "[DONE]")]


async def test_cleanup_cancels_what_outlives_the_grace_period(fake, start, caplog):
    fake.enqueue(Script.text("word " * 30, chunks=30))
    fake.fault(Fault(path="/threads/runs", drip_delay_s=0.2))  # ~8 s of stream
    running = await start(server={"shutdown_grace_s": 0.3}, shutdown_timeout=0.05)
    await _leave_after_first_chunk(running)
    assert len(running.parts.inflight) == 1

    with caplog.at_level(logging.WARNING, logger="runtap"):
        elapsed = await running.stop()
    assert elapsed < 3
    assert running.parts.inflight == set()
    assert not fake.responses[0].complete
    assert "cancelled 1 exchanges still running after the" in caplog.text
    assert query(running.db, "select outcome, error from requests") == [
        ("truncated", "cancelled (shutdown) mid-response")]
    assert query(running.db, "select count(*) from events where event = 'done'") == [(0,)]


async def test_an_exchange_cancelled_before_the_upstream_answered_is_still_recorded(fake, start):
    fake.fault(Fault(path="/threads/runs", stall_before_s=5))  # no headers before the grace period ends
    running = await start(server={"shutdown_grace_s": 0.3}, shutdown_timeout=0.05)
    request = asyncio.ensure_future(_leave_after_first_chunk(running))
    for _ in range(500):  # until the exchange waits on the upstream
        if running.parts.inflight:
            break
        await asyncio.sleep(0.01)
    await running.stop()
    request.cancel()
    await asyncio.gather(request, return_exceptions=True)
    assert running.parts.inflight == set()
    assert query(running.db, "select outcome, error, status from requests") == [
        ("truncated", "cancelled (shutdown) before the upstream answered", None)]


async def test_the_admin_listener_starts_and_stops_with_the_app(start, unused_tcp_port):
    running = await start(server={"admin_listen": f"127.0.0.1:{unused_tcp_port}"}, admin_token="tok")
    admin = f"http://127.0.0.1:{unused_tcp_port}"
    async with aiohttp.ClientSession() as session:
        async with session.get(admin + "/readyz") as r:
            assert (r.status, await r.json()) == (200, {"status": "ready"})
        async with session.get(admin + "/admin/x") as r:
            assert (r.status, (await r.json())["error"]["code"]) == (401, "invalid_admin_token")
        async with session.get(admin + "/admin/x", headers={"Authorization": "Bearer tok"}) as r:
            assert r.status == 404
        # The proxy port forwards the same path to the upstream.
        async with session.get(running.url + "/readyz", headers={"Authorization": f"Bearer {RAW_KEY}"}) as r:
            assert (r.status, (await r.json())["error"]["message"]) == (404, "Invalid URL (GET /readyz)")
    await running.stop()
    assert await connection_refused(unused_tcp_port)


async def test_without_an_admin_token_there_is_no_admin_listener(start, unused_tcp_port):
    running = await start(server={"admin_listen": f"127.0.0.1:{unused_tcp_port}"})
    assert await connection_refused(unused_tcp_port)
    async with sdk(running) as client:
        await client.beta.threads.create()  # and the proxy serves regardless


def test_metrics_false_takes_the_metrics_observer_off_the_stream(tmp_path: Path) -> None:
    def observer_names(**telemetry: object) -> list[str]:
        settings = Settings.model_validate({"recorder": {"db": str(tmp_path / "r.duckdb")}, "telemetry": telemetry})
        return [o.name for o in make_app(settings)[PARTS].observers._observers]

    assert observer_names() == ["recorder", "metrics", "budgets"]
    assert observer_names(metrics=False) == ["recorder", "budgets"]


# Issue #3: the OpenTelemetry SDK and its OTLP exporter cost ~4 MB of RSS; without an endpoint
# make_app does not import them at all (a fresh interpreter, since this one has them loaded).
NO_TRACING = """
import sys
from proxy.app import PARTS, make_app
from proxy.config import Settings
app = make_app(Settings.model_validate({"recorder": {"db": sys.argv[1]}}))
heavy = ("proxy.telemetry.tracing", "opentelemetry.sdk", "opentelemetry.exporter")
loaded = sorted(m for m in sys.modules if m.startswith(heavy))
print(app[PARTS].tracing, loaded)
"""


def test_without_a_traces_endpoint_the_tracing_sdk_is_not_even_imported(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNTAP_", "OTEL_"))}
    result = subprocess.run([sys.executable, "-c", NO_TRACING, str(tmp_path / "r.duckdb")], cwd=ROOT, env=env,
                            capture_output=True, text=True, check=True, timeout=60)
    assert result.stdout.split() == ["None", "[]"]


@pytest.mark.parametrize("source", ["otlp_endpoint", *TRACES_ENDPOINT_ENV])
async def test_every_source_of_a_traces_endpoint_still_builds_tracing(tmp_path: Path, monkeypatch, source) -> None:
    for name in (tracing.ENV_TRACES_ENDPOINT, tracing.ENV_ENDPOINT, tracing.ENV_SDK_DISABLED):
        monkeypatch.delenv(name, raising=False)
    telemetry = {"otlp_endpoint": "http://127.0.0.1:4318"} if source == "otlp_endpoint" else {}
    if source != "otlp_endpoint":
        monkeypatch.setenv(source, "http://127.0.0.1:4318")
    settings = Settings.model_validate({"recorder": {"db": str(tmp_path / "r.duckdb")}, "telemetry": telemetry})
    built = make_app(settings)[PARTS].tracing
    assert built is not None
    await built.close()
    # The names make_tracing() checks before importing tracing are the ones tracing reads.
    assert {tracing.ENV_TRACES_ENDPOINT, tracing.ENV_ENDPOINT} == set(TRACES_ENDPOINT_ENV)
