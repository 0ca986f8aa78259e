import asyncio
import gzip
import time

import orjson

from proxy.apis import classify
from proxy.apis.assistants.runs import RunState, RunTracker, ToolCallState
from proxy.exchange import Exchange
from proxy.observers import Observer, Observers
from proxy.tap import Tap, parse_object
from proxy.testing.replay import Capture

RUN = {"id": "run_1", "object": "thread.run", "thread_id": "thread_1", "assistant_id": "asst_1",
       "model": "gpt-4o", "status": "queued", "created_at": 1_710_000_000, "usage": None}


def sse(event: str, data) -> bytes:
    text = data if isinstance(data, str) else orjson.dumps(data).decode()
    return f"event: {event}\ndata: {text}\n\n".encode()


STREAM = b"".join([
    sse("thread.created", {"id": "thread_1", "object": "thread", "created_at": 1_710_000_000}),
    sse("thread.run.created", RUN),
    sse("thread.run.completed", RUN | {"status": "completed",
                                       "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}}),
    sse("done", "[DONE]"),
])


def _tap(path="/v1/threads/runs", method="POST", body=b'{"assistant_id":"asst_1","stream":true}', status=200,
         capture=None):
    capture = capture or Capture()
    ex = Exchange(classify(method, path), method, path, "", "sha256:k", body)
    ex.status = status
    return Tap(ex, RunTracker(), Observers([capture]), 1 << 20), capture


def test_stream_events_in_order_with_run_state_whatever_the_chunking():
    for size in (1, 7, len(STREAM)):
        tap, capture = _tap()
        tap.response_started("text/event-stream; charset=utf-8", None)
        for i in range(0, len(STREAM), size):
            tap.feed(STREAM[i:i + size])
        tap.close()
        events = capture.events
        assert [(e.seq, e.name) for e in events] == [
            (0, "thread.created"), (1, "thread.run.created"), (2, "thread.run.completed"), (3, "done")]
        assert events[3].data == "[DONE]" and events[3].obj is None
        run = events[2].changes[0]
        assert isinstance(run, RunState) and (run.status, run.total_tokens) == ("completed", 7)
        assert (tap.ex.thread_id, tap.ex.run_id, tap.ex.event_count) == ("thread_1", "run_1", 4)
        assert tap.done_seen and tap.ex.streamed
        assert tap.ex.request_json == {"assistant_id": "asst_1", "stream": True}


def test_gzip_bodies_are_decoded_for_the_tap_only():
    tap, capture = _tap()
    tap.response_started("text/event-stream", "gzip")
    packed = gzip.compress(STREAM)
    for i in range(0, len(packed), 5):
        tap.feed(packed[i:i + 5])
    tap.close()
    assert [e.name for e in capture.events][-1] == "done"


def test_json_body_is_one_snapshot_event():
    tap, capture = _tap("/v1/threads/thread_1/runs/run_1", "GET", None)
    tap.response_started("application/json", None)
    body = orjson.dumps(RUN | {"status": "in_progress"})
    tap.feed(body[:10])
    tap.feed(body[10:])
    tap.close()
    [event] = capture.events
    assert (event.source, event.seq, event.obj["status"]) == ("body", -1, "in_progress")
    assert tap.ex.response_body == body


def test_accepted_tool_outputs_become_a_request_event():
    body = orjson.dumps({"tool_outputs": [{"tool_call_id": "call_1", "output": "72F"}], "stream": True})
    tap, capture = _tap("/v1/threads/thread_1/runs/run_1/submit_tool_outputs", "POST", body)
    tap.response_started("text/event-stream", None)
    [event] = capture.events
    assert event.source == "request"
    [call] = event.changes
    assert isinstance(call, ToolCallState) and (call.tool_call_id, call.output) == ("call_1", "72F")


def test_refused_tool_outputs_are_not_joined():
    body = orjson.dumps({"tool_outputs": [{"tool_call_id": "call_1", "output": "72F"}]})
    tap, capture = _tap("/v1/threads/thread_1/runs/run_1/submit_tool_outputs", "POST", body, status=400)
    tap.response_started("application/json", None)
    assert capture.events == []


def test_oversized_json_body_is_forwarded_but_not_recorded():
    tap, capture = _tap("/v1/threads/thread_1/runs/run_1", "GET", None)
    tap._max_body = 8
    tap.response_started("application/json", None)
    tap.feed(orjson.dumps(RUN))
    tap.close()
    assert tap.body_overflow and capture.events == [] and tap.ex.response_body is None


def test_the_tap_never_raises(caplog):
    class Exploding(Observer):
        name = "exploding"

        def run_event(self, ex, event):
            raise RuntimeError("boom")

    before = Tap.errors
    tap, _ = _tap()
    tap.response_started("text/event-stream", "gzip")  # but the bytes are not gzip
    tap.feed(STREAM)
    tap.feed(STREAM)  # parsing stopped after the first failure
    tap.close()
    assert Tap.errors == before + 1
    assert "tap failed in feed" in caplog.text

    observers = Observers([Exploding()])
    tap, _ = _tap()
    tap._observers = observers
    tap.response_started("text/event-stream", None)
    tap.feed(STREAM)
    tap.close()
    assert observers.failures[("exploding", "run_event")] == 4
    assert Tap.errors == before + 1


def test_parse_object():
    assert parse_object('{"a": 1}') == {"a": 1}
    assert parse_object(b'{"a": 1}') == {"a": 1}
    for text in ("", "[DONE]", "[1]", "{bad", b"\xff"):
        assert parse_object(text) is None


def test_a_frame_flushed_at_the_end_keeps_the_arrival_time_of_its_bytes():
    tap, capture = _tap()
    tap.response_started("text/event-stream", None)
    arrived = 1_790_000_000.25
    tap.feed(STREAM[:-2], arrived)  # the last frame lacks its blank line: only close() flushes it
    tap.close()
    last = capture.events[-1]
    assert (last.name, last.received_at.timestamp()) == ("done", arrived)


def _delta(message_id: str, text: str) -> bytes:
    return sse("thread.message.delta", {"id": message_id, "object": "thread.message.delta",
                                        "delta": {"content": [{"index": 0, "type": "text", "text": {"value": text}}]}})


class Batches(Observer):
    name = "batches"

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[int]]] = []

    def run_event(self, ex, event):
        self.calls.append(("event", [event.seq]))

    def deltas(self, ex, deltas):
        seq, count, _at, frames = deltas
        assert frames.count(b"\n\n") == count
        self.calls.append(("raw", list(range(seq, seq + count))))


