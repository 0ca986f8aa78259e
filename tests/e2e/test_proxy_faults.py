"""What the client sees and what is recorded when the upstream, the client or the body misbehave."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import aiohttp
import httpx2
import openai
import pytest

from proxy.testing.faults import Fault
from proxy.testing.scripts import Script
from tests.conftest import RAW_KEY


async def wait_for(check, deadline_s: float = 10.0):
    """Poll `check()` (async, returns a truthy value when done) until a deadline; no fixed sleeps."""
    deadline = time.monotonic() + deadline_s
    while True:
        result = await check()
        if result or time.monotonic() > deadline:
            return result
        await asyncio.sleep(0.02)


async def test_client_disconnect_mid_stream_still_records_the_run(fake, client, recorded):
    fake.enqueue(Script.text("word " * 40, chunks=40))
    fake.fault(Fault(path="/threads/runs", drip_delay_s=0.01))
    async with client.beta.threads.with_streaming_response.create_and_run(
        assistant_id="asst_abc", stream=True,
    ) as response:
        async for _ in response.iter_bytes():
            break  # the client walks away after the first chunk

    async def finished():
        q = await recorded()
        rows = q("select outcome from requests where outcome is not null")
        return rows and q

    q = await wait_for(finished)
    assert q("select outcome, error from requests") == [("client_gone", None)]
    [(status, total)] = q("select status, total_tokens from runs")
    assert status == "completed" and total is not None
    assert q("select event from events order by seq desc limit 1") == [("done",)]


async def test_upstream_reset_mid_stream_makes_the_sdk_raise_and_is_recorded_truncated(fake, client, recorded):
    fake.enqueue(Script.text("a fairly long answer " * 10))
    fake.fault(Fault(path="/threads/runs", reset_after_bytes=3000))
    with pytest.raises((openai.APIConnectionError, httpx2.RemoteProtocolError, httpx2.ReadError)):
        async with client.beta.threads.create_and_run_stream(assistant_id="asst_abc") as stream:
            await stream.until_done()
    q = await recorded()
    [(outcome, error, response_bytes)] = q("select outcome, error, response_bytes from requests")
    assert outcome == "truncated" and error
    assert response_bytes == 3000
    [(status,)] = q("select status from runs")
    assert status in ("queued", "in_progress")
    assert q("select count(*) from events where event = 'done'") == [(0,)]


async def test_clean_eof_before_done_is_relayed_and_recorded_truncated(fake, client, recorded):
    fake.fault(Fault(path="/threads/runs", clean_eof_after_events=3))
    async with client.beta.threads.with_streaming_response.create_and_run(
        assistant_id="asst_abc", stream=True,
    ) as response:
        body = b"".join([chunk async for chunk in response.iter_bytes()])
    assert body == b"".join(fake.responses[0].writes)
    q = await recorded()
    assert q("select outcome, error from requests") == [("truncated", "stream ended before [DONE]")]


async def test_upstream_unreachable_is_a_502_in_the_openai_shape(tmp_path, aiohttp_server, unused_tcp_port):
    from proxy.app import PARTS, make_app
    from proxy.config import Settings

    settings = Settings.model_validate({"server": {"upstream": f"http://127.0.0.1:{unused_tcp_port}"},
                                        "recorder": {"db": str(tmp_path / "r.duckdb")}})
    server = await aiohttp_server(make_app(settings))
    async with openai.AsyncOpenAI(base_url=str(server.make_url("/v1")), api_key=RAW_KEY, max_retries=0) as c:
        with pytest.raises(openai.APIStatusError) as raised:
            await c.beta.threads.create_and_run(assistant_id="asst_abc")
    assert raised.value.status_code == 502
    assert raised.value.body["code"] == "upstream_unreachable"
    assert raised.value.body["type"] == "upstream_error"
    parts = server.app[PARTS]
    await parts.writer.flush()
    assert parts.writer.cursor().execute("select status, outcome from requests").fetchall() == [
        (502, "upstream_error")]


async def test_upstream_silent_before_headers_is_a_504(tmp_path, aiohttp_server, upstream, fake):
    from proxy.app import PARTS, make_app
    from proxy.config import Settings

    settings = Settings.model_validate({"server": {"upstream": str(upstream.make_url("")).rstrip("/")},
                                        "timeouts": {"read_s": 0.2},
                                        "recorder": {"db": str(tmp_path / "r.duckdb")}})
    fake.fault(Fault(stall_before_s=2))
    server = await aiohttp_server(make_app(settings))
    async with aiohttp.ClientSession() as session, session.post(
        server.make_url("/v1/threads/runs"), json={"assistant_id": "a"},
        headers={"Authorization": f"Bearer {RAW_KEY}"},
    ) as response:
        body = await response.json()
    assert response.status == 504
    assert body == {"error": {"message": "the upstream sent no response within 0.2 s", "type": "upstream_error",
                              "param": None, "code": "upstream_timeout"}}
    parts = server.app[PARTS]
    await parts.writer.flush()
    assert parts.writer.cursor().execute("select status, outcome from requests").fetchall() == [
        (504, "upstream_error")]


async def test_oversized_body_on_a_recorded_route_is_a_413(tmp_path, aiohttp_server, upstream, fake):
    from proxy.app import PARTS, make_app
    from proxy.config import Settings

    settings = Settings.model_validate({"server": {"upstream": str(upstream.make_url("")).rstrip("/"),
                                                   "max_recorded_body_bytes": 1000},
                                        "recorder": {"db": str(tmp_path / "r.duckdb")}})
    server = await aiohttp_server(make_app(settings))
    async with openai.AsyncOpenAI(base_url=str(server.make_url("/v1")), api_key=RAW_KEY, max_retries=0) as c:
        with pytest.raises(openai.APIStatusError) as raised:
            await c.beta.threads.create_and_run(assistant_id="asst_abc", instructions="x" * 2000)
    assert raised.value.status_code == 413 and raised.value.body["code"] == "request_too_large"
    assert fake.requests == []
    parts = server.app[PARTS]
    await parts.writer.flush()
    assert parts.writer.cursor().execute("select status, outcome from requests").fetchall() == [(413, "rejected")]


async def test_upstream_errors_pass_through_untouched(fake, client, recorded):
    fake.fault(Fault(status=429, retry_after="7", headers={"x-ratelimit-remaining-requests": "0"}))
    with pytest.raises(openai.RateLimitError) as raised:
        await client.beta.threads.create_and_run(assistant_id="asst_abc", stream=True)
    assert raised.value.response.headers["retry-after"] == "7"
    assert raised.value.body["code"] == "rate_limit_exceeded"
    q = await recorded()
    [(status, outcome, body)] = q("select status, outcome, response_body from requests")
    assert (status, outcome) == (429, "completed")
    assert body == fake.responses[0].body.decode()


async def test_the_raw_key_is_never_written(fake, client, parts, recorded, caplog, settings):
    caplog.set_level(logging.DEBUG)
    fake.enqueue(Script.tool_then_text())
    fake.fault(Fault(path="/submit_tool_outputs", status=500))
    run = await client.beta.threads.create_and_run_poll(assistant_id="asst_abc", poll_interval_ms=1)
    with pytest.raises(openai.InternalServerError):
        await client.beta.threads.runs.submit_tool_outputs(
            thread_id=run.thread_id, run_id=run.id, tool_outputs=[{"tool_call_id": "call_x", "output": "1"}])
    await recorded()
    await asyncio.to_thread(parts.writer.close)
    data = await asyncio.to_thread(Path(settings.recorder.db).read_bytes)
    assert RAW_KEY.encode() not in data and RAW_KEY[8:].encode() not in data
    assert RAW_KEY not in caplog.text
