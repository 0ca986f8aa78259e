"""Responses into turns: the links of protocol-responses.md §7 and §11, folded from snapshots."""

from datetime import UTC, datetime, timedelta

from proxy.apis.responses.states import ResponseItemState, ResponseState
from proxy.apis.responses.stitch import ResponseTracker
from proxy.runs import RunState, RunStore, Seen, ToolCallState

T0 = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


def seen(request_id: str, seconds: float = 0) -> Seen:
    return Seen(request_id, "sha256:k", None, T0 + timedelta(seconds=seconds))


def response(rid: str, status: str = "completed", output=(), usage=(10, 5), **extra):
    body = {"id": rid, "object": "response", "status": status, "model": "gpt-4o-2024-08-06",
            "created_at": 1_796_000_000, "output": list(output), "usage": None}
    if status == "completed" and usage:
        body["usage"] = {"input_tokens": usage[0], "output_tokens": usage[1], "total_tokens": sum(usage),
                         "input_tokens_details": {"cached_tokens": 2}, "output_tokens_details": {"reasoning_tokens": 1}}
    return body | extra


def call(call_id: str, name: str = "get_weather") -> dict:
    return {"id": "fc_" + call_id, "type": "function_call", "status": "completed", "call_id": call_id, "name": name,
            "arguments": '{"city":"Paris"}'}


def output(call_id: str) -> dict:
    return {"type": "function_call_output", "call_id": call_id, "output": "sunny"}


def _of(changed, kind):
    return [s for s in changed if isinstance(s, kind)]


def test_a_tool_loop_by_previous_response_id_is_one_turn_with_summed_usage() -> None:
    store = RunStore()
    tracker = ResponseTracker(store)
    tracker.request("rq1", {"input": "weather?"}, T0)
    first = tracker.response(response("resp_1", output=[call("call_1")]), "rq1", seen("rq1", 1))
    [run] = _of(first, RunState)
    assert (run.run_id, run.api, run.status, run.total_tokens) == ("resp_1", "responses", "requires_action", 15)
    [asked] = _of(first, ToolCallState)
    assert (asked.tool_call_id, asked.requested_at, asked.submitted_at) == ("call_1", T0 + timedelta(seconds=1), None)
    tracker.request("rq2", {"previous_response_id": "resp_1", "input": [output("call_1")]}, T0 + timedelta(seconds=3))
    second = tracker.response(response("resp_2", output=[{"id": "msg_1", "type": "message", "status": "completed",
                                                          "role": "assistant", "content": [
                                                              {"type": "output_text", "text": "Sunny."}]}],
                                       usage=(30, 4)), "rq2", seen("rq2", 4))
    [run] = _of(second, RunState)
    assert (run.run_id, run.status, run.tool_rounds, run.prompt_tokens, run.completion_tokens) == (
        "resp_1", "completed", 1, 40, 9)
    [answered] = _of(second, ToolCallState)
    assert (answered.output, answered.submitted_at) == ("sunny", T0 + timedelta(seconds=3))
    items = {item.item_id: item for item in _of(second, ResponseItemState)}
    assert items["resp_2/input/0"].source == "input" and items["resp_2/input/0"].call_id == "call_1"
    assert items["msg_1"].text == "Sunny."
    assert store.runs["resp_1"] is run
    assert [tracker.responses[r].link_kind for r in ("resp_1", "resp_2")] == ["none", "previous_response_id"]


