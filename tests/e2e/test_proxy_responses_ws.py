"""The Responses WebSocket mode (`client.responses.connect()`) through the proxy: frames unchanged both
ways, each `response.create` recorded as its response's request and the answer as if it were SSE."""

from __future__ import annotations

import json
from typing import Any

import pytest
from aiohttp import ClientSession, WSMsgType
from openai import AsyncOpenAI

from proxy.app import PARTS, make_app
from proxy.testing.faults import Fault
from proxy.testing.responses_scripts import ResponseScript
from tests.conftest import KEY_ID, RAW_KEY, poll, sha256
from tests.e2e.test_budgets import budgets_settings, team_a
from tests.e2e.test_proxy_responses import WEATHER

pytest.importorskip("websockets")
TERMINAL = ("response.completed", "response.failed", "response.incomplete", "error")


async def _until_terminal(conn: Any) -> list[Any]:
    events = []
    async for event in conn:
        events.append(event)
        if event.type in TERMINAL:
            return events
    raise AssertionError("the socket closed before a terminal event")


async def test_a_tool_turn_over_a_socket_is_recorded_as_if_it_had_come_over_sse(fake, client, recorded):
    fake.enqueue_response(ResponseScript.function_call("get_weather", {"city": "Oslo"}, input_tokens=40))
    fake.enqueue_response(ResponseScript.text("Cold and clear.", input_tokens=70))
    async with client.responses.connect() as conn:
        await conn.response.create(model="gpt-4o", input="Oslo?", tools=[WEATHER])
        first = await _until_terminal(conn)
        call = first[-1].response.output[0]
        output = {"type": "function_call_output", "call_id": call.call_id, "output": "-3C"}
        await conn.response.create(model="gpt-4o", previous_response_id=first[-1].response.id, input=[output],
                                   tools=[WEATHER])
        second = await _until_terminal(conn)
    [socket] = fake.responses
    # Frames unchanged: every text frame the upstream sent reached the SDK, byte for byte.
    received = [e.model_dump_json(exclude_unset=True) for e in first + second]
    assert len(received) == len(socket.writes) and [json.loads(r) for r in received] == [
        json.loads(w) for w in socket.writes]
    q = await recorded()
    responses = q("select response_id, run_id, previous_response_id, status, input_tokens from responses"
                  " order by first_seen_at")
    r1, r2 = first[-1].response.id, second[-1].response.id
    assert responses == [(r1, r1, None, "completed", 40), (r2, r1, r1, "completed", 70)]
    assert q("select run_id, api, status, tool_rounds from runs") == [(r1, "responses", "completed", 1)]
    [(tool_output, requested, submitted)] = q("select output, requested_at, submitted_at from tool_calls")
    assert tool_output == "-3C" and requested <= submitted
    requests = q("select method, route, status, outcome, response_id, key_id, streamed from requests"
                 " order by started_at")
    assert requests == [("GET", "GET /v1/responses", 101, "completed", None, KEY_ID, False),
                        ("WS", "WS /v1/responses", 200, "completed", r1, KEY_ID, True),
                        ("WS", "WS /v1/responses", 200, "completed", r2, KEY_ID, True)]
    # Each create's message is its request body, exactly as the client framed it.
    bodies = [json.loads(b) for (b,) in q("select request_body from requests where method = 'WS' order by started_at")]
    assert [b["type"] for b in bodies] == ["response.create"] * 2 and bodies[1]["previous_response_id"] == r1
    # Every server frame is an event row: its data the frame's text, its sequence number and response.
    events = q("select e.data, e.event, e.sequence_number, e.response_id from events e join requests r"
               " using (request_id) order by r.started_at, e.seq")
    assert [e[0] for e in events] == [w.decode() for w in socket.writes]
    assert [e[1] for e in events] == [json.loads(w)["type"] for w in socket.writes]
    assert [e[2] for e in events] == [e.sequence_number for e in first + second]
    assert {e[3] for e in events} == {r1, r2}
    assert sha256(b"".join(w for w in socket.writes)) == sha256("".join(e[0] for e in events).encode())


