from datetime import UTC, datetime

import orjson

from proxy.apis.assistants.runs import RUN_TERMINAL, RUN_TRANSITIONS, STEP_TRANSITIONS, RunTracker, Seen

T0 = 1_710_000_000
AT = datetime(2026, 11, 25, tzinfo=UTC)


def seen(request_id="rq1", key_id="sha256:k", trace_id=None):
    return Seen(request_id, key_id, trace_id, AT)


def run(status, usage=None, **extra):
    return {
        "id": "run_1", "object": "thread.run", "thread_id": "thread_1", "assistant_id": "asst_1",
        "model": "gpt-4o", "status": status, "created_at": T0, "started_at": None, "expires_at": T0 + 600,
        "completed_at": None, "failed_at": None, "cancelled_at": None, "last_error": None,
        "incomplete_details": None, "usage": usage, "max_prompt_tokens": None, "max_completion_tokens": None,
        "required_action": None, **extra,
    }


def requires_action(*calls):
    return run("requires_action", required_action={"type": "submit_tool_outputs", "submit_tool_outputs": {
        "tool_calls": [{"id": cid, "type": "function", "function": {"name": name, "arguments": args}}
                       for cid, name, args in calls]}})


def step(status, type_="message_creation", usage=None, details=None, **extra):
    return {
        "id": "step_1", "object": "thread.run.step", "run_id": "run_1", "thread_id": "thread_1",
        "type": type_, "status": status, "created_at": T0 + 1,
        "completed_at": T0 + 2 if status == "completed" else None,
        "usage": usage, "last_error": None,
        "step_details": details or {"type": "message_creation", "message_creation": {"message_id": "msg_1"}},
        **extra,
    }


def test_transition_tables_cover_every_status_and_terminal_has_no_exit():
    assert set(RUN_TRANSITIONS) == {"queued", "in_progress", "requires_action", "cancelling", *RUN_TERMINAL}
    for status in RUN_TERMINAL:
        assert RUN_TRANSITIONS[status] == frozenset()
    assert STEP_TRANSITIONS["completed"] == frozenset()


def test_status_comes_from_the_object_and_terminal_is_sticky():
    tracker = RunTracker()
    tracker.apply(run("queued"), seen())
    tracker.apply(run("in_progress"), seen())
    state = tracker.runs["run_1"]
    assert state.status == "in_progress"
    # Seen in the wild: an incomplete run under the `thread.run.completed` event name.
    tracker.apply(run("incomplete", incomplete_details={"reason": "max_completion_tokens"}), seen())
    assert (state.status, state.incomplete_reason) == ("incomplete", "max_completion_tokens")
    assert state.ended_at == AT
    tracker.apply(run("in_progress"), seen("late-poll"))
    assert state.status == "incomplete"


def test_usage_is_a_snapshot_counted_once_across_exchanges():
    tracker = RunTracker()
    tracker.apply(run("in_progress"), seen("rq1"))
    tracker.apply(requires_action(("call_1", "get_weather", '{"city":"SF"}')) | {
        "usage": {"prompt_tokens": 100, "completion_tokens": 10, "total_tokens": 110}}, seen("rq1"))
    tracker.apply(run("queued"), seen("rq2"))
    tracker.apply(run("completed", {"prompt_tokens": 250, "completion_tokens": 30, "total_tokens": 280},
                      completed_at=T0 + 9), seen("rq2"))
    state = tracker.runs["run_1"]
    assert (state.prompt_tokens, state.completion_tokens, state.total_tokens) == (250, 30, 280)
    assert state.request_count == 2
    assert state.tool_rounds == 1
    assert state.ended_at == datetime.fromtimestamp(T0 + 9, UTC)


def test_required_action_records_tool_calls_and_outputs_join_them():
    tracker = RunTracker()
    changed = tracker.apply(requires_action(("call_1", "get_weather", '{"city":"SF"}'),
                                            ("call_2", "get_time", "{}")), seen())
    calls = {c.tool_call_id: c for c in changed if hasattr(c, "tool_call_id")}
    assert calls["call_1"].arguments == '{"city":"SF"}'
    assert calls["call_1"].requested_at == AT
    later = datetime(2026, 11, 25, 0, 0, 5, tzinfo=UTC)
    outs = tracker.tool_outputs_submitted("run_1", {"tool_outputs": [
        {"tool_call_id": "call_1", "output": "72F"}, {"tool_call_id": "call_2", "output": "noon"}]}, later)
    assert [(c.tool_call_id, c.output, c.submitted_at) for c in outs] == [
        ("call_1", "72F", later), ("call_2", "noon", later)]
    # The same requires_action seen again (a poll) is not a second round.
    tracker.apply(requires_action(("call_1", "get_weather", '{"city":"SF"}'),
                                  ("call_2", "get_time", "{}")), seen("poll"))
    assert tracker.runs["run_1"].tool_rounds == 1


