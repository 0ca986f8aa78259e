from datetime import UTC, datetime

from proxy.apis import classify
from proxy.apis.chat import API
from proxy.exchange import Exchange, Outcome
from proxy.runs import RunState, RunStore, Seen

AT = datetime(2026, 12, 7, tzinfo=UTC)


def test_chunks_and_bodies_fold_and_other_bodies_change_nothing() -> None:
    store = RunStore()
    ex = Exchange(classify("POST", "/v1/chat/completions"), "POST", "/v1/chat/completions", "", "sha256:k",
                  b'{"messages":[{"role":"user","content":"hi"}]}')
    ex.request_json = {"messages": [{"role": "user", "content": "hi"}]}
    API.request_changes(ex, store, AT)
    seen = Seen(ex.request_id, "sha256:k", None, AT)
    assert API.fold(ex, {"error": {"message": "bad", "type": "invalid_request_error"}}, store, seen) == []
    chunk = {"id": "chatcmpl-9", "object": "chat.completion.chunk", "model": "gpt-4o",
             "choices": [{"index": 0, "delta": {"content": "Hi"}, "finish_reason": None}]}
    assert any(isinstance(s, RunState) for s in API.fold(ex, chunk, store, seen))
    assert ex.run_id == "chatcmpl-9"
    ex.streamed = True
    [*_, run] = API.exchange_ended(ex, store, AT, Outcome.TRUNCATED)
    assert (run.run_id, run.status) == ("chatcmpl-9", "truncated")
    assert API.delta_events == frozenset()  # data-only frames: nothing to tell a delta by (§9)
