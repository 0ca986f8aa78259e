"""Property tests over real Assistants streams: the fake's own engine and framing, every malformed
variant, every script shape. (The decoder's properties over arbitrary bytes are in tests/proxy/test_sse.py.)

- the SSE decoder: any split of a real stream gives the events of the unsplit stream;
- the tap (decoder + JSON + run tracker + recorder): any split gives the same rows;
- the run tracker: objects in any order, or with some missing, never raise; a terminal status is
  final (no later snapshot changes it, or its usage); applying the same objects twice changes nothing.
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Sequence
from functools import cache
from typing import Any, get_args

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.apis import classify
from proxy.apis.assistants.runs import RUN_TERMINAL, RunTracker, Seen
from proxy.exchange import Exchange, Outcome, StreamBytes
from proxy.observers import Observers
from proxy.record.recorder import Recorder
from proxy.record.streams import _framed_rows
from proxy.record.writer import EVENT_COLUMNS
from proxy.runs import _CALL_COLUMNS, _MESSAGE_COLUMNS, _RUN_COLUMNS, _STEP_COLUMNS
from proxy.sse import SseDecoder, SseEvent
from proxy.tap import Tap
from proxy.testing.engine import Engine
from proxy.testing.faults import Fault, Malformed, Shaper
from proxy.testing.scripts import (
    CodeInterpreterTurn,
    FileSearchTurn,
    FunctionCall,
    Script,
    TextTurn,
    ToolRound,
)
from proxy.testing.scripts import (
    Outcome as ScriptOutcome,
)
from proxy.testing.streams import PAUSE_OR_TERMINAL, RUN_STATUS_EVENTS, Ids

SCRIPTS: dict[str, Script] = {
    "text": Script.text("Hello there, how are you today?", chunks=6),
    "tool": Script.tool_then_text(),
    "parallel": Script.parallel_tools_then_text([("a", {"x": 1}), ("b", {"y": "z"})]),
    "builtins": Script.of(CodeInterpreterTurn(), FileSearchTurn(), TextTurn("done")),
    "two_rounds": Script.of(ToolRound((FunctionCall("f", {"n": 1}),)), ToolRound((FunctionCall("g", "{bad"),)),
                            TextTurn("ok")),
    "failed": Script.text("partial").ending(ScriptOutcome.failed(partial_text="half an ans")),
    "incomplete": Script.text("cut").ending(ScriptOutcome.incomplete(under_completed_event=True)),
    "cancelled": Script.text("never").ending("cancelled"),
    "expired": Script.text("late").ending("expired"),
}
KINDS: list[Malformed | None] = [None, *get_args(Malformed)]


@cache
def stream(script: str, kind: Malformed | None) -> tuple[bytes, ...]:
    """The wire bytes of each streamed exchange of a run, as the fake frames them (the tool rounds'
    continuations each get their own exchange)."""
    engine = Engine(Ids(7), clock=lambda: 1_764_115_200)
    thread = engine.create_thread({})
    rec = engine.create_run(thread, {"assistant_id": "asst_1"}, SCRIPTS[script], thread_created=True)
    exchanges: list[bytes] = []
    while True:
        shaper, frames = Shaper(Fault(malformed=kind)), []
        while (item := engine.pop(rec)) is not None:
            ending = item.event in RUN_STATUS_EVENTS and item.data["status"] in PAUSE_OR_TERMINAL
            frames += shaper.frames(item.event, item.data, ending=ending, last=not rec.pending)
            if shaper.stop:
                break
        if not shaper.stop:
            frames.append(shaper.done())
        exchanges.append(b"".join(frames))
        if rec.status != "requires_action" or rec.awaiting is None or shaper.stop:
            return tuple(exchanges)
        outputs = [{"tool_call_id": c, "output": "42"} for c in rec.awaiting.call_ids]
        engine.submit_tool_outputs(rec, {"tool_outputs": outputs})


def split(data: bytes, cuts: Sequence[int]) -> list[bytes]:
    points = sorted({min(max(c, 0), len(data)) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points) if b > a]


def decode(chunks: Sequence[bytes]) -> list[SseEvent]:
    decoder = SseDecoder()
    events = [e for chunk in chunks for e in decoder.feed(chunk)]
    return events + decoder.close()


streams = st.tuples(st.sampled_from(sorted(SCRIPTS)), st.sampled_from(KINDS))


@st.composite
def a_stream_and_cuts(draw: st.DrawFn) -> tuple[bytes, list[int]]:
    script, kind = draw(streams)
    body = b"".join(stream(script, kind))
    return body, draw(st.lists(st.integers(0, len(body)), max_size=25))


@settings(deadline=None, max_examples=150)
@given(a_stream_and_cuts())
def test_sse_decoder_gives_the_same_events_however_a_real_stream_is_split(case: tuple[bytes, list[int]]) -> None:
    body, cuts = case
    assert decode(split(body, cuts)) == decode([body])


# -- the tap ---------------------------------------------------------------------------------------

T0 = dt.datetime(2026, 11, 26, tzinfo=dt.UTC)
WALL = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
"""Every time in these streams is 2025-11-26 (the fake's clock and the chunks' arrival): later is the wall clock."""


class Rows:
    def __init__(self) -> None:
        self.rows: list[tuple[str, dict[str, Any]]] = []

    def submit(self, table: str, row: dict[str, Any]) -> None:
        self.rows.append((table, row))

    def submit_stream(self, request_id: str, run_id: str | None, segment: StreamBytes, *,
                      record_content: bool = True) -> None:
        # The stream's frames as event rows, as the writer's thread frames them (the same decoder over
        # the same chunks): rows a split cannot change, where a response_streams row keeps the chunk
        # boundaries. That the events view gives the same frames is test_streams.py's business.
        for row in _framed_rows(request_id, run_id, segment, record_content):
            self.rows.append(("events", dict(zip(EVENT_COLUMNS, row, strict=True))))


def record(exchanges: Sequence[Sequence[bytes]]) -> list[tuple[str, dict[str, Any]]]:
    """What the recorder writes for these exchanges, fed chunk by chunk through a Tap each."""
    tracker, sink = RunTracker(), Rows()
    observers = Observers([Recorder(sink, tracker)])
    for n, chunks in enumerate(exchanges):
        ex = Exchange(classify("POST", "/v1/threads/runs"), "POST", "/v1/threads/runs", "", "sha256:k", b"{}",
                      request_id=f"rt_{n}", started_at=T0)
        ex.status = 200
        observers.exchange_started(ex)
        tap = Tap(ex, tracker, observers, 1 << 20)
        tap.response_started("text/event-stream", None)
        for chunk in chunks:
            tap.feed(chunk, 1_764_115_200.0)
        tap.end(Outcome.COMPLETED)
    # Timing columns are the exchange's own clock readings, and a frame flushed at the end of a
    # stream (no blank line after it) is stamped with the wall clock: those are "now" here.
    timing = {"ttfb_ms", "duration_ms"}
    return [(t, {k: "now" if k in timing or (isinstance(v, dt.datetime) and v > WALL) else v for k, v in row.items()})
            for t, row in sink.rows]


@st.composite
def exchanges_and_cuts(draw: st.DrawFn) -> tuple[tuple[bytes, ...], list[list[int]]]:
    script, kind = draw(streams)
    bodies = stream(script, kind)
    return bodies, [draw(st.lists(st.integers(0, len(b)), max_size=15)) for b in bodies]


@settings(deadline=None, max_examples=100)
@given(exchanges_and_cuts())
def test_the_tap_records_the_same_rows_however_the_stream_is_split(
        case: tuple[tuple[bytes, ...], list[list[int]]]) -> None:
    bodies, cuts = case
    whole = record([[b] for b in bodies])
    assert record([split(b, c) for b, c in zip(bodies, cuts, strict=True)]) == whole
    assert record([split(b, range(len(b))) for b in bodies[:1]]) == record([[bodies[0]]])  # byte by byte


# -- the run tracker -------------------------------------------------------------------------------


@cache
def objects(script: str) -> tuple[dict[str, Any], ...]:
    """Every JSON object of a run's clean streams, in the order the upstream sent them."""
    out = []
    for body in stream(script, None):
        for event in decode([body]):
            if event.data.startswith("{"):
                out.append(orjson.loads(event.data))
    return tuple(out)