def test_delta_frames_go_to_the_observers_unparsed_in_one_call_per_run_of_them_in_stream_order():
    message = {"id": "msg_1", "object": "thread.message", "thread_id": "thread_1", "run_id": "run_1",
               "role": "assistant", "status": "in_progress", "content": []}
    stream = b"".join([sse("thread.run.created", RUN), sse("thread.message.created", message),
                       _delta("msg_1", "Hel"), _delta("msg_1", "lo"), _delta("msg_1", "!"),
                       sse("thread.message.completed", message | {"status": "completed"}),
                       _delta("msg_1", "late"), sse("done", "[DONE]")])
    batches = Batches()
    ex = Exchange(classify("POST", "/v1/threads/runs"), "POST", "/v1/threads/runs", "", "sha256:k", b"{}")
    ex.status = 200
    tap = Tap(ex, RunTracker(), Observers([batches]), 1 << 20)
    tap.response_started("text/event-stream", None)
    chunks = [stream[i:i + 50] for i in range(0, len(stream), 50)]  # deltas split across chunks
    tap.feed_batch(chunks, [time.time()] * len(chunks))  # one batch: one call per run of deltas
    tap.close()
    assert batches.calls == [("event", [0]), ("event", [1]), ("raw", [2, 3, 4]), ("event", [5]),
                             ("raw", [6]), ("event", [7])]
    assert ex.event_count == 8
    batches.calls.clear()
    tap = Tap(ex, RunTracker(), Observers([batches]), 1 << 20)
    tap.response_started("text/event-stream", None)
    for chunk in chunks:  # a batch per chunk: runs of deltas end with their batch, still in order
        tap.feed(chunk)
    tap.close()
    seqs = [seq for kind, seqs in batches.calls for seq in seqs]
    assert seqs == list(range(8))
    assert [seqs for kind, seqs in batches.calls if kind == "event"] == [[0], [1], [5], [7]]


