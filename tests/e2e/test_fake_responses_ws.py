"""The Responses WebSocket mode (``client.responses.connect()``) against the fake.

The SDK needs the ``websockets`` package (``openai[realtime]``) for it; without it the SDK test
is skipped and the raw-socket test still pins the wire format.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import ClientSession, WSMsgType
from aiohttp.test_utils import TestServer
from openai import AsyncOpenAI

from proxy.testing.fake_upstream import FakeUpstream
from proxy.testing.faults import Fault
from proxy.testing.responses_scripts import ResponseScript


@pytest.fixture
def fake() -> FakeUpstream:
    return FakeUpstream(seed=3)


@pytest.fixture
async def server(fake: FakeUpstream, aiohttp_server: Any) -> TestServer:
    return await aiohttp_server(fake.app)


@pytest.fixture
async def http(server: TestServer) -> AsyncIterator[ClientSession]:
    async with ClientSession(str(server.make_url(""))) as s:
        yield s


async def until_terminal(ws: Any) -> list[dict[str, Any]]:
    out = []
    async for msg in ws:
        assert msg.type == WSMsgType.TEXT
        out.append(json.loads(msg.data))
        if out[-1]["type"] in ("response.completed", "response.failed", "response.incomplete", "error"):
            return out
    raise AssertionError("socket closed before a terminal event")


async def test_raw_socket_frames_are_the_sse_data(fake: FakeUpstream, http: ClientSession) -> None:
    fake.enqueue_response(ResponseScript.function_call("get_weather", {"city": "Oslo"}))
    fake.enqueue_response(ResponseScript.text("Cold."))
    async with http.ws_connect("/v1/responses", headers={"Authorization": "Bearer sk-x"}) as ws:
        await ws.send_str(json.dumps({"type": "response.create", "model": "gpt-4o", "input": "Oslo?",
                                      "stream_id": "lane-1"}))
        first = await until_terminal(ws)
        assert [e["sequence_number"] for e in first] == list(range(len(first)))
        assert all(e["stream_id"] == "lane-1" for e in first) and first[0]["type"] == "response.created"
        call = first[-1]["response"]["output"][0]
        await ws.send_str(json.dumps({"type": "response.create", "model": "gpt-4o", "input": "x",
                                      "previous_response_id": "resp_missing"}))
        (error,) = await until_terminal(ws)
        assert error == {"type": "error", "status": 400, "error": {
            "message": "Previous response with id 'resp_missing' not found.", "type": "invalid_request_error",
            "param": "previous_response_id", "code": "previous_response_not_found"}}
        await ws.send_str(json.dumps({"type": "response.create", "model": "gpt-4o",
                                      "previous_response_id": first[-1]["response"]["id"],
                                      "input": [{"type": "function_call_output", "call_id": call["call_id"],
                                                 "output": "-3C"}]}))
        second = await until_terminal(ws)
    assert second[-1]["response"]["output"][0]["content"][0]["text"] == "Cold."
    sent = fake.responses[-1]
    assert sent.status == 101 and sent.headers["x-request-id"].startswith("req_")
    assert sent.writes[0] == json.dumps(first[0], separators=(",", ":"), ensure_ascii=False).encode()
    # the response is stored like an HTTP one: retrievable, chainable
    async with http.get(f"/v1/responses/{second[-1]['response']['id']}", headers={"Authorization": "Bearer x"}) as r:
        assert (await r.json())["status"] == "completed"


async def test_socket_faults(fake: FakeUpstream, http: ClientSession) -> None:
    fake.fault(Fault(path="/responses", clean_eof_after_events=3))
    async with http.ws_connect("/v1/responses", headers={"Authorization": "Bearer sk-x"}) as ws:
        await ws.send_str(json.dumps({"type": "response.create", "model": "gpt-4o", "input": "x"}))
        got = [json.loads(m.data) async for m in ws if m.type == WSMsgType.TEXT]
    assert len(got) == 3 and ws.close_code == 1000
    rid = got[0]["response"]["id"]
    assert fake.response(rid)["status"] == "completed"  # finished server-side after the close
    fake.fault(Fault(path="/responses", status=401))
    async with http.get("/v1/responses", headers={"Authorization": "Bearer x", "Upgrade": "websocket",
                                                 "Connection": "Upgrade"}) as r:
        assert r.status == 401  # the handshake is refused with an HTTP error
    async with http.get("/v1/responses", headers={"Authorization": "Bearer x"}) as r:
        assert r.status == 404  # no upgrade: not a route


async def test_sdk_connect(fake: FakeUpstream, server: TestServer) -> None:
    pytest.importorskip("websockets")
    fake.enqueue_response(ResponseScript.text("Hello over a socket."))
    client = AsyncOpenAI(base_url=str(server.make_url("/v1")), api_key="sk-test-abc", max_retries=0)
    async with client, client.responses.connect() as conn:
        await conn.response.create(model="gpt-4o", input="hi")
        events = []
        async for event in conn:
            events.append(event)
            if event.type == "response.completed":
                break
    seen = fake.requests[-1]
    assert seen.method == "GET" and seen.path == "/v1/responses"
    assert seen.headers["Upgrade"].lower() == "websocket" and seen.headers["Authorization"] == "Bearer sk-test-abc"
    assert events[0].type == "response.created" and events[-1].response.output_text == "Hello over a socket."  # type: ignore[union-attr]
    assert [e.sequence_number for e in events] == list(range(len(events)))  # type: ignore[union-attr]