def state(tracker: RunTracker) -> dict[tuple[str, str], Any]:
    """Every recorded column of every run, step, tool call and message the tracker holds."""
    out: dict[tuple[str, str], Any] = {}

    def put(key: str, obj: Any, columns: Sequence[str]) -> None:
        out.update({(key, c): getattr(obj, c) for c in columns})

    for run in tracker.runs.values():
        put(run.run_id, run, _RUN_COLUMNS)
        for step in run.steps.values():
            put(step.step_id, step, _STEP_COLUMNS)
        for call in run.tool_calls.values():
            put(call.tool_call_id, call, _CALL_COLUMNS)
        for message in run.messages.values():
            put(message.message_id, message, _MESSAGE_COLUMNS)
    return out


def changed(before: dict[tuple[str, str], Any], after: dict[tuple[str, str], Any]) -> dict[tuple[str, str], Any]:
    return {k: (before.get(k), after.get(k)) for k in before.keys() | after.keys() if before.get(k) != after.get(k)}


SEEN = Seen("rt_1", "sha256:k", None, T0)


@st.composite
def shuffled(draw: st.DrawFn) -> tuple[str, list[dict[str, Any]]]:
    script = draw(st.sampled_from(sorted(SCRIPTS)))
    objs = list(objects(script))
    order = draw(st.permutations(range(len(objs))))
    keep = draw(st.lists(st.booleans(), min_size=len(objs), max_size=len(objs)))
    return script, [objs[i] for i in order if keep[i] or draw(st.booleans())]


