"""relay/socket_tap.py through the real proxy, on raw WebSocket clients: what the SDK never does but
a socket may carry (pipelined creates, pings between fragments, other messages), and a tap failure."""

from __future__ import annotations

import asyncio
import json
import time

import orjson
from aiohttp import ClientSession, WSMsgType
from multidict import CIMultiDict
from websockets.extensions.permessage_deflate import PerMessageDeflate
from websockets.frames import Frame, Opcode

from proxy import errors
from proxy.apis import classify
from proxy.deferred_tap import DeferredTap, TapQueue
from proxy.exchange import Exchange, Outcome
from proxy.observers import Observer, Observers
from proxy.relay.socket_tap import SocketTap
from proxy.relay.tunnel import Tunnel
from proxy.runs import RunStore
from proxy.tap import Tap
from proxy.testing.responses_scripts import ResponseScript
from tests.conftest import RAW_KEY, poll

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


# -- the tap driven by hand: what the fake upstream never sends ------------------------------------
# (Found by a review; the forwarder is reduced to what the tap calls, the tap and observers are real.)
HANDSHAKE = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"


class Rec(Observer):
    name = "rec"

    def __init__(self) -> None:
        self.started: list[Exchange] = []
        self.finished: list[Exchange] = []
        self.events: list[tuple[str, object]] = []

    def exchange_started(self, ex):
        self.started.append(ex)

    def run_event(self, ex, event):
        self.events.append((ex.request_id, event))

    def exchange_finished(self, ex):
        self.finished.append(ex)

    def deltas(self, ex, deltas):
        self.events.append((ex.request_id, deltas))


class FakeForwarder:
    def __init__(self, admit=None, observers=None):
        self.tracker = RunStore()
        self.rec = Rec()
        self.observers = Observers([self.rec, *(observers or [])])
        self.pending_taps = TapQueue()
        self._admit = admit

    def admit(self, ex, headers):
        return None if self._admit is None else self._admit(ex, headers)

    def make_tap(self, ex):
        tap = Tap(ex, self.tracker, self.observers, 1 << 20)
        return DeferredTap(tap, asyncio.get_running_loop(), 0.05, self.pending_taps)

    def started(self, ex):
        self.observers.exchange_started(ex)

    def end(self, ex, outcome, error):
        if ex.finish(outcome, error):
            self.observers.exchange_finished(ex)


def socket_tap(admit=None, observers=None, max_message=1 << 20):
    fwd = FakeForwarder(admit, observers)
    ex = Exchange(classify("GET", "/v1/responses"), "GET", "/v1/responses", "", "sha256:k", None)
    tap = SocketTap(ex, CIMultiDict(), fwd, max_message)
    return tap, fwd


def client_frame(data: bytes, opcode=Opcode.TEXT, fin=True) -> bytes:
    return Frame(opcode, data, fin=fin).serialize(mask=True)


def server_frame(data: bytes, opcode=Opcode.TEXT, fin=True) -> bytes:
    return Frame(opcode, data, fin=fin).serialize(mask=False)


def _resp(rid, status="in_progress", usage=None):
    return {"id": rid, "object": "response", "status": status, "model": "gpt-4o", "output": [], "usage": usage}


def _event(kind, seq, **fields):
    return server_frame(orjson.dumps({"type": kind, "sequence_number": seq, **fields}))


def _create(text):
    return client_frame(orjson.dumps({"type": "response.create", "model": "gpt-4o", "input": text}))


USAGE = {"input_tokens": 10, "output_tokens": 5, "total_tokens": 15}


async def test_a_response_already_in_flight_error_refuses_the_create_it_answers_and_no_other():
    tap, fwd = socket_tap()
    tap.from_upstream(HANDSHAKE)
    assert tap.from_client(_create("A")) != b""
    tap.from_upstream(_event("response.created", 0, response=_resp("resp_A")))
    assert tap.from_client(_create("B")) != b""  # sent while A is streaming
    # The server refuses B at once (one response in flight per socket), while A streams on.
    tap.from_upstream(server_frame(orjson.dumps({"type": "error", "status": 400, "error": {
        "type": "invalid_request_error", "code": "response_already_in_flight", "message": "busy"}})))
    tap.from_upstream(_event("response.completed", 2, response=_resp("resp_A", "completed", USAGE)))
    tap.from_client(_create("C"))
    tap.from_upstream(_event("response.created", 0, response=_resp("resp_C")))
    tap.from_upstream(_event("response.completed", 1, response=_resp("resp_C", "completed", USAGE)))
    await asyncio.sleep(0)  # a tap ends in a loop callback, behind the relay
    _a, b, c = fwd.rec.started[:3]
    assert (b.status, b.response_id) == (400, None), "B should be the one refused"
    assert c.response_id == "resp_C" and c.outcome is Outcome.COMPLETED
    assert fwd.tracker.extensions["responses"].responses["resp_A"].error_code is None  # A did not fail