def test_a_stateless_replay_continues_by_call_id_and_new_user_input_starts_a_turn() -> None:
    tracker = ResponseTracker(RunStore())
    tracker.request("rq1", {"input": [{"role": "user", "content": "weather?"}]}, T0)
    tracker.response(response("resp_1", output=[call("call_1")]), "rq1", seen("rq1"))
    history = [{"role": "user", "content": "weather?"}, call("call_1"), {"role": "user", "content": ""},
               output("call_1")]
    tracker.request("rq2", {"input": history}, T0)
    assert tracker.responses.get("resp_2") is None
    tracker.response(response("resp_2"), "rq2", seen("rq2"))
    assert tracker.responses["resp_2"].run_id == "resp_1"  # the history before the output is replayed
    tracker.request("rq3", {"input": [*history, {"role": "user", "content": "and tomorrow?"}]}, T0)
    tracker.response(response("resp_3"), "rq3", seen("rq3"))
    assert tracker.responses["resp_3"].run_id == "resp_3"  # a new question after the output: a new turn
    tracker.request("rq4", {"input": [output("call_unknown")]}, T0)
    tracker.response(response("resp_4"), "rq4", seen("rq4"))
    assert tracker.responses["resp_4"].run_id == "resp_4"  # no link found: its own turn, never a guess
    assert [tracker.responses[r].link_kind for r in ("resp_2", "resp_3", "resp_4")] == ["call_id", "none", "none"]


def test_tool_results_for_calls_runtap_never_saw_continue_their_conversations_waiting_turn() -> None:
    tracker = ResponseTracker(RunStore())
    tracker.request("rq1", {"input": "weather?", "conversation": "conv_1"}, T0)
    tracker.response(response("resp_1", output=[call("call_1")]), "rq1", seen("rq1"))
    tracker._calls.clear()  # its memory of the calls is gone (evicted; or the call was asked elsewhere)
    tracker.request("rq2", {"input": [output("call_1")], "conversation": {"id": "conv_1"}}, T0)
    assert tracker.continued_turn("rq2") == "resp_1"
    tracker.response(response("resp_2"), "rq2", seen("rq2"))
    assert (tracker.responses["resp_2"].run_id, tracker.responses["resp_2"].link_kind) == ("resp_1", "conversation")
    # The turn ended: results for unknown calls in the same conversation start a turn of their own.
    tracker.request("rq3", {"input": [output("call_9")], "conversation": "conv_1"}, T0)
    tracker.response(response("resp_3"), "rq3", seen("rq3"))
    assert (tracker.responses["resp_3"].run_id, tracker.responses["resp_3"].link_kind) == ("resp_3", "none")


def test_the_same_snapshot_twice_changes_nothing_twice() -> None:
    store = RunStore()
    tracker = ResponseTracker(store)
    tracker.request("rq1", {"input": "x"}, T0)
    tracker.request("rq2", {"previous_response_id": "resp_1", "input": [output("call_1")]}, T0)
    tracker.response(response("resp_1", output=[call("call_1")]), "rq1", seen("rq1"))
    for request_id in ("rq2", "poll", "resume"):  # the live stream, a poll, a resumed stream's replay
        tracker.response(response("resp_2"), request_id, seen(request_id, 5))
    run = store.runs["resp_1"]
    assert (run.tool_rounds, run.prompt_tokens, run.completion_tokens) == (1, 20, 10)
    state = tracker.responses["resp_2"]
    # No completed_at in these objects: it ended when runtap first saw it terminal, not at a later sighting.
    assert (state.request_id, state.ended_at) == ("rq2", T0 + timedelta(seconds=5))
    tracker.response(response("resp_2") | {"completed_at": 1_796_000_009}, "poll", seen("poll", 9))
    assert state.ended_at == datetime.fromtimestamp(1_796_000_009, UTC)  # the object's own time, when it has one


def test_terminal_fields_and_a_cut_stream() -> None:
    tracker = ResponseTracker(RunStore())
    tracker.request("rq1", {"input": "x", "max_output_tokens": 16, "background": False}, T0)
    tracker.response(response("resp_1", "in_progress", service_tier="auto"), "rq1", seen("rq1"))
    tracker.item("resp_1", 0, {"id": "msg_1", "type": "message", "status": "in_progress", "content": []},
                 seen("rq1"), done=False)
    tracker.deltas("resp_1", b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta",'
                             b'"item_id":"msg_1","delta":"Hel"}\n\n'
                             b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta",'
                             b'"item_id":"msg_1","delta":"lo"}\n\n')
    changed = tracker.cut_off("resp_1", seen("rq1", 2))
    [item] = _of(changed, ResponseItemState)
    assert (item.status, item.text) == ("incomplete", "Hello")
    [state] = _of(changed, ResponseState)
    assert (state.status, state.ended_at, state.max_output_tokens) == ("truncated", T0 + timedelta(seconds=2), 16)
    assert tracker.cut_off("resp_1", seen("rq1", 3)) == []  # once
    tracker.request("rq2", {"input": "x", "background": True}, T0)
    tracker.response(response("resp_2", "queued"), "rq2", seen("rq2"))
    assert tracker.cut_off("resp_2", seen("rq2")) == []  # a background response goes on upstream