def test_a_delta_goes_out_with_its_batch_with_its_bytes_and_arrival_time():
    capture = Capture()
    tap, capture = _tap(capture=capture)
    tap.response_started("text/event-stream", None)
    tap.feed(_delta("msg_1", "Hi")[:20], 1_710_000_000.25)
    assert capture.events == []  # no frame complete yet
    tap.feed(_delta("msg_1", "Hi")[20:], 1_710_000_000.5)
    [event] = capture.events
    assert (event.seq, event.name, event.obj) == (0, "thread.message.delta", None)
    assert orjson.loads(event.data)["delta"]["content"][0]["text"]["value"] == "Hi"
    assert event.received_at.timestamp() == 1_710_000_000.5


def test_a_malformed_lifecycle_frame_is_an_event_with_its_raw_bytes_and_a_malformed_delta_is_bytes():
    capture = Capture()
    tap, capture = _tap(capture=capture)
    tap.response_started("text/event-stream", None)
    frame = b'event: thread.run.created\ndata: {"id":"run_1","status":"\xff"}\n\n'
    delta = b'event: thread.message.delta\ndata: {"id":"msg_1","delta":\xff}\n\n'
    tap.feed(frame + delta)
    tap.close()
    [event, delta_event] = capture.events
    assert event.raw == frame[:-1] and event.name == "thread.run.created"  # repaired, as SseDecoder does
    # Deltas are never decoded on the loop: the recording marks this one malformed (record/streams.py).
    assert (delta_event.seq, delta_event.name) == (1, "thread.message.delta")


class Segments(Observer):
    name = "segments"

    def __init__(self):
        self.segments = []
        self.arrived = asyncio.Event()

    def stream_bytes(self, ex, segment):
        self.segments.append(segment)
        self.arrived.set()


def test_a_stream_is_handed_over_as_its_bytes_once_at_the_end():
    segments = Segments()
    ex = Exchange(classify("POST", "/v1/threads/runs"), "POST", "/v1/threads/runs", "", "sha256:k", b"{}")
    ex.status = 200
    tap = Tap(ex, RunTracker(), Observers([segments]), 1 << 20)
    tap.response_started("text/event-stream", None)
    for i in range(0, len(STREAM), 50):
        tap.feed(STREAM[i:i + 50], 1_800_000_000.0 + i / 1e6)
    assert segments.segments == []  # nothing per chunk: the bytes are held
    tap.close()
    [segment] = segments.segments
    assert (segment.seq0, segment.final, b"".join(segment.chunks)) == (0, True, STREAM)
    assert segment.arrived == [1_800_000_000.0 + i / 1e6 for i in range(0, len(STREAM), 50)]


def test_a_long_stream_is_cut_into_segments_only_where_no_frame_is_half_way():
    segments = Segments()
    ex = Exchange(classify("POST", "/v1/threads/runs"), "POST", "/v1/threads/runs", "", "sha256:k", b"{}")
    ex.status = 200
    tap = Tap(ex, RunTracker(), Observers([segments]), 1 << 20, segment_s=1.0)
    tap.response_started("text/event-stream", None)
    frames = [sse("thread.message.delta", {"id": "msg_1", "n": n}) for n in range(6)]
    tap.feed(frames[0], 100.0)
    tap.feed(frames[1][:10], 100.5)
    tap.feed(frames[1][10:] + frames[2][:5], 101.5)  # due, but frame 2 is half-way: held on
    assert segments.segments == []
    tap.feed(frames[2][5:], 101.6)  # a boundary: the segment goes
    tap.feed(frames[3] + frames[4], 101.7)
    tap.feed(frames[5], 103.0)  # due again, at a boundary
    tap.close()
    # The last segment was empty at the end: nothing more to hand over.
    assert [(s.seq0, s.final, len(s.chunks)) for s in segments.segments] == [(0, False, 4), (3, False, 2)]
    assert b"".join(c for s in segments.segments for c in s.chunks) == b"".join(frames)
    assert ex.event_count == 6
