"""relay/socket_tap.py through the real proxy, on raw WebSocket clients: what the SDK never does but
a socket may carry (pipelined creates, pings between fragments, other messages), and a tap failure."""

from __future__ import annotations

import json

from aiohttp import ClientSession, WSMsgType

from proxy.relay.socket_tap import SocketTap
from proxy.testing.responses_scripts import ResponseScript
from tests.conftest import RAW_KEY

HEADERS = {"Authorization": f"Bearer {RAW_KEY}"}
TERMINAL = ("response.completed", "response.failed", "response.incomplete", "error")


async def _until_terminal(ws) -> list[dict]:
    out: list[dict] = []
    while not out or out[-1]["type"] not in TERMINAL:
        msg = await ws.receive()
        assert msg.type == WSMsgType.TEXT, msg
        out.append(json.loads(msg.data))
    return out


async def test_pipelined_creates_a_ping_and_other_messages_keep_their_order(fake, proxy, recorded):
    fake.enqueue_response(ResponseScript.text("first"))
    fake.enqueue_response(ResponseScript.text("second"))
    async with ClientSession() as http, http.ws_connect(proxy.make_url("/v1/responses"), headers=HEADERS,
                                                        compress=15, autoping=False) as ws:
        await ws.ping(b"hello")
        assert (await ws.receive()).type == WSMsgType.PONG  # control frames cross both ways
        # Two creates in a row before any answer: answered in order, each recorded as its own request.
        await ws.send_str(json.dumps({"type": "response.create", "model": "gpt-4o", "input": "one"}))
        await ws.send_str(json.dumps({"type": "response.create", "model": "gpt-4o", "input": "two"}))
        first, second = await _until_terminal(ws), await _until_terminal(ws)
        await ws.send_str(json.dumps({"type": "session.update"}))  # not a create: relayed, no request of its own
        [refused] = await _until_terminal(ws)
    texts = [r[-1]["response"]["output"][0]["content"][0]["text"] for r in (first, second)]
    assert texts == ["first", "second"]
    assert refused["type"] == "error"
    q = await recorded()
    rows = q("select r.method, r.status, r.response_id, count(e.seq) from requests r left join events e"
             " using (request_id) group by all order by min(r.started_at)")
    r1, r2 = first[-1]["response"]["id"], second[-1]["response"]["id"]
    assert rows == [("GET", 101, None, 0), ("WS", 200, r1, len(first)), ("WS", 200, r2, len(second))]
    bodies = q("select request_body from requests where method = 'WS' order by started_at")
    assert [json.loads(b)["input"] for (b,) in bodies] == ["one", "two"]


async def test_a_tap_failure_costs_the_recording_never_the_socket(fake, proxy, recorded, monkeypatch):
    def broken(self, payload):
        raise RuntimeError("a bug in the socket tap")

    monkeypatch.setattr(SocketTap, "_server_message", broken)
    before = SocketTap.errors
    fake.enqueue_response(ResponseScript.text("unrecorded but relayed"))
    fake.enqueue_response(ResponseScript.text("still relayed"))
    async with ClientSession() as http, http.ws_connect(proxy.make_url("/v1/responses"), headers=HEADERS) as ws:
        await ws.send_str(json.dumps({"type": "response.create", "model": "gpt-4o", "input": "x"}))
        first = await _until_terminal(ws)
        await ws.send_str(json.dumps({"type": "response.create", "model": "gpt-4o", "input": "y"}))
        second = await _until_terminal(ws)
    assert first[-1]["type"] == second[-1]["type"] == "response.completed"
    assert SocketTap.errors == before + 1  # once: then the socket is relayed raw
    q = await recorded()
    assert q("select method, outcome from requests order by started_at") == [
        ("GET", "completed"), ("WS", "truncated")]  # the create it was recording when it failed
