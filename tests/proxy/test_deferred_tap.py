"""DeferredTap and TapQueue: chunks parsed in batches behind the relay, in arrival order across exchanges."""

import asyncio
import time

import orjson

from proxy.apis import classify
from proxy.apis.assistants.runs import RunTracker
from proxy.deferred_tap import DeferredTap, TapQueue
from proxy.exchange import Exchange, Outcome
from proxy.observers import Observers
from proxy.tap import Tap
from tests.proxy.test_tap import RUN, STREAM, Segments, _tap, sse


async def test_deferred_tap_parses_after_the_stream_and_keeps_arrival_times_and_end_time():
    tap, capture = _tap()
    deferred = DeferredTap(tap, asyncio.get_running_loop(), delay=10)
    deferred.response_started("text/event-stream", None)
    await asyncio.sleep(0)  # the start is handled at once
    before = time.time()
    third = len(STREAM) // 3
    for i in range(0, len(STREAM), third):
        deferred.feed(STREAM[i:i + third])
    fed = time.time()
    await asyncio.sleep(0)
    assert capture.events == []  # nothing parsed while the relay may still be writing
    deferred.end(Outcome.COMPLETED)
    relay_end = time.perf_counter()
    time.sleep(0.05)  # noqa: ASYNC251  # on purpose: the loop is busy before the tap's callbacks run
    await asyncio.sleep(0)
    assert [e.name for e in capture.events] == ["thread.created", "thread.run.created", "thread.run.completed", "done"]
    # Arrival, not parse time (to the microsecond a datetime holds: it rounds to the nearest one).
    assert all(before - 1e-6 <= e.received_at.timestamp() <= fed + 1e-6 for e in capture.events)
    assert capture.calls[-1] == ("exchange_finished", Outcome.COMPLETED)
    # The exchange's duration ends when the relay ended, not when the tap caught up.
    assert tap.ex.t_end is not None and tap.ex.t_end <= relay_end


async def test_deferred_tap_feeds_a_live_stream_after_its_delay():
    tap, capture = _tap()
    deferred = DeferredTap(tap, asyncio.get_running_loop(), delay=0.01)
    deferred.response_started("text/event-stream", None)
    deferred.feed(sse("thread.created", {"id": "thread_1", "object": "thread", "created_at": 1_710_000_000}))
    await asyncio.sleep(0.05)
    assert [e.name for e in capture.events] == ["thread.created"]  # the stream is still open
    assert not any(hook == "exchange_finished" for hook, _ in capture.calls)


async def test_a_new_exchange_sees_what_other_exchanges_relayed_before_it():
    # The SDK submits tool outputs while the create stream is still open: the create stream's
    # requires_action, relayed but not yet parsed, must reach the tracker before the submit does.
    loop = asyncio.get_running_loop()
    queue = TapQueue()
    create, seen = _tap()
    poll, _ = _tap("/v1/threads/thread_1/runs/run_1", "GET", None, capture=seen)  # one capture: one order
    stream = DeferredTap(create, loop, delay=10, queue=queue)
    stream.response_started("text/event-stream", None)
    await asyncio.sleep(0)
    stream.feed(STREAM[:STREAM.index(b"event: thread.run.completed")])
    await asyncio.sleep(0)
    assert seen.events == [] and len(queue) == 1
    queue.drain()  # what forward.py does when the next request arrives
    assert [e.name for e in seen.events] == ["thread.created", "thread.run.created"] and len(queue) == 0
    # An exchange that ends drains the others first, oldest first, then itself.
    stream.feed(STREAM[STREAM.index(b"event: thread.run.completed"):])
    other = DeferredTap(poll, loop, delay=10, queue=queue)
    other.response_started("application/json", None)
    other.feed(orjson.dumps(RUN | {"status": "completed"}))
    other.end(Outcome.COMPLETED)
    await asyncio.sleep(0)
    # The stream's last events, then the poll's body, then the poll's end: arrival order.
    assert [(hook, e.name if hook == "run_event" else e) for hook, e in seen.calls[-4:]] == [
        ("run_event", "thread.run.completed"), ("run_event", "done"), ("run_event", None),
        ("exchange_finished", Outcome.COMPLETED)]
    assert seen.events[-1].obj["status"] == "completed" and len(queue) == 0


async def test_chunks_drained_by_another_exchange_before_the_start_callback_ran_are_not_lost():
    # The relay notes the start, then its first chunks, in one loop turn; another exchange may
    # drain the queue before the start's own callback runs: the start must still come first.
    queue = TapQueue()
    tap, capture = _tap()
    deferred = DeferredTap(tap, asyncio.get_running_loop(), delay=10, queue=queue)
    deferred.response_started("text/event-stream", None)
    deferred.feed(STREAM)
    queue.drain()
    assert [e.name for e in capture.events] == ["thread.created", "thread.run.created", "thread.run.completed", "done"]
    assert capture.calls[0] == ("response_started", 200)


async def test_a_quiet_stream_is_handed_over_once_due_without_another_chunk():
    segments = Segments()
    ex = Exchange(classify("POST", "/v1/threads/runs"), "POST", "/v1/threads/runs", "", "sha256:k", b"{}")
    ex.status = 200
    deferred = DeferredTap(Tap(ex, RunTracker(), Observers([segments]), 1 << 20, segment_s=0.05),
                           asyncio.get_running_loop(), 0.001)
    deferred.response_started("text/event-stream", None)
    first = sse("thread.created", {"id": "thread_1", "object": "thread", "created_at": 1_710_000_000})
    deferred.feed(first)
    await asyncio.wait_for(segments.arrived.wait(), 5)
    [segment] = segments.segments  # the timer handed it over: no chunk came, the stream is open
    assert (segment.seq0, segment.final, segment.chunks) == (0, False, [first])
    deferred.feed(STREAM[len(first):])
    segments.arrived.clear()
    deferred.end(Outcome.COMPLETED)
    await asyncio.wait_for(segments.arrived.wait(), 5)
    assert [(s.seq0, s.final, b"".join(s.chunks)) for s in segments.segments] == [
        (0, False, first), (1, True, STREAM[len(first):])]
