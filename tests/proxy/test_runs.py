"""proxy/runs.py: the API-neutral run model and its store.

Pinned: a run is found by id and touched to the end of the LRU; past `max_runs` the least recently
touched run is evicted with its steps and messages (an id seen again starts afresh); steps, messages
and tool calls hang off their run, and a message first seen without a run is given it later;
`drain_dirty` hands over and clears; a message's text is its snapshot, else what its raw deltas
said, malformed ones skipped; a run is terminal in exactly the terminal statuses.
"""

from __future__ import annotations

import orjson

from proxy.runs import RUN_TERMINAL, MessageState, RunState, RunStore


def delta(text: str) -> str:
    return orjson.dumps({"id": "msg_1", "delta": {"content": [{"index": 0, "type": "text",
                                                                "text": {"value": text}}]}}).decode()


def test_run_is_found_by_id_and_touched():
    store = RunStore(max_runs=3)
    a = store.run("run_a")
    store.run("run_b")
    assert store.run("run_a") is a
    assert list(store.runs) == ["run_b", "run_a"]


def test_the_least_recently_touched_run_is_evicted_with_its_steps_and_messages():
    store = RunStore(max_runs=2)
    step = store._step("step_1", "run_a")
    message = store._message("msg_1", "run_a")
    step.status = "completed"
    store.run("run_b")
    store.run("run_a")  # touched: run_b is now the oldest
    store.run("run_c")
    assert list(store.runs) == ["run_a", "run_c"]
    store.run("run_d")  # evicts run_a and what hangs off it
    assert "run_a" not in store.runs
    assert store._step("step_1", "run_a") is not step
    assert store._message("msg_1", "run_a") is not message


def test_steps_messages_and_tool_calls_hang_off_their_run():
    store = RunStore()
    step = store._step("step_1", "run_a")
    run = store.runs["run_a"]
    assert run.steps == {"step_1": step} and step.run_id == "run_a"
    call = store._tool_call(run, "call_1")
    assert run.tool_calls == {"call_1": call} and call.run_id == "run_a"
    assert store._tool_call(run, "call_1") is call
    unowned = store._step("step_2", None)
    assert unowned.run_id is None and "step_2" not in run.steps


def test_a_message_first_seen_without_its_run_is_given_it_later():
    store = RunStore()
    message = store._message("msg_1", None)
    assert message.run_id is None
    assert store._message("msg_1", "run_a") is message
    assert message.run_id == "run_a"
    assert store._message("msg_1", None).run_id == "run_a"  # never erased


def test_drain_dirty_hands_over_and_clears():
    store = RunStore()
    message = store._message("msg_1", "run_a")
    store.mark_dirty(message, "req_a")
    other = store._message("msg_2", "run_a")
    store.mark_dirty(other, "req_b")
    assert store.drain_dirty("req_a") == [message]  # only what this exchange's deltas changed
    assert store.drain_dirty("req_a") == []
    store.written(other)  # a snapshot wrote it: its deltas need no row of their own
    assert store.drain_dirty("req_b") == []
    store.mark_dirty(message, "req_a")
    store.mark_dirty(message, "req_c")  # a later exchange's deltas changed it: its end writes it
    assert store.drain_dirty("req_a") == [] and store.drain_dirty("req_c") == [message]
    assert store.dirty == {} and store._dirty_by == {}  # nothing left behind to scan


def test_message_text_is_the_snapshot_else_the_deltas_malformed_ones_skipped():
    message = MessageState("msg_1")
    assert message.text is None
    frames = [f"event: thread.message.delta\ndata: {data}\n\n".encode()
              for data in (delta("Hel"), "{not json", '{"delta": 3}', delta("lo"))]
    message.delta_frames += [b"".join(frames[:3]), frames[3]]
    other = delta("Hel").replace('"msg_1"', '"msg_2"')  # another message's delta in the run: not this text
    message.delta_frames.append(f"event: thread.message.delta\ndata: {other}\n\n".encode())
    assert message.text == "Hello"
    message.snapshot_text = "Hello, world"
    assert message.text == "Hello, world"


def test_terminal_is_exactly_the_terminal_statuses():
    for status in ("queued", "in_progress", "requires_action", "cancelling", None):
        assert not RunState("run_a", status=status).terminal
    for status in RUN_TERMINAL:
        assert RunState("run_a", status=status).terminal
