"""Chat completions into turns: chunks folded, tool results continuing the turn that asked."""

from datetime import UTC, datetime, timedelta

from proxy.apis.chat.stitch import ChatTracker
from proxy.runs import MessageState, RunState, RunStore, Seen, ToolCallState

T0 = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


def seen(request_id: str, seconds: float = 0) -> Seen:
    return Seen(request_id, "sha256:k", None, T0 + timedelta(seconds=seconds))


def chunk(cid: str, delta=None, finish=None, usage=None, choices=True) -> dict:
    body = {"id": cid, "object": "chat.completion.chunk", "model": "gpt-4o-2024-08-06",
            "choices": [{"index": 0, "delta": delta or {}, "finish_reason": finish}] if choices else []}
    return body | ({"usage": usage} if usage else {})


def _of(changed, kind):
    return [s for s in changed if isinstance(s, kind)]


def test_fragments_fold_into_one_call_and_only_notable_chunks_hand_states_on() -> None:
    tracker = ChatTracker(RunStore())
    tracker.request("rq1", {"messages": [{"role": "user", "content": "weather?"}]}, T0)
    assert _of(tracker.chunk("rq1", chunk("", choices=False) | {"model": ""}, seen("rq1")), RunState) == []  # Azure
    assert _of(tracker.chunk("rq1", chunk("chatcmpl-1", {"role": "assistant", "tool_calls": [
        {"index": 0, "id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": ""}}]}),
        seen("rq1")), RunState)[0].run_id == "chatcmpl-1"
    for piece in ('{"city"', ':"Paris"}'):
        assert tracker.chunk("rq1", chunk("chatcmpl-1", {"tool_calls": [
            {"index": 0, "function": {"arguments": piece}}]}), seen("rq1")) == []  # a fragment: nothing yet
    changed = tracker.chunk("rq1", chunk("chatcmpl-1", finish="tool_calls"), seen("rq1", 1))
    [call] = _of(changed, ToolCallState)
    assert (call.tool_call_id, call.name, call.arguments, call.requested_at) == (
        "call_1", "get_weather", '{"city":"Paris"}', T0 + timedelta(seconds=1))
    [run] = _of(changed, RunState)
    assert (run.api, run.status) == ("chat", "requires_action")
    usage = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
    assert _of(tracker.chunk("rq1", chunk("chatcmpl-1", usage=usage, choices=False), seen("rq1")),
               RunState)[0].total_tokens == 15
    tracker.request("rq2", {"messages": [{"role": "user", "content": "weather?"}, {"role": "assistant"},
                                         {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}]},
                    T0 + timedelta(seconds=3))
    body = {"id": "chatcmpl-2", "object": "chat.completion", "model": "gpt-4o",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Sunny."}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 20, "completion_tokens": 3, "total_tokens": 23}}
    changed = tracker.completion("rq2", body, seen("rq2", 4))
    [answered] = _of(changed, ToolCallState)
    assert (answered.output, answered.submitted_at) == ("sunny", T0 + timedelta(seconds=3))
    [run] = _of(changed, RunState)
    assert (run.run_id, run.status, run.tool_rounds, run.prompt_tokens, run.total_tokens) == (
        "chatcmpl-1", "completed", 1, 30, 38)
    [message] = _of(changed, MessageState)
    assert (message.message_id, message.text, message.status) == ("chatcmpl-2", "Sunny.", "completed")


def test_a_new_question_is_a_new_turn_and_a_cut_stream_is_truncated() -> None:
    tracker = ChatTracker(RunStore())
    tracker.request("rq1", {"messages": [{"role": "tool", "tool_call_id": "call_unknown", "content": "x"}]}, T0)
    tracker.chunk("rq1", chunk("chatcmpl-1", {"content": "Hal"}), seen("rq1"))
    changed = tracker.ended("rq1", seen("rq1", 2), cut=True)
    [run] = _of(changed, RunState)
    assert (run.run_id, run.status, run.tool_rounds) == ("chatcmpl-1", "truncated", 0)  # no link: its own turn
    assert [(m.status, m.text) for m in _of(changed, MessageState)] == [("incomplete", "Hal")]
    assert tracker.ended("rq1", seen("rq1", 3), cut=True) == []  # once


def test_turns_are_bounded() -> None:
    store = RunStore(max_runs=2)
    tracker = ChatTracker(store)
    for i in range(6):
        tracker.request(f"rq{i}", {"messages": [{"role": "user", "content": "hi"}]}, T0)
        tracker.completion(f"rq{i}", {"id": f"chatcmpl-{i}", "object": "chat.completion", "choices": []}, seen("rq"))
    assert list(tracker._turns) == ["chatcmpl-4", "chatcmpl-5"] and len(tracker._completions) == 2
    assert len(store.runs) <= 2