def test_failure_details_from_the_error_frame_and_the_failed_object() -> None:
    tracker = ResponseTracker(RunStore())
    tracker.request("rq1", {"input": "x"}, T0)
    tracker.response(response("resp_1", "in_progress"), "rq1", seen("rq1"))
    tracker.failed_in_band("resp_1", {"type": "error", "error": {"code": "server_error", "message": "boom"}})
    changed = tracker.response(response("resp_1", "failed", error={"code": "server_error", "message": "boom"}),
                               "rq1", seen("rq1", 1))
    [run] = _of(changed, RunState)
    assert (run.status, run.last_error_code, run.last_error_message, run.ended_at) == (
        "failed", "server_error", "boom", T0 + timedelta(seconds=1))
    top_level = tracker.failed_in_band("resp_1", {"type": "error", "code": "rate_limit_exceeded", "message": "slow"})
    assert top_level[0].error_code == "rate_limit_exceeded"  # the SDK's declared shape, read too (§6)


def test_tracked_responses_are_bounded() -> None:
    store = RunStore(max_runs=3)
    tracker = ResponseTracker(store)
    for i in range(10):
        tracker.request(f"rq{i}", {"input": "x"}, T0)
        tracker.response(response(f"resp_{i}"), f"rq{i}", seen(f"rq{i}"))
    assert list(tracker.responses) == ["resp_7", "resp_8", "resp_9"]
    assert len(store.runs) <= 3 and len(tracker._turns) == 3