async def test_a_create_the_server_refuses_ends_with_its_error_and_the_socket_goes_on(fake, client, recorded):
    fake.enqueue_response(ResponseScript.text("Fine."))
    async with client.responses.connect() as conn:
        await conn.response.create(model="gpt-4o", input="x", previous_response_id="resp_missing")
        [error] = await _until_terminal(conn)
        await conn.response.create(model="gpt-4o", input="again")
        answered = await _until_terminal(conn)
    assert error.type == "error" and answered[-1].type == "response.completed"
    q = await recorded()
    assert q("select status, outcome, response_id is null from requests where method = 'WS' order by started_at") == [
        (400, "completed", True), (200, "completed", False)]
    [(body,)] = q("select response_body from requests where status = 400")
    assert json.loads(body) == error.model_dump(exclude_unset=True)  # the error frame, as an HTTP error's body


async def test_a_socket_the_upstream_cuts_mid_response_leaves_it_truncated(fake, client, recorded):
    fake.enqueue_response(ResponseScript.text("one two three four five six seven eight"))
    fake.fault(Fault(path="/responses", reset_after_bytes=1500))
    with pytest.raises(Exception):  # noqa: B017  # the SDK raises its transport's own error
        async with client.responses.connect() as conn:
            await conn.response.create(model="gpt-4o", input="x")
            await _until_terminal(conn)
    q = await recorded()
    assert q("select outcome from requests where method = 'GET'") == [("truncated",)]
    [(outcome, status)] = q("select r.outcome, s.status from requests r join responses s using (response_id)")
    assert (outcome, status) == ("truncated", "truncated")


async def test_a_client_that_leaves_mid_response_is_gone_and_the_response_still_recorded(fake, client, recorded):
    fake.enqueue_response(ResponseScript.text("one two three four five six seven eight nine ten"))
    fake.fault(Fault(path="/responses", drip_delay_s=0.05))
    async with client.responses.connect() as conn:
        await conn.response.create(model="gpt-4o", input="x")
        async for event in conn:
            if event.type == "response.output_text.delta":
                break  # leaves the socket mid-response
    q = await recorded()
    assert q("select outcome from requests where method = 'GET'") == [("completed",)]  # closed with a close frame
    assert q("select outcome from requests where method = 'WS'") == [("client_gone",)]
    assert q("select status from responses") == [("completed",)]  # runtap read on to its end


# -- budgets ---------------------------------------------------------------------------------------
@pytest.fixture
def budgeted(tmp_path, upstream):
    return budgets_settings(tmp_path, upstream, default_reservation_tokens=256, keys=[team_a(tokens_per_day=300)])


async def test_a_create_the_budget_refuses_gets_the_servers_error_shape_and_the_socket_goes_on(
        serve_proxy, fake, budgeted):
    server = await serve_proxy(make_app(budgeted))
    fake.enqueue_response(ResponseScript.text("ok", input_tokens=20, output_tokens=10))
    fake.enqueue_response(ResponseScript.text("still ok", input_tokens=20, output_tokens=10))
    client = AsyncOpenAI(base_url=str(server.make_url("/v1")), api_key=RAW_KEY, max_retries=0)
    async with client, client.responses.connect() as conn:
        await conn.response.create(model="gpt-4o", input="first")  # 256 reserved of 300: fits
        assert (await _until_terminal(conn))[-1].type == "response.completed"  # spends 30
        await conn.response.create(model="gpt-4o", input="second", max_output_tokens=100)  # 356 of 270: no
        [refused] = await _until_terminal(conn)
        await conn.response.create(model="gpt-4o", input="third")  # 256 of 270: fits
        third = await _until_terminal(conn)
    assert refused.type == "error" and refused.status == 429  # type: ignore[union-attr]
    assert refused.error.code == "budget_exceeded"  # type: ignore[union-attr]
    assert third[-1].type == "response.completed"
    assert len(fake.responses_api.engine.records) == 2  # the refused create never reached the upstream
    parts = server.app[PARTS]
    await parts.flush()
    with parts.writer.cursor() as cur:
        rows = cur.execute("select method, status, outcome from requests order by started_at").fetchall()
        charges = cur.execute("select state, spent_tokens from budget_charges order by reserved_at").fetchall()
    assert rows == [("GET", 101, "completed"), ("WS", 200, "completed"), ("WS", 429, "rejected"),
                    ("WS", 200, "completed")]
    assert charges == [("settled", 30), ("settled", 30)]