async def test_a_tap_failure_mid_way_hands_back_the_client_bytes_it_held(monkeypatch):
    tap, _fwd = socket_tap()
    tap.from_upstream(HANDSHAKE)
    frame = _create("hello")
    relayed = tap.from_client(frame[:7])  # half a frame: held until whole
    assert relayed == b""

    def boom(*_):
        raise RuntimeError("a bug in the recording")

    monkeypatch.setattr(tap._server, "feed", boom)  # the recording fails on the next server frame
    tap.from_upstream(server_frame(b'{"type":"x"}'))
    assert tap.off
    relayed += tap.from_client(frame[7:])
    assert relayed == frame, f"upstream got {len(relayed)} of {len(frame)} bytes"


async def test_a_refused_fragmented_create_with_a_ping_inside_is_left_out_whole():
    refuse = lambda ex, headers: errors.budget_exceeded("no", 1)  # noqa: E731
    tap, _fwd = socket_tap(admit=refuse)
    tap.from_upstream(HANDSHAKE)
    body = orjson.dumps({"type": "response.create", "model": "gpt-4o", "input": "x" * 40})
    first = client_frame(body[:20], fin=False)
    ping = client_frame(b"p", opcode=Opcode.PING)
    last = client_frame(body[20:], opcode=Opcode.CONT)
    after = client_frame(b"y", opcode=Opcode.PING)
    out = tap.from_client(first + ping) + tap.from_client(last) + tap.from_client(after)
    # Whatever is relayed must be whole frames: the refused message whole or not at all.
    assert out in (ping + after, first + ping + last + after), out


class _T:
    def __init__(self):
        self.writes, self.closed, self.after_close = [], False, []

    def write(self, data):
        (self.after_close if self.closed else self.writes).append(data)

    def close(self):
        self.closed = True

    def is_closing(self):
        return self.closed


class _Side:
    def __init__(self):
        self.transport = _T()


class _Client:
    def __init__(self):
        self.transport = _T()

    def write(self, data):
        self.transport.write(data)


async def test_a_compressed_refusal_relays_the_frames_before_it_then_closes():
    refuse_second = iter([None, errors.budget_exceeded("no", 1)])
    tap, fwd = socket_tap(admit=lambda ex, h: next(refuse_second))
    tunnel = Tunnel.__new__(Tunnel)
    tunnel.client, tunnel._up, tunnel._socket, tunnel._pending = _Client(), _Side(), tap, []
    tunnel._ex, tunnel._forwarder, tunnel._ended, tunnel._status_seen = tap.socket, fwd, False, True
    tunnel.from_upstream(HANDSHAKE.replace(b"\r\n\r\n", b"\r\nSec-WebSocket-Extensions: permessage-deflate\r\n\r\n"))
    deflate = PerMessageDeflate(remote_no_context_takeover=False, local_no_context_takeover=False,
                                remote_max_window_bits=15, local_max_window_bits=15)
    a = Frame(Opcode.TEXT, orjson.dumps({"type": "response.create", "model": "m", "input": "A"})).serialize(
        mask=True, extensions=[deflate])
    b = Frame(Opcode.TEXT, orjson.dumps({"type": "response.create", "model": "m", "input": "B"})).serialize(
        mask=True, extensions=[deflate])
    half = server_frame(b'{"type":"response.created","sequence_number":0}')
    tunnel.from_upstream(half[:5])  # a server frame half-way to the client
    tunnel.from_client(a + b)  # both in one read: A admitted, B refused
    up = tunnel._up.transport
    assert b"".join(up.writes) == a, "A (admitted, recorded, charged) never reached the upstream"
    # The refusal waits for the server frame's end, and the socket closes only after it.
    client = tunnel.client.transport
    assert not client.closed and not up.closed
    tunnel.from_upstream(half[5:])
    assert up.closed and client.closed and not client.after_close
    written = b"".join(client.writes)
    assert written.endswith(b"runtap: request refused") and b'"status":429' in written
    assert written.index(half[5:]) < written.index(b'"status":429')  # whole frames, in order