def test_step_deltas_build_tool_call_arguments_and_mark_dirty():
    tracker = RunTracker()
    tracker.apply(run("in_progress"), seen())
    tracker.apply(step("in_progress", "tool_calls", details={"type": "tool_calls", "tool_calls": []}), seen())
    for fragment in ({"index": 0, "id": "call_1", "type": "function",
                      "function": {"name": "get_weather", "arguments": "", "output": None}},
                     {"index": 0, "type": "function", "function": {"arguments": '{"city"'}},
                     {"index": 0, "type": "function", "function": {"arguments": ':"SF"}'}}):
        tracker.apply({"id": "step_1", "object": "thread.run.step.delta",
                       "delta": {"step_details": {"type": "tool_calls", "tool_calls": [fragment]}}}, seen())
    call = tracker.runs["run_1"].tool_calls["call_1"]
    assert (call.name, call.arguments, call.step_id) == ("get_weather", '{"city":"SF"}', "step_1")
    assert tracker.drain_dirty("another request") == []
    assert call in tracker.drain_dirty("rq1")
    assert tracker.drain_dirty("rq1") == []


def test_step_usage_error_and_message_link():
    tracker = RunTracker()
    tracker.apply(step("in_progress"), seen())
    tracker.apply(step("completed", usage={"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}), seen())
    state = tracker.runs["run_1"].steps["step_1"]
    assert (state.status, state.total_tokens, state.message_id) == ("completed", 7, "msg_1")
    assert state.ended_at == datetime.fromtimestamp(T0 + 2, UTC)


def test_message_text_from_deltas_until_the_completed_snapshot():
    tracker = RunTracker()
    message = {"id": "msg_1", "object": "thread.message", "run_id": "run_1", "thread_id": "thread_1",
               "role": "assistant", "status": "in_progress", "content": [], "created_at": T0}
    tracker.apply(message, seen())
    for value in ("Hel", "lo"):
        tracker.apply({"id": "msg_1", "object": "thread.message.delta",
                       "delta": {"content": [{"index": 0, "type": "text", "text": {"value": value}}]}}, seen())
    state = tracker.runs["run_1"].messages["msg_1"]
    assert state.text == "Hello"
    tracker.apply(message | {"status": "completed", "completed_at": T0 + 3,
                             "content": [{"type": "text", "text": {"value": "Hello!", "annotations": []}}]}, seen())
    assert (state.text, state.status) == ("Hello!", "completed")
    assert state.delta_frames == []  # superseded by the snapshot: a tracked run does not keep its answer twice


def test_lists_are_applied_item_by_item():
    tracker = RunTracker()
    changed = tracker.apply({"object": "list", "data": [step("completed"), step("in_progress") | {"id": "step_2"}]},
                            seen())
    assert {s.step_id for s in changed} == {"step_1", "step_2"}


def test_memory_is_bounded():
    tracker = RunTracker(max_runs=3)
    for i in range(10):
        tracker.apply(run("queued") | {"id": f"run_{i}"}, seen())
        tracker.apply(step("in_progress") | {"id": f"step_{i}", "run_id": f"run_{i}"}, seen())
    assert list(tracker.runs) == ["run_7", "run_8", "run_9"]
    assert len(tracker._steps) == 3


def test_garbage_never_raises():
    tracker = RunTracker()
    for obj in ({}, {"object": "thread.run"}, {"object": "thread.run.step", "id": 3},
                {"object": "list", "data": [1, None, {"object": "thread.message"}]},
                {"object": "thread.run.step.delta", "id": "nope", "delta": None},
                {"object": "thread.message.delta", "id": None}):
        tracker.apply(obj, seen())


def test_tracked_runs_share_their_repeated_strings():
    # Issue #3: each parse makes new string objects, kept for up to max_runs runs. Statuses, types,
    # roles and models are one object per value; a step and a message hold their run's id. Assistant ids
    # are not interned (unbounded across tenants; CPython 3.12 never frees an interned string).
    tracker = RunTracker()
    for run_id in ("run_1", "run_2"):
        for obj in (run("completed", id=run_id), step("completed", run_id=run_id, id=f"step_{run_id}"),
                    {"id": f"msg_{run_id}", "object": "thread.message", "run_id": run_id, "thread_id": "thread_1",
                     "assistant_id": "asst_1", "role": "assistant", "status": "completed", "content": []}):
            tracker.apply(orjson.loads(orjson.dumps(obj)), seen())  # fresh string objects, as parsed
    one, two = tracker.runs["run_1"], tracker.runs["run_2"]
    assert one.status is two.status and one.model is two.model and one.assistant_id == two.assistant_id
    step_one, step_two = one.steps["step_run_1"], two.steps["step_run_2"]
    assert step_one.status is step_two.status and step_one.type is step_two.type
    assert step_one.run_id is one.run_id
    message = one.messages["msg_run_1"]
    assert message.run_id is one.run_id
    assert message.role is two.messages["msg_run_2"].role and message.assistant_id == one.assistant_id