async def test_a_compressed_socket_is_recorded_and_ends_after_a_refusal(serve_proxy, fake, budgeted):
    # permessage-deflate with context takeover: each client message depends on the ones before, so
    # a refused one cannot be left out; the socket ends (1008) after the error frame.
    server = await serve_proxy(make_app(budgeted))
    fake.enqueue_response(ResponseScript.text("compressed and recorded", input_tokens=20, output_tokens=10))
    headers = {"Authorization": f"Bearer {RAW_KEY}"}
    async with ClientSession() as http, http.ws_connect(server.make_url("/v1/responses"), headers=headers,
                                                        compress=15) as ws:
        assert ws.compress == 15  # deflate agreed
        await ws.send_str(json.dumps({"type": "response.create", "model": "gpt-4o", "input": "x"}))
        answered = []
        while not answered or answered[-1]["type"] not in TERMINAL:
            answered.append(json.loads((await ws.receive()).data))
        await ws.send_str(json.dumps({"type": "response.create", "model": "gpt-4o", "input": "y",
                                      "max_output_tokens": 500}))
        refused = json.loads((await ws.receive()).data)
        closing = await ws.receive()
    assert answered[-1]["type"] == "response.completed"
    assert (refused["type"], refused["status"], refused["error"]["type"]) == ("error", 429, "budget_exceeded")
    assert closing.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.CLOSING)
    parts = server.app[PARTS]
    await parts.flush()
    with parts.writer.cursor() as cur:
        data = [d for (d,) in cur.execute("select data from events order by seq").fetchall()]
    assert [json.loads(d) for d in data] == answered  # inflated from the compressed frames, exactly


# -- what no SDK sends, but a socket may carry (found by a review) ---------------------------------
@pytest.fixture
def roomy(tmp_path, upstream):
    return budgets_settings(tmp_path, upstream, default_reservation_tokens=256, keys=[team_a(tokens_per_day=100_000)])


async def _frames(ws, n_terminal):
    out = []
    while n_terminal:
        msg = json.loads((await ws.receive()).data)
        out.append(msg)
        if msg["type"] in TERMINAL:
            n_terminal -= 1
    return out


async def test_the_error_for_a_message_that_is_no_create_is_not_taken_for_the_next_creates(serve_proxy, fake,
                                                                                          roomy):
    server = await serve_proxy(make_app(roomy))
    fake.enqueue_response(ResponseScript.text("a long answer", input_tokens=5000, output_tokens=5000))
    headers = {"Authorization": f"Bearer {RAW_KEY}"}
    async with ClientSession() as http, http.ws_connect(server.make_url("/v1/responses"), headers=headers) as ws:
        # Not a create (the SDK's `response.steer`, or any event the server does not take), then a
        # create, without waiting: the server answers the first with an error frame, then streams
        # the create's response.
        await ws.send_str(json.dumps({"type": "response.steer", "previous_response_id": "resp_x", "input": "hi"}))
        await ws.send_str(json.dumps({"type": "response.create", "model": "gpt-4o", "input": "x"}))
        got = await _frames(ws, 2)
    assert got[0]["type"] == "error" and got[-1]["type"] == "response.completed"
    parts = server.app[PARTS]
    await parts.flush()
    with parts.writer.cursor() as cur:
        rows = cur.execute("select method, status, outcome, response_id from requests order by started_at").fetchall()
        charges = cur.execute("select state, spent_tokens from budget_charges").fetchall()
        responses = cur.execute("select response_id, status from responses").fetchall()
    # The create is recorded with its response and its 10000 tokens charged; the other message's
    # error is not taken for its refusal.
    assert [r[:3] for r in rows] == [("GET", 101, "completed"), ("WS", 200, "completed")]
    assert responses == [(rows[1][3], "completed")] and charges == [("settled", 10000)]


