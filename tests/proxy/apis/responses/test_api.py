"""The Responses API through the tap: which frames are parsed, and what a stream's end means."""

from datetime import UTC, datetime

import orjson

from proxy.apis import classify
from proxy.apis.responses import API
from proxy.apis.responses.api import DELTA_EVENTS, tracker
from proxy.apis.responses.states import ResponseItemState, ResponseState
from proxy.exchange import Exchange, Outcome
from proxy.observers import Observers
from proxy.runs import RunStore, Seen
from proxy.tap import Tap
from proxy.testing.replay import Capture

RESPONSE = {"id": "resp_1", "object": "response", "status": "in_progress", "model": "gpt-4o", "output": [],
            "usage": None, "created_at": 1_796_000_000}
ITEM = {"id": "msg_1", "type": "message", "status": "in_progress", "role": "assistant", "content": []}


def frame(data: dict) -> bytes:
    return b"event: " + data["type"].encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def delta(seq: int, text: str) -> bytes:
    return frame({"type": "response.output_text.delta", "sequence_number": seq, "item_id": "msg_1",
                  "output_index": 0, "content_index": 0, "delta": text})


def _tap(store: RunStore, capture: Capture) -> Tap:
    ex = Exchange(classify("POST", "/v1/responses"), "POST", "/v1/responses", "", "sha256:k",
                  b'{"model":"gpt-4o","input":"hi","stream":true}')
    ex.status = 200
    tap = Tap(ex, store, Observers([capture]), 1 << 20)
    tap.response_started("text/event-stream; charset=utf-8", None)
    return tap


def test_only_lifecycle_frames_are_parsed_and_a_clean_end_is_the_terminal_event() -> None:
    store, capture = RunStore(), Capture()
    tap = _tap(store, capture)
    done = RESPONSE | {"status": "completed", "output": [ITEM | {"status": "completed", "content": [
        {"type": "output_text", "text": "Hi!"}]}], "usage": {"input_tokens": 3, "output_tokens": 2, "total_tokens": 5}}
    stream = [frame({"type": "response.created", "sequence_number": 0, "response": RESPONSE}),
              frame({"type": "response.output_item.added", "sequence_number": 1, "output_index": 0, "item": ITEM}),
              delta(2, "Hi"), delta(3, "!"),
              frame({"type": "response.completed", "sequence_number": 4, "response": done})]
    tap.feed_batch(stream, [1.0] * len(stream))
    tap.end(Outcome.COMPLETED)
    parsed = [e for e in capture.events if e.obj is not None]
    assert [e.name for e in parsed] == ["response.created", "response.output_item.added", "response.completed"]
    assert "response.output_text.delta" in DELTA_EVENTS and API.delta_events is DELTA_EVENTS
    assert (tap.ex.outcome, tap.ex.response_id, tap.ex.run_id) == (Outcome.COMPLETED, "resp_1", "resp_1")
    assert tracker(store).responses["resp_1"].status == "completed"


def test_a_stream_cut_before_its_terminal_event_is_truncated_with_its_partial_text() -> None:
    store, capture = RunStore(), Capture()
    tap = _tap(store, capture)
    stream = [frame({"type": "response.created", "sequence_number": 0, "response": RESPONSE}),
              frame({"type": "response.output_item.added", "sequence_number": 1, "output_index": 0, "item": ITEM}),
              delta(2, "Hal"), delta(3, "f")]
    tap.feed_batch(stream, [1.0] * len(stream))
    tap.end(Outcome.COMPLETED)
    assert tap.ex.outcome is Outcome.TRUNCATED and "terminal event" in (tap.ex.error or "")
    assert tracker(store)._requests == {}  # nothing of the exchange kept once it ended
    [end] = [e for e in capture.events if e.source == "end"]
    states = {type(s): s for s in end.changes}
    assert states[ResponseState].status == "truncated"
    assert (states[ResponseItemState].text, states[ResponseItemState].status) == ("Half", "incomplete")


def test_a_json_body_and_an_error_body_fold_as_a_response_or_nothing() -> None:
    store = RunStore()
    ex = Exchange(classify("GET", "/v1/responses/resp_1"), "GET", "/v1/responses/resp_1", "", "sha256:k", None)
    seen = Seen(ex.request_id, "sha256:k", None, datetime(2026, 12, 7, tzinfo=UTC))
    assert API.fold(ex, {"error": {"message": "No response found", "code": None}}, store, seen) == []
    changed = API.fold(ex, RESPONSE | {"status": "queued", "background": True}, store, seen)
    assert [s.status for s in changed if isinstance(s, ResponseState)] == ["queued"]
    assert ex.response_id == "resp_1" and ex.run_id is None  # a poll first: no create seen, no turn to stitch
    assert API.fold(ex, {"type": "response.unknown_new_event", "sequence_number": 9}, store, seen) == []


def test_a_create_that_never_shows_its_response_is_not_kept() -> None:
    store, capture = RunStore(), Capture()
    tap = _tap(store, capture)
    tap.feed(b": keep-alive\n\n", 1.0)  # the stream breaks off before response.created
    tap.end(Outcome.TRUNCATED)
    assert tracker(store)._requests == {} and tracker(store).responses == {}


def test_a_stream_framed_otherwise_keeps_its_partial_text_too() -> None:
    store, capture = RunStore(), Capture()
    tap = _tap(store, capture)
    stream = [b": processing\n\n", frame({"type": "response.created", "sequence_number": 0, "response": RESPONSE}),
              frame({"type": "response.output_item.added", "sequence_number": 1, "output_index": 0, "item": ITEM}),
              delta(2, "Hal"), delta(3, "f")]
    tap.feed_batch(stream, [1.0] * len(stream))  # a comment: framed by SseDecoder, every frame parsed
    tap.end(Outcome.COMPLETED)
    [end] = [e for e in capture.events if e.source == "end"]
    assert [s.text for s in end.changes if isinstance(s, ResponseItemState)] == ["Half"]


def test_a_resume_names_its_response_and_its_turn_and_is_cut_unless_it_saw_the_end() -> None:
    store = RunStore()
    created = _tap(store, Capture())
    done = RESPONSE | {"status": "completed", "output": [], "usage": {"input_tokens": 1, "output_tokens": 1,
                                                                      "total_tokens": 2}}
    created.feed_batch([frame({"type": "response.created", "sequence_number": 0, "response": RESPONSE}),
                        frame({"type": "response.completed", "sequence_number": 1, "response": done})], [1.0, 1.0])
    created.end(Outcome.COMPLETED)
    path = "/v1/responses/resp_1"
    ex = Exchange(classify("GET", path), "GET", path, "stream=true&starting_after=0", "sha256:k", None)
    ex.status = 200
    assert ex.response_id == "resp_1"
    resume = Tap(ex, store, Observers([]), 1 << 20)
    resume.response_started("text/event-stream", None)
    assert ex.run_id == "resp_1"  # the turn is known before any event: segments are not held back
    resume.feed(frame({"type": "response.output_item.added", "sequence_number": 1, "output_index": 0, "item": ITEM}))
    resume.end(Outcome.COMPLETED)
    assert ex.outcome is Outcome.TRUNCATED  # it never reached the terminal event, though the response had
    assert tracker(store).responses["resp_1"].status == "completed"  # and the response stays as it ended