async def test_a_frame_with_a_newline_in_its_json_is_recorded_whole():
    import json
    tap, fwd = socket_tap()
    tap.from_upstream(HANDSHAKE)
    tap.from_client(_create("A"))
    for kind, rid, status, seq in (("response.created", "resp_A", "in_progress", 0),
                                   ("response.completed", "resp_A", "completed", 1)):
        text = json.dumps({"type": kind, "sequence_number": seq, "response": _resp(rid, status, USAGE)}, indent=1)
        tap.from_upstream(server_frame(text.encode()))  # valid JSON, valid text frame
    await asyncio.sleep(0)
    [a] = fwd.rec.started
    assert a.outcome is Outcome.COMPLETED and a.response_id == "resp_A", (a.outcome, a.response_id, tap._line)


async def test_an_in_band_error_stays_with_the_streaming_response_while_a_create_waits():
    tap, fwd = socket_tap()
    tap.from_upstream(HANDSHAKE)
    tap.from_client(_create("A"))
    tap.from_upstream(_event("response.created", 0, response=_resp("resp_A")))
    tap.from_client(_create("B"))  # waits behind A
    tap.from_upstream(_event("error", 1, error={"type": "server_error", "code": "server_error", "message": "boom"}))
    tap.from_upstream(_event("response.failed", 2, response=_resp("resp_A", "failed")))
    tap.from_upstream(_event("response.created", 0, response=_resp("resp_B")))
    tap.from_upstream(_event("response.completed", 1, response=_resp("resp_B", "completed", USAGE)))
    a, b = fwd.rec.started[:2]
    assert (a.status, a.response_id, b.status, b.response_id) == (200, "resp_A", 200, "resp_B")
    assert fwd.tracker.extensions["responses"].responses["resp_A"].error_code == "server_error"


async def test_delta_frames_are_parsed_in_one_batch_with_their_arrival_times():
    tap, fwd = socket_tap()
    tap.from_upstream(HANDSHAKE)
    tap.from_client(_create("A"))
    tap.from_upstream(_event("response.created", 0, response=_resp("resp_A")))
    item = {"id": "msg_A", "type": "message", "status": "in_progress", "role": "assistant", "content": []}
    tap.from_upstream(_event("response.output_item.added", 1, output_index=0, item=item))
    seen_before = len(fwd.rec.events)
    for seq, piece in enumerate(("Hel", "lo", "!"), start=2):
        tap.from_upstream(_event("response.output_text.delta", seq, item_id="msg_A", output_index=0,
                                 content_index=0, delta=piece))
    assert len(fwd.rec.events) == seen_before, "a delta frame should only be noted, not parsed"
    noted_by = time.time()
    await asyncio.sleep(0.02)  # within the tap's delay: the done frame, not the timer, hands them over
    tap.from_upstream(_event("response.output_text.done", 5, item_id="msg_A", output_index=0, content_index=0,
                             text="Hello!"))
    batches = [e for _, e in fwd.rec.events[seen_before:] if isinstance(e, tuple)]
    assert len(batches) == 1, batches  # the three deltas, handed over together before the done frame
    seq, count, at, frames = batches[0]
    assert (seq, count) == (2, 3) and frames.count(b"event: response.output_text.delta\n") == 3
    assert at.timestamp() <= noted_by, "the batch's time should be its first delta's arrival, not its parsing"
    state = fwd.tracker.extensions["responses"].responses["resp_A"]
    assert state.status == "in_progress"


async def test_delta_frames_left_waiting_are_handed_over_by_the_timer():
    tap, fwd = socket_tap()
    tap.from_upstream(HANDSHAKE)
    tap.from_client(_create("A"))
    tap.from_upstream(_event("response.created", 0, response=_resp("resp_A")))
    seen_before = len(fwd.rec.events)
    tap.from_upstream(_event("response.output_text.delta", 1, item_id="msg_A", output_index=0, content_index=0,
                             delta="slow"))

    async def handed_over():
        return len(fwd.rec.events) > seen_before

    await poll(handed_over, "the delta handed over by the tap's timer", 2.0)
