"""apis/assistants/api.py: the Assistants API on the core's interface.

Pinned: only a `thread.message.delta` frame in the SDK's shape is kept raw (given to its message
unparsed); a thread object names the exchange's thread and changes no run state; a run object
folds into the tracker; an error body changes nothing; accepted tool outputs of a
`submit_tool_outputs` request join their calls, and no other request changes anything.
"""

from __future__ import annotations

from datetime import UTC, datetime

from proxy.apis import classify
from proxy.apis.assistants import API
from proxy.apis.assistants.runs import RunTracker
from proxy.exchange import Exchange
from proxy.runs import RunState, Seen

AT = datetime(2026, 12, 7, tzinfo=UTC)
SEEN = Seen("req_1", "sha256:k", None, AT)


def exchange(method: str, path: str, body: dict | None = None) -> Exchange:
    ex = Exchange(classify(method, path), method, path, "", "sha256:k", b"{}")
    ex.request_json = body
    return ex


def test_only_message_deltas_are_kept_raw_and_go_to_their_message_unparsed():
    tracker = RunTracker()
    ex = exchange("POST", "/v1/threads/thread_1/runs")
    tracker._message("msg_1", "run_1")
    assert API.delta_events == {"thread.message.delta"}  # a step's deltas carry tool arguments: parsed
    frames = (b'event: thread.message.delta\ndata: {"id":"msg_1","object":"thread.message.delta","delta":{}}\n\n'
              b'event: thread.message.delta\ndata: {"id":"msg_1","object":"thread.message.delta","delta":{}}\n\n')
    assert API.deltas(ex, frames, tracker)
    assert tracker._messages["msg_1"].delta_frames == [frames]
    other_shape = b'event: thread.message.delta\ndata: {"object":"thread.message.delta","id":"msg_1"}\n\n'
    assert not API.deltas(ex, other_shape, tracker)  # another shape is parsed, never guessed at
    assert not API.deltas(ex, b'event: thread.message.delta\ndata: {"id":"msg_1\n\n', tracker)


def test_a_thread_object_names_the_exchanges_thread_and_changes_no_run():
    tracker = RunTracker()
    ex = exchange("POST", "/v1/threads")
    assert API.fold(ex, {"object": "thread", "id": "thread_9"}, tracker, SEEN) == []
    assert ex.thread_id == "thread_9" and tracker.runs == {}


def test_a_run_object_folds_into_the_tracker_and_an_error_body_changes_nothing():
    tracker = RunTracker()
    ex = exchange("POST", "/v1/threads/thread_1/runs")
    changed = API.fold(ex, {"object": "thread.run", "id": "run_1", "thread_id": "thread_1",
                            "status": "queued"}, tracker, SEEN)
    assert [type(s) for s in changed] == [RunState] and tracker.runs["run_1"].status == "queued"
    assert API.fold(ex, {"error": {"message": "no", "type": "invalid_request_error"}}, tracker, SEEN) == []


def test_accepted_tool_outputs_join_their_calls_and_other_requests_change_nothing():
    tracker = RunTracker()
    body = {"tool_outputs": [{"tool_call_id": "call_1", "output": "42"}]}
    submit = exchange("POST", "/v1/threads/thread_1/runs/run_1/submit_tool_outputs", body)
    changed = API.request_changes(submit, tracker, AT)
    assert [(s.tool_call_id, s.output, s.submitted_at) for s in changed] == [("call_1", "42", AT)]
    create = exchange("POST", "/v1/threads/thread_1/runs", body)
    assert API.request_changes(create, tracker, AT) == []
    assert API.request_changes(exchange("POST", "/v1/threads/thread_1/runs/run_1/submit_tool_outputs"),
                               tracker, AT) == []  # no JSON body