@settings(deadline=None, max_examples=200)
@given(shuffled())
def test_the_run_tracker_takes_any_order_and_a_terminal_status_is_final(case: tuple[str, list[dict]]) -> None:
    _, objs = case
    tracker = RunTracker()
    first_terminal: dict[str, Any] | None = None
    for obj in objs:
        tracker.apply(obj, SEEN)  # never raises
        if first_terminal is None and obj.get("object") == "thread.run" and obj.get("status") in RUN_TERMINAL:
            first_terminal = obj
    for run in tracker.runs.values():
        assert run.status is None or isinstance(run.status, str)
        if first_terminal is not None:
            # Whatever arrived after the end (a stale poll, a late continuation) changes neither
            # the status nor the run's final usage (protocol: usage is counted once, at the end).
            assert run.status == first_terminal["status"]
            usage = first_terminal.get("usage") or {}
            assert run.total_tokens == usage.get("total_tokens", run.total_tokens)
    # Snapshots seen again (a poll repeated, a list re-read) change nothing. (Deltas are fragments:
    # each arrives once, in one stream.)
    before = state(tracker)
    for obj in objs:
        if not obj.get("object", "").endswith(".delta"):
            tracker.apply(obj, SEEN)
    assert changed(before, state(tracker)) == {}


@settings(deadline=None, max_examples=50)
@given(st.sampled_from(sorted(SCRIPTS)), st.data())
def test_fragments_arriving_after_their_step_ended_change_nothing(script: str, data: st.DataObject) -> None:
    tracker = RunTracker()
    objs = list(objects(script))
    for obj in objs:
        tracker.apply(obj, SEEN)
    before = state(tracker)
    deltas = [o for o in objs if o.get("object") == "thread.run.step.delta"]
    for obj in data.draw(st.lists(st.sampled_from(deltas), max_size=10)) if deltas else ():
        tracker.apply(obj, SEEN)
    assert changed(before, state(tracker)) == {}


@settings(deadline=None, max_examples=50)
@given(st.sampled_from(sorted(SCRIPTS)))
def test_in_order_the_tracker_ends_where_the_upstream_did(script: str) -> None:
    tracker = RunTracker()
    for obj in objects(script):
        tracker.apply(obj, SEEN)
    [run] = tracker.runs.values()
    last = [o for o in objects(script) if o.get("object") == "thread.run"][-1]
    assert run.status == last["status"]
    if run.status in RUN_TERMINAL and last.get("usage"):
        assert run.total_tokens == last["usage"]["total_tokens"]