async def test_a_create_too_large_to_read_is_refused_never_relayed_unadmitted(serve_proxy, fake, tmp_path, upstream):
    from proxy.config import Settings
    settings = Settings.model_validate({
        "server": {"upstream": str(upstream.make_url("")).rstrip("/"), "max_recorded_body_bytes": 2000},
        "recorder": {"db": str(tmp_path / "runtap.duckdb"), "batch_interval_ms": 5},
        "budgets": {"default_reservation_tokens": 256, "keys": [team_a(tokens_per_day=300)]},
    })
    server = await serve_proxy(make_app(settings))
    fake.enqueue_response(ResponseScript.text("expensive", input_tokens=50_000, output_tokens=9000))
    headers = {"Authorization": f"Bearer {RAW_KEY}"}
    async with ClientSession() as http, http.ws_connect(server.make_url("/v1/responses"), headers=headers) as ws:
        # 10256 tokens estimated against a 300-token day: over HTTP this is a 413 (too large) or a 429.
        await ws.send_str(json.dumps({"type": "response.create", "model": "gpt-4o", "max_output_tokens": 10_000,
                                      "input": "pad " * 1000}))
        got = await _frames(ws, 1)
    parts = server.app[PARTS]
    await parts.flush()
    with parts.writer.cursor() as cur:
        rows = cur.execute("select method, status, outcome from requests order by started_at").fetchall()
    assert got[-1]["type"] == "error" and got[-1]["status"] == 413, "the upstream ran a create runtap could not admit"
    assert got[-1]["error"]["code"] == "request_too_large" and rows == [("GET", 101, "completed")]
    assert fake.responses_api.engine.records == {}


async def test_a_create_pipelined_behind_the_handshake_is_admitted_like_any(serve_proxy, fake, tmp_path,
                                                                                   upstream):
    import asyncio
    import base64
    import os

    from websockets.frames import Frame, Opcode
    settings = budgets_settings(tmp_path, upstream, default_reservation_tokens=256, keys=[team_a(tokens_per_day=300)])
    server = await serve_proxy(make_app(settings))
    fake.enqueue_response(ResponseScript.text("expensive", input_tokens=50_000, output_tokens=9000))
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    key = base64.b64encode(os.urandom(16)).decode()
    head = (f"GET /v1/responses HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nAuthorization: Bearer {RAW_KEY}\r\n\r\n")
    create = Frame(Opcode.TEXT, json.dumps({"type": "response.create", "model": "gpt-4o", "input": "x",
                                            "max_output_tokens": 10_000}).encode()).serialize(mask=True)
    writer.write(head.encode() + create)  # the create right behind the request head, in one write
    await writer.drain()
    data = b""
    while b"response.completed" not in data and b'"error"' not in data:
        chunk = await asyncio.wait_for(reader.read(65536), 5)
        if not chunk:
            break
        data += chunk
    writer.close()
    parts = server.app[PARTS]

    async def socket_ended() -> list:
        await parts.flush()
        with parts.writer.cursor() as cur:
            rows = cur.execute("select method, status, outcome from requests order by started_at").fetchall()
        return rows if rows and rows[0][2] is not None else []

    rows = await poll(socket_ended, "the socket's end recorded", timeout_s=10)
    with parts.writer.cursor() as cur:
        charges = cur.execute("select state, spent_tokens from budget_charges").fetchall()
    assert b"response.completed" not in data, "a 10256-token create ran on a 300-token budget, unrecorded"
    assert b'"status":429' in data and rows == [("GET", 101, "client_gone"), ("WS", 429, "rejected")]
    assert charges == []  # refused: nothing reserved