def test_a_stateless_history_of_two_rounds_continues_the_latest_turn_only() -> None:
    tracker = ResponseTracker(RunStore())
    message = {"id": "msg_b", "type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "B"}]}
    tracker.request("rq1", {"input": "first?"}, T0)
    tracker.response(response("resp_a", output=[call("call_1")]), "rq1", seen("rq1"))
    tracker.request("rq2", {"input": [{"role": "user", "content": "first?"}, call("call_1"), output("call_1")]}, T0)
    tracker.response(response("resp_b", output=[message]), "rq2", seen("rq2"))
    second = [{"role": "user", "content": "first?"}, call("call_1"), output("call_1"), message,
              {"role": "user", "content": "second?"}]
    tracker.request("rq3", {"input": second}, T0)
    tracker.response(response("resp_c", output=[call("call_2")]), "rq3", seen("rq3"))
    tracker.request("rq4", {"input": [*second, call("call_2"), output("call_2")]}, T0 + timedelta(seconds=7))
    changed = tracker.response(response("resp_d"), "rq4", seen("rq4", 8))
    assert [tracker.responses[r].run_id for r in ("resp_a", "resp_b", "resp_c", "resp_d")] == [
        "resp_a", "resp_a", "resp_c", "resp_c"]
    [run] = _of(changed, RunState)
    assert (run.run_id, run.status, run.tool_rounds) == ("resp_c", "completed", 1)
    assert [i.call_id for i in _of(changed, ResponseItemState) if i.source == "input"] == ["call_2"]  # not call_1 again
    [answered] = _of(changed, ToolCallState)
    assert (answered.tool_call_id, answered.submitted_at) == ("call_2", T0 + timedelta(seconds=7))


def test_a_late_poll_of_an_earlier_response_or_a_replayed_early_snapshot_reopens_nothing() -> None:
    store = RunStore()
    tracker = ResponseTracker(store)
    tracker.request("rq1", {"input": "x"}, T0)
    tracker.response(response("resp_a", output=[call("call_1")]), "rq1", seen("rq1"))
    tracker.request("rq2", {"previous_response_id": "resp_a", "input": [output("call_1")]}, T0)
    tracker.response(response("resp_b", "failed", error={"code": "server_error", "message": "boom"}), "rq2",
                     seen("rq2", 2))
    tracker.response(response("resp_a", output=[call("call_1")]), "poll", seen("poll", 3))  # a late poll of resp_a
    run = store.runs["resp_a"]
    assert (run.status, run.last_error_code) == ("failed", "server_error")
    tracker.response(response("resp_a", "in_progress"), "resume", seen("resume", 4))  # a replayed response.created
    assert tracker.responses["resp_a"].status == "completed" and run.status == "failed"


def test_other_client_tools_pause_the_turn_and_an_item_id_sent_as_call_id_still_pairs() -> None:
    store = RunStore()
    tracker = ResponseTracker(store)
    custom = {"id": "ctc_1", "type": "custom_tool_call", "status": "completed", "call_id": "call_c", "name": "grep",
              "input": "x"}
    tracker.request("rq1", {"input": "x"}, T0)
    tracker.response(response("resp_a", output=[custom, call("call_f")]), "rq1", seen("rq1"))
    assert store.runs["resp_a"].status == "requires_action"
    results = [{"type": "custom_tool_call_output", "call_id": "call_c", "output": "found"},
               {"type": "function_call_output", "call_id": "fc_call_f", "output": "sunny"}]  # the item id, §7
    tracker.request("rq2", {"input": results}, T0 + timedelta(seconds=2))
    tracker.response(response("resp_b"), "rq2", seen("rq2", 3))
    run = store.runs["resp_a"]
    assert (run.status, run.tool_rounds) == ("completed", 1)
    assert {c.tool_call_id: (c.type, c.output) for c in run.tool_calls.values()} == {
        "call_c": ("custom_tool_call", "found"), "call_f": ("function", "sunny")}


def test_odd_shapes_fold_to_nothing_and_never_raise() -> None:
    tracker = ResponseTracker(RunStore())
    tracker.request("rq1", {"input": "x"}, T0)
    changed = tracker.response({"id": "resp_1", "status": "completed", "output": 5, "created_at": 1e20,
                                "usage": {"input_tokens": "3"}}, "rq1", seen("rq1"))
    [state] = _of(changed, ResponseState)
    assert (state.status, state.created_at, state.input_tokens) == ("completed", None, None)


def test_only_text_and_argument_deltas_are_held_and_not_once_every_item_is_whole() -> None:
    tracker = ResponseTracker(RunStore())
    tracker.request("rq1", {"input": "x"}, T0)
    tracker.response(response("resp_1", "in_progress"), "rq1", seen("rq1"))
    tracker.item("resp_1", 0, {"id": "ig_1", "type": "image_generation_call", "status": "in_progress"}, seen("rq1"),
                 done=False)
    tracker.deltas("resp_1", b'event: response.image_generation_call.partial_image\ndata: {"type":'
                             b'"response.image_generation_call.partial_image","partial_image_b64":"AAAA"}\n\n')
    assert tracker.responses["resp_1"].delta_frames == []
    tracker.deltas("resp_1", b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta",'
                             b'"item_id":"msg_1","delta":"x"}\n\n')
    assert len(tracker.responses["resp_1"].delta_frames) == 1
    tracker.item("resp_1", 0, {"id": "ig_1", "type": "image_generation_call", "status": "completed"}, seen("rq1"),
                 done=True)
    assert tracker.responses["resp_1"].delta_frames == []


def test_forgotten_responses_leave_no_call_behind() -> None:
    tracker = ResponseTracker(RunStore(max_runs=10))
    for i in range(200):
        tracker.request(f"rq{i}", {"input": "x"}, T0)
        tracker.response(response(f"resp_{i}", output=[call(f"call_{i}")]), f"rq{i}", seen(f"rq{i}"))
    assert len(tracker._calls) <= 20 and len(tracker._item_calls) <= 10 and len(tracker.responses) == 10
